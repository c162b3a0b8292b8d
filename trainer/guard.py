"""A diverging run never saves what it diverged into. The student ranks apply no update whose
loss or gradient is not finite (workers/student/actor.py); here the driver stops the run at
that step (trainer.nonfinite=stop) or counts it and goes on (skip), and stops in either mode
once the weights themselves are not finite, before any checkpoint or export holds them."""

from __future__ import annotations

import math
from pathlib import Path

from trainer import checkpoint


class DivergedError(RuntimeError):
    """The run stopped on a non-finite loss, gradient or weight; the message says which step
    and which checkpoint holds the last finite weights."""


class NonFiniteGuard:
    def __init__(self, mode: str, ckpt_root: Path):
        self.mode, self.ckpt_root, self.skipped = mode, ckpt_root, 0

    def check(self, step: int, metrics: dict[str, float]) -> None:
        """After step `step`'s update: raise DivergedError, or count a skipped update into
        metrics["skipped_updates"]."""
        loss, norm, lr = metrics["loss"], metrics["grad_norm"], metrics["lr"]
        if metrics["weights_finite"] < 1:
            raise DivergedError(
                f"step {step}: the student's weights are no longer finite (an update "
                f"overflowed them; loss {loss:.4g}, gradient norm {norm:.4g}); {self._kept()}; "
                f"lower student.lr (this step's rate: {lr:.3g})."
            )
        if not metrics["skipped"] and math.isfinite(loss):
            return
        if self.mode == "skip":
            self.skipped += 1
            metrics["skipped_updates"] = self.skipped
            return
        raise DivergedError(
            f"step {step}: the loss is {loss:.4g} and the gradient norm {norm:.4g}, so the "
            f"update was not applied and the run stops; {self._kept()}; lower student.lr "
            f"(this step's rate: {lr:.3g}), or set trainer.nonfinite=skip to skip such steps."
        )

    def _kept(self) -> str:
        newest = checkpoint.latest(self.ckpt_root)
        if newest is None:
            return "no checkpoint was written before it"
        return f"the newest checkpoint, {newest}, holds the last finite weights"
