"""What the vLLM rollout engine's settings cost on one GPU, side by side on one engine: where a
small student's generate time goes (on an H200 its 64 x 512-token rollout took 3.5 s against
SGLang's 2.3 s in KDFlow, then 1.78 s with vLLM's detokenizer off; docs/benchmarks.md).

Variants, alternating --reps times after a warm-up of each, so the card's noise falls on all:
    ours        ondistill's VLLMRollout.generate as a training step calls it (a seed per prompt)
    no_seeds    vLLM's own generate, log-probs on, detokenizer off, no seeds (every row's noise
                at once, instead of one kernel per seeded row and decode step)
    detok       vLLM's own generate with our sampling, its detokenizer on (VLLMRollout had it on
                until 2026-12-01; it returns token ids only now)
    no_logprobs vLLM's own generate, detokenizer off and no log-probs (what the host spends on
                the rollout log-probs the consistency metrics and MiniLLM's ratio need)
--profile adds the top host functions of one `ours` rollout (cProfile, cumulative).
Writes JSON after every row count:

    export PYTHONPATH=/tmp/site:$PWD VLLM_USE_FLASHINFER_SAMPLER=0
    python scripts/bench_vllm_settings.py --profile --out $OUT/vllm_settings.json
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import time
from collections.abc import Callable

from tensordict import TensorDict
from vllm_bench import Results, random_prompts, start_engine

from ondistill import batch as B
from workers.rollout.vllm import VLLMRollout

Run = Callable[[int], object]  # one rollout of a variant, given its seed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--shape", default="1.7b")
    p.add_argument("--prompts", default="64,256", help="rows per rollout, comma-separated")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=512)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--workdir", default="/tmp/ondistill_vllm_settings")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    results = Results(a, a.out)
    max_len = a.prompt_len + a.new_tokens
    engine, _ = start_engine(a.shape, a.workdir, max_len, a.new_tokens, 0.4, results)
    for rows in (int(x) for x in a.prompts.split(",")):
        prompts = random_prompts(engine, rows, a.prompt_len, rows)
        variants = variants_of(engine, prompts, a.new_tokens)
        times: dict[str, list[float]] = {k: [] for k in variants}
        for rep in range(a.reps + 1):
            for name, fn in variants.items():
                start = time.perf_counter()
                fn(rep)  # results come back to the host: nothing left queued on the card
                if rep:  # rep 0 warms every variant up
                    times[name].append(time.perf_counter() - start)
        med = {k: statistics.median(v) for k, v in times.items()}
        out: dict = {"times_s": times, "median_s": med}
        out["tokens_per_s"] = {k: rows * a.new_tokens / v for k, v in med.items()}
        if a.profile:
            prof = cProfile.Profile()
            prof.enable()
            variants["ours"](0)
            prof.disable()
            text = io.StringIO()
            pstats.Stats(prof, stream=text).sort_stats("cumulative").print_stats(40)
            out["profile"] = text.getvalue().splitlines()
        results.save(**{f"rows_{rows}": out})


def variants_of(engine: VLLMRollout, prompts: TensorDict, new_tokens: int) -> dict[str, Run]:
    """The four ways to sample `prompts` (module docstring), each a function of the seed."""
    from vllm import SamplingParams, TokensPrompt

    rows = [
        TokensPrompt(prompt_token_ids=r[m].tolist())
        for r, m in zip(prompts[B.PROMPT_IDS], prompts[B.PROMPT_MASK], strict=True)
    ]

    def raw(seed: int | None, **kw: object) -> object:
        params = [
            SamplingParams(
                max_tokens=new_tokens,
                ignore_eos=True,
                seed=None if seed is None else seed + i,
                **kw,
            )
            for i in range(len(rows))
        ]
        return engine.llm.generate(rows, params, use_tqdm=False)

    return {
        "ours": lambda s: engine.generate(prompts, seed=s),
        "no_seeds": lambda s: raw(None, logprobs=0, detokenize=False),
        "detok": lambda s: raw(s, logprobs=0, detokenize=True),
        "no_logprobs": lambda s: raw(s, detokenize=False),
    }


if __name__ == "__main__":
    main()
