"""What the vLLM rollout engine's sleep costs between rollouts, by rollout.sleep_level, and
whether a level-2 sleep (weights dropped) followed by a weight push samples what the engine
sampled before: ondistill's own VLLMRollout, one GPU.

Per level: sleep(drop_weights=True) (level 1 copies the weights to host memory, level 2 drops
them), the weight push (update_weights + flush: the weights' memory woken, reload_weights, then
the KV cache's), then a rollout with the first rollout's seed. The pushed weights are the
model's own, on the card (as a colocated student rank sends them), so the tokens must match
the first rollout's. Writes JSON after every measurement (a cut-off run keeps what it has):

    export PYTHONPATH=/tmp/site:$PWD VLLM_USE_FLASHINFER_SAMPLER=0
    python scripts/bench_sleep.py --out $OUT/sleep.json
"""

from __future__ import annotations

import argparse
import time

import torch
from vllm_bench import Results, random_prompts, start_engine

from ondistill import batch as B


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--shape", default="1.7b")
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=512)
    p.add_argument("--compile", action="store_true", help="CUDA graphs (slower start)")
    p.add_argument("--workdir", default="/tmp/ondistill_sleep")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    from safetensors.torch import load_file

    results = Results(a, a.out)
    save = results.save
    engine, model = start_engine(
        a.shape, a.workdir, a.prompt_len + a.new_tokens, a.new_tokens, 0.3, results, a.compile
    )
    on_gpu = torch.cuda.is_available()

    def timed(fn) -> float:
        sync = torch.cuda.synchronize if on_gpu else lambda: None
        sync()
        start = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - start

    prompts = random_prompts(engine, a.prompts, a.prompt_len, 0)
    engine.generate(prompts, seed=1)  # warm-up
    out: dict = {}
    gen_s = timed(lambda: out.update(first=engine.generate(prompts, seed=1)))
    save(generate_awake_s=gen_s)
    device = "cuda" if on_gpu else "cpu"
    weights = [(k, v.to(device)) for k, v in load_file(str(model / "model.safetensors")).items()]
    for level in (1, 2):
        engine.cfg.sleep_level = level
        sleep_s = timed(lambda: engine.sleep(drop_weights=True))
        push_s = timed(lambda: (engine.update_weights(weights), engine.flush()))
        gen_s = timed(lambda level=level: out.update({level: engine.generate(prompts, seed=1)}))
        # against the first rollout (prefix-cached prompts then) and level 2 against level 1
        # (both after a flush): the same weights and seed, so the same tokens
        ref = out[1] if level == 2 else out["first"]
        same = (ref[B.RESPONSE_IDS] == out[level][B.RESPONSE_IDS]).float().mean().item()
        lp = (ref[B.ROLLOUT_LOGPROBS] - out[level][B.ROLLOUT_LOGPROBS]).abs().max().item()
        stats = {"sleep_s": sleep_s, "push_s": push_s, "generate_s": gen_s}
        save(**{f"level{level}": stats | {"same_token_share": same, "max_logprob_diff": lp}})


if __name__ == "__main__":
    main()
