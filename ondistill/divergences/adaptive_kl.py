"""Adaptive KL (Wu et al. 2024): weight forward and reverse KL by how far the student is from
the teacher on the teacher's head (the top tokens holding mass mu) vs its tail. The weights
are constants for the gradient (the reference implementation detaches the student)."""

import torch
import torch.nn.functional as F

from ondistill.divergences import DivergenceParams, kl, register


@register("adaptive_kl")
def adaptive_kl(student: torch.Tensor, teacher: torch.Tensor, p: DivergenceParams) -> torch.Tensor:
    log_s, log_t = F.log_softmax(student, -1), F.log_softmax(teacher, -1)
    with torch.no_grad():
        p_t, order = log_t.exp().sort(-1, descending=True)
        gap = (p_t - log_s.exp().gather(-1, order)).abs()
        tail = p_t.cumsum(-1) > p.mu
        tail[:, 0] = False  # the top token is always head
        g_head = gap.masked_fill(tail, 0).sum(-1)
        g_tail = gap.masked_fill(~tail, 0).sum(-1)
        w_head = g_head / (g_head + g_tail).clamp_min(1e-12)
    return w_head * kl(log_t, log_s) + (1 - w_head) * kl(log_s, log_t)
