"""Rollout consistency: how far each rollout replica's log-probs of its sampled tokens are from
the student's own, measured every on-policy step.

A replica that missed a weight push, or whose kernels drift numerically from the trainer's,
samples from a policy the loss does not see; these metrics make that visible per replica.
With r = p_student(y) / p_rollout(y) on tokens y sampled by the rollout engine:

- `log_ratio`: mean log r (0 when both agree; its sign says which side is sharper);
- `k3`: mean (r - 1) - log r, Schulman's low-variance estimator of KL(rollout || student),
  always >= 0.

Each student rank sums over its own tokens (`rank_sums`); the driver adds the ranks' sums
and divides (`combine`).
"""

from __future__ import annotations

import torch

PREFIX = "consistency/"


def rank_sums(
    student_logprob: torch.Tensor, rollout_logprob: torch.Tensor, replica: torch.Tensor
) -> dict[str, float]:
    """Per-replica sums over one rank's response tokens; all three [n] (replica: the rollout
    replica that sampled each token)."""
    log_r = student_logprob.float() - rollout_logprob.float()
    k3 = (torch.expm1(log_r) - log_r).clamp_min(0)  # >= 0 exactly; float32 rounds near 0
    out: dict[str, float] = {}
    for r in replica.unique().tolist():
        pick = replica == r
        out[f"{PREFIX}{r}/log_ratio"] = float(log_r[pick].sum())
        out[f"{PREFIX}{r}/k3"] = float(k3[pick].sum())
        out[f"{PREFIX}{r}/tokens"] = float(pick.sum())
    return out


def add(into: dict[str, float], sums: dict[str, float]) -> None:
    for key, value in sums.items():
        into[key] = into.get(key, 0.0) + value


def combine(ranks: list[dict[str, float]]) -> dict[str, float]:
    """Every rank's sums -> `rollout_log_ratio/r<i>`, `rollout_k3/r<i>` per replica and
    `rollout_k3_max` (the worst replica); empty when no rank saw rollout-sampled tokens."""
    total: dict[str, float] = {}
    for rank in ranks:
        add(total, {k: v for k, v in rank.items() if k.startswith(PREFIX)})
    out: dict[str, float] = {}
    replicas = sorted({int(k.split("/")[1]) for k in total})
    for r in replicas:
        n = max(1.0, total[f"{PREFIX}{r}/tokens"])
        out[f"rollout_log_ratio/r{r}"] = total[f"{PREFIX}{r}/log_ratio"] / n
        out[f"rollout_k3/r{r}"] = total[f"{PREFIX}{r}/k3"] / n
    if replicas:
        out["rollout_k3_max"] = max(out[f"rollout_k3/r{r}"] for r in replicas)
    return out
