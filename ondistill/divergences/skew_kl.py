"""Skew KLs (DistiLLM, Ko et al. 2024): each KL against a mixture, bounded and smoother.
skew forward:  KL(T || alpha T + (1 - alpha) S)
skew reverse:  KL(S || (1 - alpha) T + alpha S)"""

import torch
import torch.nn.functional as F

from ondistill.divergences import DivergenceParams, kl, log_mix, register


@register("skew_forward_kl")
def skew_forward_kl(
    student: torch.Tensor, teacher: torch.Tensor, p: DivergenceParams
) -> torch.Tensor:
    log_s, log_t = F.log_softmax(student, -1), F.log_softmax(teacher, -1)
    return kl(log_t, log_mix(log_t, log_s, p.alpha))


@register("skew_reverse_kl")
def skew_reverse_kl(
    student: torch.Tensor, teacher: torch.Tensor, p: DivergenceParams
) -> torch.Tensor:
    log_s, log_t = F.log_softmax(student, -1), F.log_softmax(teacher, -1)
    return kl(log_s, log_mix(log_s, log_t, p.alpha))
