"""Teacher scoring and transfer, side by side in one run: SGLang vs the HF engine on the same
batch, and what crossing Ray's object store costs for hidden states vs full logits.

    .venv/bin/python scripts/bench_teacher.py --seqs 16 --prompt 64 --response 64
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def median_time(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seqs", type=int, default=16)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--response", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()

    import ray

    from ondistill import batch as B
    from ondistill.config import TeacherConfig
    from ondistill.data import Example, collate_prompts, collate_responses
    from ondistill.heads import load_output_head
    from ondistill.model_files import resolve
    from workers.teacher.hf import HFTeacher
    from workers.teacher.sglang import SGLangTeacher

    teacher = resolve("builtin:smollm2-135m-instruct", "~/.cache/ondistill")
    g = torch.Generator().manual_seed(0)
    td = collate_prompts(
        [
            Example(torch.randint(3, 49000, (args.prompt,), generator=g).tolist(), None)
            for _ in range(args.seqs)
        ],
        2,
    )
    td = collate_responses(
        td,
        [torch.randint(3, 49000, (args.response,), generator=g).tolist() for _ in range(args.seqs)],
        2,
        args.response,
    )
    td.set(B.ROLLOUT_LOGPROBS, torch.zeros(td[B.RESPONSE_IDS].shape))
    engines = {
        "sglang": SGLangTeacher(str(teacher), TeacherConfig()),
        "hf": HFTeacher(str(teacher), TeacherConfig()),
    }
    tokens = args.seqs * (args.prompt + args.response)
    out = {"machine": "2-core x86_64 VM (CPU)", "seqs": args.seqs, "tokens_per_call": tokens}
    for name, engine in engines.items():
        engine.score(td.clone())  # warm-up
        t = median_time(lambda e=engine: e.score(td.clone()), args.reps)
        out[f"{name}_score_s"] = t
        out[f"{name}_tokens_per_s"] = tokens / t
    engines["sglang"].shutdown()

    hidden = engines["hf"].score(td.clone())[B.TEACHER_HIDDEN]
    head = load_output_head(teacher)
    logits = head.logits(hidden.flatten(0, 1)).view(*hidden.shape[:2], -1)
    ray.init(num_cpus=2, include_dashboard=False)

    @ray.remote
    def hand_over(x):  # a tensor made in another process, returned through the object store
        return x.clone()

    for name, tensor in (("hidden", hidden), ("logits", logits)):
        ref = ray.put(tensor)
        ray.get(hand_over.remote(ref))  # warm-up
        t = median_time(lambda r=ref: ray.get(hand_over.remote(r)), args.reps)
        nbytes = tensor.numel() * tensor.element_size()
        out[f"{name}_bytes"] = nbytes
        out[f"{name}_transfer_s"] = t
        out[f"{name}_transfer_us_per_response_token"] = t / (args.seqs * args.response) * 1e6
    out["logits_over_hidden_bytes"] = out["logits_bytes"] / out["hidden_bytes"]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
