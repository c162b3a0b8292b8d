"""Generalized Jensen-Shannon divergence (GKD, Agarwal et al. 2024), as TRL defines it:
M = beta * teacher + (1 - beta) * student, JSD = beta KL(T || M) + (1 - beta) KL(S || M);
beta = 0 is exactly forward KL and beta = 1 exactly reverse KL (the interior formula tends to
beta * KL(T || S) and (1 - beta) * KL(S || T) there, i.e. the same gradients up to scale)."""

import torch
import torch.nn.functional as F

from ondistill.divergences import DivergenceParams, kl, log_mix, register


@register("jsd")
def generalized_jsd(
    student: torch.Tensor, teacher: torch.Tensor, p: DivergenceParams
) -> torch.Tensor:
    log_s, log_t = F.log_softmax(student, -1), F.log_softmax(teacher, -1)
    if p.beta == 0:
        return kl(log_t, log_s)
    if p.beta == 1:
        return kl(log_s, log_t)
    log_m = log_mix(log_t, log_s, p.beta)
    return p.beta * kl(log_t, log_m) + (1 - p.beta) * kl(log_s, log_m)
