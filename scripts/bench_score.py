"""The score stage alone: the SGLang teacher vs the hf teacher on the same card, same batch.

Builds a random bf16 Qwen3-shaped teacher (scripts/gpu_models.py), then runs each
backend in a process of its own (SGLang may need its own transformers: --sglang-path puts its
install first on that process's path only) on one step's worth of rows, as the controller hands
them to a teacher: token ids in, final hidden states of the response positions out, left on the
GPU as for a student on the same card (score(share=True)). One warm-up call (compiles, JIT),
then --reps timed calls; writes one JSON file:

    python scripts/bench_score.py --teacher 8b --rows 512 --out $OUT/score.json

--random-weights saves only the teacher's config (SGLang's load_format=dummy, transformers'
from_config on the card): a 30B or 32B shape's 60+ GB of weights need no disk. --tp 2 runs
SGLang tensor-parallel over two cards (the hf backend's tensor parallelism needs Ray ranks and
a checkpoint: not timed here).

sglang_prefill times SGLang's Engine.generate on the same ids without hidden states: what the
forward costs, so the rest of `sglang` is the hand-over of hidden states.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_models  # noqa: E402  (the shapes, model builder and GPU memory poller)

ROOT = Path(__file__).resolve().parents[1]
# FA3 and flashinfer's JIT are absent on the lent GPU image; disable_cuda_graph: prefill-only
# scoring never decodes, so decode graphs would only lengthen start-up
SGLANG_ARGS = {
    "attention_backend": "triton",
    "sampling_backend": "pytorch",
    "grammar_backend": "none",
    "disable_cuda_graph": True,
}


def rollout_batch(rows: int, prompt_len: int, new_tokens: int):
    import torch
    from tensordict import TensorDict

    from ondistill import batch as B

    g = torch.Generator().manual_seed(0)
    return TensorDict(
        {
            B.PROMPT_IDS: torch.randint(1, gpu_models.VOCAB, (rows, prompt_len), generator=g),
            B.PROMPT_MASK: torch.ones(rows, prompt_len, dtype=torch.bool),
            B.PROMPT_INDEX: torch.arange(rows),
            B.RESPONSE_IDS: torch.randint(1, gpu_models.VOCAB, (rows, new_tokens), generator=g),
            B.RESPONSE_MASK: torch.ones(rows, new_tokens, dtype=torch.bool),
            B.ROLLOUT_LOGPROBS: torch.zeros(rows, new_tokens),
        },
        batch_size=[rows],
    )


COMPILE = {"auto": None, "true": True, "false": False}  # teacher.compile: null = on CUDA


def random_from_pretrained() -> None:
    """transformers' from_pretrained made to build the model from its config alone, with
    random weights, on the card (for --random-weights: no checkpoint on disk)."""
    import torch
    import transformers

    def build(path: str, dtype, attn_implementation: str, **_) -> object:
        config = transformers.AutoConfig.from_pretrained(path)
        with torch.device("cuda"):
            return transformers.AutoModelForCausalLM.from_config(
                config, dtype=dtype, attn_implementation=attn_implementation
            )

    transformers.AutoModelForCausalLM.from_pretrained = build  # type: ignore[method-assign]


def worker(a) -> dict:
    """One backend in this process: median seconds of --reps score calls after a warm-up."""
    import torch

    from ondistill.config import TeacherConfig

    sys.path.insert(0, str(ROOT))
    if a.worker == "hf":
        from workers.teacher.hf import HFTeacher

        if a.random_weights:
            random_from_pretrained()
        cfg = TeacherConfig(
            dtype="bfloat16", micro_batch_size=a.hf_micro, compile=COMPILE[a.hf_compile]
        )
        teacher = HFTeacher(a.teacher_dir, cfg)
    else:
        from workers.teacher.sglang import SGLangTeacher

        args = {**SGLANG_ARGS, **json.loads(a.sglang_args)}
        if a.random_weights:
            args["load_format"] = "dummy"
        cfg = TeacherConfig(
            dtype="bfloat16",
            gpu_memory_utilization=a.sglang_memory,
            engine_args=args,
            tp_size=a.tp,
        )
        teacher = SGLangTeacher(a.teacher_dir, cfg)  # type: ignore[assignment]
    batch = rollout_batch(a.rows, a.prompt_len, a.new_tokens)

    def call() -> None:
        teacher.score(batch.clone(), share=True)

    if a.worker == "sglang_prefill":
        seqs = torch.cat([batch["prompt_ids"], batch["response_ids"]], 1).tolist()

        def call() -> None:
            teacher.engine.generate(input_ids=seqs, sampling_params={"max_new_tokens": 1})

    start = time.perf_counter()
    call()
    warm = time.perf_counter() - start
    times = []
    for _ in range(a.reps):
        torch.cuda.synchronize()
        start = time.perf_counter()
        call()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    teacher.shutdown()
    tokens = a.rows * (a.prompt_len + a.new_tokens)
    return {
        "backend": a.worker,
        "warmup_s": warm,
        "score_s": statistics.median(times),
        "times_s": times,
        "tokens": tokens,
        "tokens_per_s": tokens / statistics.median(times),
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--teacher", choices=sorted(gpu_models.QWEN3), default="8b")
    p.add_argument("--rows", type=int, default=512, help="sequences per score call")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=512)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--hf-micro", type=int, default=32, help="hf: sequences per forward")
    p.add_argument("--sglang-args", default="{}", help="JSON: more SGLang Engine arguments")
    p.add_argument("--sglang-path", default="", help="SGLang's install, first on its path")
    p.add_argument("--backends", default="hf,sglang,sglang_prefill")
    p.add_argument("--tp", type=int, default=1, help="SGLang tensor-parallel cards")
    p.add_argument("--sglang-memory", type=float, default=0.5, help="SGLang's mem_fraction_static")
    p.add_argument(
        "--hf-compile", choices=sorted(COMPILE), default="auto", help="hf: teacher.compile"
    )
    p.add_argument("--random-weights", action="store_true", help="no checkpoint: see above")
    p.add_argument("--workdir", default="/tmp/ondistill_bench")
    p.add_argument("--out", default="")
    p.add_argument("--worker", default="", help=argparse.SUPPRESS)
    p.add_argument("--teacher-dir", default="", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        print("RESULT " + json.dumps(worker(a)), flush=True)
        return

    import torch

    name = f"qwen3-{a.teacher}" + ("-config" if a.random_weights else "")
    teacher = gpu_models.build_model(a.teacher, Path(a.workdir) / name, not a.random_weights)
    result = {"device": torch.cuda.get_device_name(0), "args": vars(a), "runs": []}
    for backend in a.backends.split(","):
        env = dict(os.environ)
        if backend.startswith("sglang") and a.sglang_path:
            env["PYTHONPATH"] = f"{a.sglang_path}:{env.get('PYTHONPATH', '')}"
        argv = [sys.executable, __file__, *sys.argv[1:], "--worker", backend]
        with gpu_models.GpuMemory() as mem:
            proc = subprocess.run(
                [*argv, "--teacher-dir", str(teacher)], env=env, capture_output=True, text=True
            )
        lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        run = (
            {**json.loads(lines[-1][7:]), "peak_gpu_gib": mem.peak}
            if lines
            else {"backend": backend, "error": (proc.stdout + proc.stderr)[-3000:]}
        )
        print(json.dumps(run), flush=True)
        result["runs"].append(run)
        if a.out:
            Path(a.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
