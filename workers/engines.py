"""Engine interfaces and the by-name registry.

Backends are imported lazily from their own files, so choosing `hf` never imports vLLM or
SGLang, and `import workers` imports neither.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import Protocol

import torch
from tensordict import TensorDict


class RolloutEngine(Protocol):
    def generate(
        self, prompts: TensorDict, seed: int | None = None, greedy: bool = False
    ) -> TensorDict:
        """PROMPTS keys -> ROLLOUT keys; each prompt repeated n_samples times, rows grouped by
        prompt (row i*n..i*n+n-1 come from prompt i). A given seed makes sampling repeatable;
        None continues the engine's own seeded sequence. greedy: one temperature-0 answer per
        prompt (evaluation)."""

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load a bucket of (HF parameter name, full tensor) into the running engine."""

    def flush(self) -> None:
        """Called after the last bucket of a weight push: drop caches built on old weights."""


class TeacherEngine(Protocol):
    def score(self, batch: TensorDict) -> TensorDict:
        """ROLLOUT keys -> SCORED keys (adds TEACHER_HIDDEN [B, R, H])."""

    def shutdown(self) -> None:
        """Stop engine processes of its own before the actor is killed."""


ROLLOUT_BACKENDS = {
    "hf": "workers.rollout.hf:HFRollout",
    "vllm": "workers.rollout.vllm:VLLMRollout",
}
TEACHER_BACKENDS = {
    "hf": "workers.teacher.hf:HFTeacher",
    "sglang": "workers.teacher.sglang:SGLangTeacher",
}


def load_class(registry: dict[str, str], name: str) -> type:
    if name not in registry:
        raise KeyError(f"unknown backend {name!r}; available: {', '.join(sorted(registry))}")
    module, cls = registry[name].split(":")
    return getattr(importlib.import_module(module), cls)
