"""Token-level divergences over the full vocabulary, one small file each, registered by name.

Every divergence has one signature (its name listed in ondistill/objective.py):
    fn(student_logits [N, V], teacher_logits [N, V], params: DivergenceParams) -> [N]
Logits are float32 and already divided by the temperature; any normalised log-probabilities
are valid logits too (the top-k path passes k+1 log-probs, tail bucket included).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ondistill.objective import DivergenceName, DivergenceParams

Divergence = Callable[[torch.Tensor, torch.Tensor, DivergenceParams], torch.Tensor]
DIVERGENCES: dict[str, Divergence] = {}


def register(name: str) -> Callable[[Divergence], Divergence]:
    if name not in set(DivergenceName):  # the config's choices are that enum
        raise ValueError(f"divergence {name!r}: add it to ondistill/objective.py DivergenceName")

    def wrap(fn: Divergence) -> Divergence:
        DIVERGENCES[name] = fn
        return fn

    return wrap


def kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row from (finite) log-probabilities."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def log_mix(log_p: torch.Tensor, log_q: torch.Tensor, w: float) -> torch.Tensor:
    """log(w * p + (1 - w) * q), stably."""
    return torch.logaddexp(
        log_p + torch.log(torch.tensor(w)), log_q + torch.log(torch.tensor(1 - w))
    )


from ondistill.divergences import adaptive_kl, jsd, kl_pair, skew_kl, tvd  # noqa: E402,F401
