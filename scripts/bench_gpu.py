"""On-policy distillation throughput on one GPU: ondistill vs TRL, Qwen3-shaped random pairs.

Builds the pair (random bf16 weights from the real Qwen3 architecture shapes, a word-level
tokenizer over the 151,936-token vocabulary, fixed-length prompts), measures the card's bf16
matmul rate once, then runs each system in its own process on the same work, one after the
other, and writes one JSON file:

    python scripts/bench_gpu.py --pair 1.7b-8b --prompts 256 --systems ondistill \
        --out $OUT/bench_gpu.json

ondistill runs its real loop (Ray actors: vLLM rollout, HF teacher, FSDP2 student on one card,
CUDA-IPC weight sync and teacher hidden states; decoder blocks torch.compile'd, the default on
CUDA; with --overlap the next batch is generated while this one trains; --extra passes more
overrides, e.g. teacher.share_gpu=false); per-step stage times come from its
metrics.jsonl. TRL runs through scripts/trl_runner.py. Generation length is fixed (EOS
ignored) so random weights do not change the work.
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

from gpu_models import (
    PAIRS,
    QWEN3,
    GpuMemory,
    build_model,
    matmul_rate,
    train_flops,
    write_prompts,
)

ROOT = Path(__file__).resolve().parents[1]


def on_policy(a) -> bool:
    """Whether ondistill samples (n_samples rows per prompt) or reads the dataset's responses
    (one row per prompt)."""
    return a.lengths == "fixed" and "trainer.on_policy_fraction=0" not in a.extra


def context(a) -> int:
    """The engines' context length, both systems: prompt + response and a little slack."""
    return a.prompt_len + a.new_tokens + 16


