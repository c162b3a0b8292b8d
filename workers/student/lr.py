"""The student's learning-rate schedule: linear warmup, then cosine, linear or constant down to
min_lr_ratio x student.lr by the last update."""

from __future__ import annotations

import math
from collections.abc import Callable

from ondistill.config import StudentConfig


def lr_lambda(cfg: StudentConfig, total_steps: int) -> Callable[[int], float]:
    """The multiplier of student.lr at each update (torch's LambdaLR)."""

    def fn(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / (cfg.warmup_steps + 1)
        if cfg.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
        shape = (
            0.5 * (1 + math.cos(math.pi * progress)) if cfg.schedule == "cosine" else 1 - progress
        )
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * shape

    return fn
