"""What rollout.seed_per_prompt costs: ondistill's VLLMRollout sampling a step's prompts with a
seed per prompt (the same tokens for any replica count) against one seed for the call (vLLM
draws every row's noise at once), one GPU, CUDA graphs as in a training run.

The two settings alternate on one engine, --reps rollouts each after a warm-up of each, so
the card's noise falls on both alike. Writes JSON after every rollout:

    export PYTHONPATH=/tmp/site:$PWD VLLM_USE_FLASHINFER_SAMPLER=0
    python scripts/bench_seeding.py --out $OUT/seeding.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from gpu_models import build_model

from ondistill.config import RolloutConfig
from ondistill.data import Example, collate_prompts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--shape", default="1.7b")
    p.add_argument("--prompts", default="64,256", help="rows per rollout, comma-separated")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=512)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--workdir", default="/tmp/ondistill_seeding")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    from workers.rollout.vllm import VLLMRollout

    model = build_model(a.shape, Path(a.workdir) / f"qwen3-{a.shape}")
    cfg = RolloutConfig(
        n_samples=1,
        max_new_tokens=a.new_tokens,
        ignore_eos=True,
        max_model_len=a.prompt_len + a.new_tokens,
        gpu_memory_utilization=0.4,
    )
    on_gpu = torch.cuda.is_available()
    res: dict = {"args": vars(a), "device": torch.cuda.get_device_name(0) if on_gpu else "cpu"}

    def save(**kw) -> None:
        res.update(kw)
        Path(a.out).write_text(json.dumps(res, indent=2))
        print(json.dumps(kw), flush=True)

    start = time.perf_counter()
    engine = VLLMRollout(str(model), cfg)
    save(engine_start_s=time.perf_counter() - start)
    vocab = min(100_000, engine.llm.get_tokenizer().vocab_size)
    for rows in (int(x) for x in a.prompts.split(",")):
        g = torch.Generator().manual_seed(rows)
        ids = torch.randint(10, vocab, (rows, a.prompt_len), generator=g)
        prompts = collate_prompts([Example(r.tolist(), None) for r in ids], 0)
        times: dict[bool, list[float]] = {True: [], False: []}
        for rep in range(a.reps + 1):
            for per_prompt in (True, False):
                engine.cfg.seed_per_prompt = per_prompt
                start = time.perf_counter()
                engine.generate(prompts, seed=rep)  # returns on the host: nothing left queued
                if rep:  # rep 0 warms both settings up
                    times[per_prompt].append(time.perf_counter() - start)
        med = {k: statistics.median(v) for k, v in times.items() if v}
        tokens = rows * a.new_tokens
        save(
            **{
                f"rows_{rows}": {
                    "per_prompt_s": times[True],
                    "per_call_s": times[False],
                    "per_prompt_tokens_per_s": tokens / med[True],
                    "per_call_tokens_per_s": tokens / med[False],
                    "saved_s": med[True] - med[False],
                }
            }
        )


if __name__ == "__main__":
    main()