def run_ondistill(a, teacher: Path, student: Path, prompts: Path, out: Path) -> dict:
    overrides = [
        f"model.teacher={teacher}",
        f"model.student={student}",
        "model.student_keep_layers=[]",
        f"data.prompts={prompts}",
        "data.chat_template=false",
        "data.eval_size=0",
        f"data.max_prompt_tokens={a.prompt_len}",
        "rollout.backend=vllm",
        f"rollout.max_new_tokens={a.new_tokens}",
        "rollout.ignore_eos=true",
        f"rollout.n_samples={a.samples}",
        f"trainer.overlap={str(a.overlap).lower()}",
        f"rollout.max_model_len={context(a)}",
        f"rollout.gpu_memory_utilization={a.vllm_memory}",
        "teacher.dtype=bfloat16",
        f"teacher.micro_batch_size={a.teacher_micro}",
        "student.param_dtype=bfloat16",
        f"student.micro_batch_size={a.student_micro}",
        "student.warmup_steps=0",
        f"loss.chunk_size={a.chunk}",
        "trainer.stages=[]",
        f"trainer.steps={a.steps}",
        f"trainer.prompts_per_step={a.prompts * a.gpus}",
        "trainer.checkpoint_every=-1",
        "trainer.save_student=false",
        f"trainer.output_dir={out}",
        "log.wandb=disabled",
        "log.plot=false",
        "log.progress=false",
        "ray.rollout.gpus=0.3",
        "ray.teacher.gpus=0.3",
        "ray.student.gpus=0.3",
    ]
    if a.placement == "split":  # the teacher on cards of its own, the rest on the others
        others = a.gpus - a.teacher_gpus
        overrides += [
            f"student.world_size={others}",
            f"rollout.replicas={others}",
            f"teacher.replicas={a.teacher_gpus}",
            "ray.placement=split",
            "ray.teacher.gpus=1",
        ]
    elif a.gpus > 1:  # one of each role per card: data-parallel replicas, FSDP2 ranks
        overrides += [
            f"student.world_size={a.gpus}",
            f"rollout.replicas={a.gpus}",
            f"teacher.replicas={a.gpus}",
            "ray.placement=colocated",
        ]
    if a.teacher_backend == "sglang":
        overrides += [
            "teacher.backend=sglang",
            f"teacher.gpu_memory_utilization={a.sglang_memory}",
            # FA3 and flashinfer's JIT are absent on the lent GPU image
            "+teacher.engine_args.attention_backend=triton",
            "+teacher.engine_args.sampling_backend=pytorch",
            "+teacher.engine_args.grammar_backend=none",
            "+teacher.engine_args.disable_cuda_graph=true",  # prefill only: no decode graphs
        ]
        if a.sglang_path:  # its own transformers, for the teacher's actor only
            path = f"{a.sglang_path}:{os.environ.get('PYTHONPATH', '')}"
            overrides += [f'+ray.teacher.env.PYTHONPATH="{path}"']
    if a.lengths == "natural":  # the dataset's ragged responses (off-policy; see --lengths)
        overrides += ["trainer.on_policy_fraction=0"]
    overrides += a.extra
    if a.pair == "tiny-tiny":  # CPU check of this script: no GPU placement
        overrides = [o for o in overrides if not o.startswith("ray.")]
    start = time.perf_counter()
    with GpuMemory() as mem:
        proc = subprocess.run(
            [sys.executable, "-m", "ondistill.main", *overrides],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
    wall = time.perf_counter() - start
    if proc.returncode:
        return {"system": "ondistill", "error": (proc.stdout + proc.stderr)[-4000:]}
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    every = [r for r in rows if "time/train" in r]
    per_step = [{k: r[f"time/{k}"] for k in ("generate", "score", "train", "sync")} for r in every]
    steps, timed = every[1:], per_step[1:]  # first step: warm-up (compiles, caches)
    stage = {k: statistics.median([t[k] for t in timed]) for k in per_step[0]}
    step_s = statistics.median([sum(t.values()) for t in timed])
    tokens = statistics.median([r["response_tokens"] for r in steps])
    return {
        "system": "ondistill",
        "step_s": step_s,
        "tokens_per_step": tokens,
        # ragged batches (--lengths natural) vary in tokens: the rate over the measured steps
        "tokens_per_s": sum(r["response_tokens"] for r in steps)
        / sum(sum(t.values()) for t in timed),
        "stages_s": stage,
        "step_stages_s": per_step,  # the warm-up included: medians of 2-3 steps hide their spread
        "wall_s": wall,
        "peak_gpu_gib": mem.peak,
        "final_loss": rows[-1].get("loss"),
        "alloc_retries": rows[-1].get("alloc_retries"),
        "overlap": a.overlap,
        "extra": a.extra,
        "rollout_lag": [r.get("rollout_lag") for r in steps],
        "gpus": a.gpus,
        "placement": a.placement,
        "losses": [r["loss"] for r in rows if "loss" in r],
        "rollout_k3_max": [r.get("rollout_k3_max") for r in steps],
        "teacher_backend": a.teacher_backend,
        "driver_peak_rss_gib": max(r.get("driver_rss_gib", 0.0) for r in steps),
    }


def run_trl(a, teacher: Path, student: Path, prompts: Path, out: Path, use_vllm: bool) -> dict:
    """TRL's DistillationTrainer (on-policy, reverse KL = beta 1) through scripts/trl_runner.py."""
    spec = {
        "config": "on_policy",
        "student": str(student),
        "teacher": str(teacher),
        "rows": str(prompts),
        "steps": a.steps,
        "batch": a.trl_batch,
        "max_new_tokens": a.new_tokens,
        "lr": 1e-4,
        "seed": 0,
        "threads": 8,
        "beta": 1.0,
        "use_vllm": use_vllm,
        "output_dir": str(out),
        "device": "cuda",
        "bf16": True,
        "chat": False,
        "vllm_memory": a.vllm_memory,
        "max_model_len": context(a),
    }
    start = time.perf_counter()
    with GpuMemory() as mem:
        proc = subprocess.run(
            [
                sys.executable,
                str(ROOT / "scripts" / "trl_runner.py"),
                "--json-args",
                json.dumps(spec),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
    wall = time.perf_counter() - start
    name = f"trl_distillation{'_vllm' if use_vllm else ''}"
    line = next(
        (x for x in reversed(proc.stdout.splitlines()) if x.startswith("TRL_RESULT ")), None
    )
    if not line:
        return {"system": name, "error": (proc.stdout + proc.stderr)[-4000:]}
    res = json.loads(line[len("TRL_RESULT ") :])
    if res.get("error") or len(res["step_s"]) < 2:
        return {"system": name, "error": res.get("error"), "traceback": res.get("traceback")}
    step_s = statistics.median(res["step_s"][1:])
    tokens = statistics.median(res["response_tokens"][1:])
    return {
        "system": name,
        "step_s": step_s,
        "tokens_per_step": tokens,
        "tokens_per_s": tokens / step_s,
        "steps_s": res["step_s"],
        "wall_s": wall,
        "peak_gpu_gib": mem.peak,
        "completion_min_len": res.get("completion_min_len"),
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--pair", choices=sorted(PAIRS), default="1.7b-8b")
    p.add_argument("--prompts", type=int, default=256, help="ondistill prompts per step per GPU")
    p.add_argument(
        "--gpus",
        type=int,
        default=1,
        help="ondistill: GPUs, each with a rollout replica, a teacher replica and a student rank "
        "(ray.placement=colocated); the step's prompts grow with them",
    )
    p.add_argument(
        "--placement",
        choices=("colocated", "split"),
        default="colocated",
        help="ondistill with --gpus > 1: a replica of every role per card, or the teacher on "
        "--teacher-gpus cards of its own (rollout replicas and student ranks on the rest)",
    )
    p.add_argument(
        "--teacher-gpus", type=int, default=1, help="teacher cards with --placement split"
    )
    p.add_argument("--trl-batch", type=int, default=32, help="TRL prompts per step")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=512)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--vllm-memory", type=float, default=0.25)
    p.add_argument("--teacher-micro", type=int, default=32)
    p.add_argument("--student-micro", type=int, default=32)
    p.add_argument("--samples", type=int, default=2, help="ondistill samples per prompt")
    p.add_argument(
        "--overlap",
        action="store_true",
        help="ondistill: generate the next batch while this one trains",
    )
    p.add_argument("--chunk", type=int, default=1024)
    p.add_argument("--teacher-backend", choices=("hf", "sglang"), default="hf")
    p.add_argument(
        "--sglang-memory", type=float, default=0.3, help="SGLang's share of the free memory"
    )
    p.add_argument(
        "--sglang-path",
        default="",
        help="an SGLang install with its own transformers, first on the teacher actor's path",
    )
    p.add_argument(
        "--lengths",
        choices=("fixed", "natural"),
        default="fixed",
        help="fixed: on-policy, every response --new-tokens long (EOS ignored); natural: "
        "off-policy on dataset responses of log-normal lengths (median --new-tokens / 4, "
        "clipped to [8, --new-tokens]), the ragged batches that packing is for; the rollout "
        "stage is then the dataset's",
    )
    p.add_argument(
        "--extra",
        nargs="*",
        default=[],
        help="more ondistill overrides, e.g. teacher.share_gpu=false",
    )
    p.add_argument(
        "--systems",
        default="ondistill,trl_distillation_vllm,trl_distillation",
        help="comma list of ondistill, trl_distillation_vllm, trl_distillation",
    )
    p.add_argument("--workdir", default="/tmp/ondistill_bench")
    p.add_argument("--out", required=True)
    a = p.parse_args()

    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    s_shape, t_shape = PAIRS[a.pair]
    t0 = time.perf_counter()
    student = build_model(s_shape, work / f"qwen3-{s_shape}")
    teacher = build_model(t_shape, work / f"qwen3-{t_shape}")
    prompts = write_prompts(
        work / f"prompts_{a.prompt_len}_{a.new_tokens}_{a.lengths}.jsonl",
        max(a.prompts * a.gpus, a.trl_batch) * (a.steps + 2),
        a.prompt_len,
        a.new_tokens,
        natural=a.lengths == "natural",
    )
    print(f"[bench] models and prompts ready in {time.perf_counter() - t0:.0f}s", flush=True)
    rate = matmul_rate()
    import torch

    result = {
        "pair": a.pair,
        "args": vars(a),
        "matmul_flops": rate,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "runs": [],
    }
    for system in filter(None, a.systems.split(",")):  # --systems "": models and rate only
        out = work / f"run_{system}_{int(time.time())}"
        if system == "ondistill":
            res = run_ondistill(a, teacher, student, prompts, out)
            if "error" not in res and rate and a.lengths == "fixed":
                flops = train_flops(
                    QWEN3[s_shape],
                    QWEN3[t_shape],
                    a.prompts * (a.samples if on_policy(a) else 1),
                    a.prompt_len,
                    a.new_tokens,
                )
                res["train_tflops"] = flops / res["stages_s"]["train"] / 1e12
                res["train_mfu"] = flops / res["stages_s"]["train"] / rate
        else:
            res = run_trl(a, teacher, student, prompts, out, use_vllm=system.endswith("_vllm"))
        print(json.dumps(res), flush=True)
        result["runs"].append(res)
        Path(a.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
