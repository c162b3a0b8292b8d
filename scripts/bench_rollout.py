"""Rollout throughput, vLLM vs the HF engine, side by side in one process and one run.

Same student, same prompts (from the shipped set), same sampling, EOS ignored so every row
generates exactly --new-tokens. Engines alternate for --rounds rounds; medians reported.

    .venv/bin/python scripts/bench_rollout.py --prompts 16 --samples 2 --new-tokens 64
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    from transformers import AutoTokenizer

    from ondistill.config import DataConfig, ModelConfig, RolloutConfig
    from ondistill.data import PromptSet, collate_prompts
    from ondistill.model_files import derive_student, resolve
    from workers.rollout.hf import HFRollout
    from workers.rollout.vllm import VLLMRollout

    mc = ModelConfig()
    # the 6-layer student of the recorded results (docs/benchmarks.md), not today's default
    student = derive_student(
        resolve(mc.student, mc.cache_dir), [0, 6, 12, 18, 24, 29], mc.cache_dir
    )
    prompts = PromptSet(DataConfig(), AutoTokenizer.from_pretrained(student))
    batch = collate_prompts(prompts.next_examples(args.prompts), prompts.pad_id)
    cfg = RolloutConfig(
        n_samples=args.samples,
        max_new_tokens=args.new_tokens,
        ignore_eos=True,
        threads=args.threads,
    )
    engines = {"vllm": VLLMRollout(str(student), cfg), "hf": HFRollout(str(student), cfg)}
    times: dict[str, list[float]] = {name: [] for name in engines}
    tokens = args.prompts * args.samples * args.new_tokens
    for engine in engines.values():
        engine.generate(batch, seed=0)  # warm-up
    for r in range(args.rounds):
        for name, engine in engines.items():
            start = time.perf_counter()
            out = engine.generate(batch, seed=r)
            times[name].append(time.perf_counter() - start)
            assert out["response_ids"].numel() == tokens
    result = {
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads, {platform.node()}",
        "prompts": args.prompts,
        "samples": args.samples,
        "new_tokens": args.new_tokens,
        **{f"{n}_tokens_per_s": tokens / statistics.median(t) for n, t in times.items()},
    }
    result["speedup_vllm_over_hf"] = result["vllm_tokens_per_s"] / result["hf_tokens_per_s"]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
