"""Where the student's train step spends its time: one FSDP2 rank (world size 1), a random
scored batch, timed per step (CUDA-synchronized on GPU). With --ray the same worker also runs
as a Ray actor, as the trainer places it, so the two can be compared in one run.

    python scripts/profile_train.py STUDENT_DIR TEACHER_DIR --rows 8 --prompt 128 --response 512
    python scripts/profile_train.py STUDENT_DIR TEACHER_DIR --rows 8 --prompt 40 --response 64 \
        --param-dtype float32 --ray                            # CPU: in-process vs Ray actor
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from tensordict import TensorDict

from ondistill import batch as B
from ondistill.config import LossConfig, StudentConfig
from workers.student.actor import StudentWorker


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("student")
    p.add_argument("teacher")
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--response", type=int, default=512)
    p.add_argument("--chunk", type=int, default=1024)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--param-dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--ray", action="store_true", help="also time the worker as a Ray actor")
    p.add_argument(
        "--compile",
        choices=["auto", "true", "false"],
        default="auto",
        help="torch.compile the decoder blocks (auto: on CUDA)",
    )
    a = p.parse_args()
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    cfg = StudentConfig(
        param_dtype=a.param_dtype,
        micro_batch_size=a.rows,
        threads=a.threads,
        compile={"auto": None, "true": True, "false": False}[a.compile],
    )
    w = StudentWorker(0, 1, cfg, LossConfig(chunk_size=a.chunk))
    w.setup(("127.0.0.1", 29533), a.student, {"": (a.teacher, "none")}, 10)
    th = w.model.teacher_head.weight.shape[1]
    v = w.model.lm.config.vocab_size
    dtype = torch.bfloat16 if a.param_dtype == "bfloat16" else torch.float32
    td = TensorDict(
        {
            B.PROMPT_IDS: torch.randint(1, v, (a.rows, a.prompt)),
            B.PROMPT_MASK: torch.ones(a.rows, a.prompt, dtype=torch.bool),
            B.PROMPT_INDEX: torch.arange(a.rows),
            B.RESPONSE_IDS: torch.randint(1, v, (a.rows, a.response)),
            B.RESPONSE_MASK: torch.ones(a.rows, a.response, dtype=torch.bool),
            B.ROLLOUT_LOGPROBS: torch.zeros(a.rows, a.response),
            B.TEACHER_HIDDEN: torch.randn(a.rows, a.response, th, dtype=dtype),
        },
        batch_size=[a.rows],
    )
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(a.steps):
        sync()
        t0 = time.perf_counter()
        w.train_step([B.TeacherPart(td, a.rows * a.response, a.rows)])
        sync()
        print(f"train_step {time.perf_counter() - t0:.3f}s", flush=True)
    if a.ray:
        time_in_actor(a, cfg, td)
    if a.profile:  # the top kernels of one more step
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            w.train_step([B.TeacherPart(td, a.rows * a.response, a.rows)])
            sync()
        key = "cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=18, max_name_column_width=60))
    if torch.cuda.is_available():
        print(f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


def time_in_actor(a: argparse.Namespace, cfg: StudentConfig, td: TensorDict) -> None:
    """The same steps in a Ray actor (its own process, as workers/group.py places it)."""
    import ray

    from workers.ray_env import init_ray

    init_ray(num_cpus=8)
    actor = ray.remote(num_cpus=1)(StudentWorker).remote(0, 1, cfg, LossConfig(chunk_size=a.chunk))
    ray.get(actor.setup.remote(("127.0.0.1", 29534), a.student, {"": (a.teacher, "none")}, 10))
    for _ in range(a.steps):
        t0 = time.perf_counter()
        ray.get(actor.train_step.remote([B.TeacherPart(td, a.rows * a.response, a.rows)]))
        print(f"ray actor train_step {time.perf_counter() - t0:.3f}s", flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main()
