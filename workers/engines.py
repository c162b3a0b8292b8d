"""Engine interfaces and the by-name registry of the backends the config names.

The registry holds import paths, not classes: backends are imported when chosen, so choosing
`hf` never imports vLLM or SGLang, and validating a config imports neither. Each backend file
ends with a type-checker assertion that its class satisfies its protocol.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import ClassVar, Protocol

import torch
from tensordict import TensorDict

from ondistill.config import RolloutBackend, TeacherBackend


class RolloutEngine(Protocol):
    """Runs inside a rollout actor: samples responses with the student's current weights."""

    def generate(
        self, prompts: TensorDict, seed: int | None = None, greedy: bool = False
    ) -> TensorDict:
        """PROMPTS keys -> ROLLOUT keys; each prompt repeated n_samples times, rows grouped by
        prompt (row i*n..i*n+n-1 come from prompt i). A given seed makes sampling repeatable;
        None continues the engine's own seeded sequence (config.sampling_seed). greedy: one
        temperature-0 answer per prompt (evaluation)."""
        ...

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load a bucket of (HF parameter name, full tensor) into the running engine."""
        ...

    def flush(self) -> None:
        """Called after the last bucket of a weight push: drop caches built on old weights."""
        ...

    def sleep(self, drop_weights: bool = False) -> None:
        """Free accelerator memory until the next generate (no-op where there is none).
        drop_weights: the caller pushes new weights before the next generate, so the engine
        need not keep these (vLLM with rollout.sleep_level=2, the default, discards them
        instead of copying them to host memory); a generate before that push is an error."""
        ...


class TeacherEngine(Protocol):
    """Runs inside a teacher actor: scores rollout batches."""

    # score(share=True) can leave the hidden states on its GPU for a student there (CUDA IPC)
    shares_gpu: ClassVar[bool]
    # True: one actor runs all teacher.tp_size ranks itself (its engine starts their
    # processes); False: one actor per rank, joined by the group (HFTeacher.join)
    owns_tp_ranks: ClassVar[bool]

    def score(self, batch: TensorDict, share: bool = False) -> TensorDict:
        """ROLLOUT keys -> batch.scored(batch, signal): the keys of the signal it sends.
        share (only where shares_gpu): send Signal.HIDDEN_IPC instead of the tensor."""
        ...

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load (HF parameter name, full tensor) pairs in place (self-distillation)."""
        ...

    def shutdown(self) -> None:
        """Stop engine processes of its own before the actor is killed."""
        ...


ROLLOUT_BACKENDS = {
    "hf": "workers.rollout.hf:HFRollout",
    "vllm": "workers.rollout.vllm:VLLMRollout",
}
TEACHER_BACKENDS = {
    "hf": "workers.teacher.hf:HFTeacher",
    "sglang": "workers.teacher.sglang:SGLangTeacher",
}


# Every backend the config names (ondistill/config.py), "auto" being a choice among them.
assert {"auto", *ROLLOUT_BACKENDS} == set(RolloutBackend)
assert {"auto", *TEACHER_BACKENDS} == set(TeacherBackend)


def load_class(registry: dict[str, str], name: str) -> type:
    if name not in registry:
        raise KeyError(f"unknown backend {name!r}; available: {', '.join(sorted(registry))}")
    module, cls = registry[name].split(":")
    return getattr(importlib.import_module(module), cls)
