"""Forward KL(teacher || student), mode-covering, and reverse KL(student || teacher),
mode-seeking (what on-policy distillation minimises)."""

import torch
import torch.nn.functional as F

from ondistill.divergences import DivergenceParams, kl, register


@register("forward_kl")
def forward_kl(student: torch.Tensor, teacher: torch.Tensor, p: DivergenceParams) -> torch.Tensor:
    return kl(F.log_softmax(teacher, -1), F.log_softmax(student, -1))


@register("reverse_kl")
def reverse_kl(student: torch.Tensor, teacher: torch.Tensor, p: DivergenceParams) -> torch.Tensor:
    return kl(F.log_softmax(student, -1), F.log_softmax(teacher, -1))
