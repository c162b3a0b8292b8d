"""Chunked knowledge-distillation loss from hidden states.

Teacher logits are recomputed here from the teacher's final hidden states and output head;
the student's come from its own hidden states and head. Tokens are walked in chunks: for each
chunk both heads are applied, the divergence and its gradient w.r.t. the student logits are
computed, and that gradient is pushed straight through the student head. Nothing of size
[tokens, vocab] outlives a chunk, so extra memory is O(chunk x vocab).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ondistill.heads import HeadSpec, OutputHead

# (student_logits [N, V], teacher_logits [N, V]) float32 -> per-token divergence [N]
Divergence = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
DIVERGENCES: dict[str, Divergence] = {}


def register(name: str) -> Callable[[Divergence], Divergence]:
    def wrap(fn: Divergence) -> Divergence:
        DIVERGENCES[name] = fn
        return fn
    return wrap


@register("forward_kl")
def forward_kl(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """KL(p_teacher || p_student): mode-covering; the classic KD objective."""
    t = F.log_softmax(teacher, dim=-1)
    s = F.log_softmax(student, dim=-1)
    return (t.exp() * (t - s)).sum(-1)


@register("reverse_kl")
def reverse_kl(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """KL(p_student || p_teacher): mode-seeking; what on-policy distillation minimises."""
    t = F.log_softmax(teacher, dim=-1)
    s = F.log_softmax(student, dim=-1)
    return (s.exp() * (s - t)).sum(-1)


class _ChunkedKD(torch.autograd.Function):
    """Forward computes the loss AND its gradients chunk by chunk; backward only scales them.

    Computing gradients in forward (as Liger's fused linear cross-entropy does) is what keeps
    memory bounded: autograd would otherwise keep every chunk's [chunk, V] logits alive.
    """

    @staticmethod
    def forward(ctx, s_hidden, s_weight, t_hidden, t_weight, weights,  # type: ignore[override]
                divergence: Divergence, s_spec: HeadSpec, t_spec: HeadSpec,
                temperature: float, chunk: int):
        needs_grad = s_hidden.requires_grad or s_weight.requires_grad
        grad_h = torch.zeros_like(s_hidden, dtype=torch.float32) if needs_grad else None
        grad_w = torch.zeros_like(s_weight, dtype=torch.float32) if needs_grad else None
        w_s = s_weight.detach().float()
        w_t = t_weight.detach().float()
        total = torch.zeros((), dtype=torch.float32, device=s_hidden.device)
        for i in range(0, s_hidden.shape[0], chunk):
            h = s_hidden[i:i + chunk].detach().float()
            wt = weights[i:i + chunk].float()
            with torch.no_grad():
                z_t = t_spec.apply(t_hidden[i:i + chunk].float() @ w_t.T) / temperature
            with torch.enable_grad():
                z_raw = (h @ w_s.T).requires_grad_(needs_grad)
                z_s = s_spec.apply(z_raw) / temperature
                loss = (divergence(z_s, z_t) * wt).sum()
                if needs_grad:
                    (g,) = torch.autograd.grad(loss, z_raw)
            total += loss.detach()
            if needs_grad:
                grad_h[i:i + chunk] = g @ w_s
                grad_w.addmm_(g.T, h)
        ctx.save_for_backward(grad_h, grad_w)
        ctx.dtypes = (s_hidden.dtype, s_weight.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        grad_h, grad_w = ctx.saved_tensors
        return ((grad_h * grad_out).to(ctx.dtypes[0]), (grad_w * grad_out).to(ctx.dtypes[1]),
                None, None, None, None, None, None, None, None)


def chunked_kd_loss(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_head: OutputHead,
    weights: torch.Tensor,
    divergence: str = "reverse_kl",
    temperature: float = 1.0,
    chunk_size: int = 512,
    student_spec: HeadSpec | None = None,
) -> torch.Tensor:
    """sum_n weights[n] * D(student_n, teacher_n), differentiable in student_hidden and
    student_weight.

    student_hidden [N, H_s], student_weight [V, H_s], teacher_hidden [N, H_t], weights [N]
    (put 0 on padding; 1/num_tokens gives the token mean). Teacher and student must share the
    vocabulary V (cross-tokenizer distillation aligns first).
    """
    if divergence not in DIVERGENCES:
        raise KeyError(f"unknown divergence {divergence!r}; registered: {sorted(DIVERGENCES)}")
    if student_weight.shape[0] != teacher_head.weight.shape[0]:
        raise ValueError(f"student vocabulary ({student_weight.shape[0]}) and teacher vocabulary "
                         f"({teacher_head.weight.shape[0]}) differ; use a cross-tokenizer method.")
    return _ChunkedKD.apply(student_hidden, student_weight, teacher_hidden, teacher_head.weight,
                            weights, DIVERGENCES[divergence], student_spec or HeadSpec(),
                            teacher_head.spec, temperature, chunk_size)


@torch.no_grad()
def chunked_token_stats(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    teacher_hidden: torch.Tensor | None,
    teacher_head: OutputHead | None,
    targets: torch.Tensor,
    divergences: tuple[str, ...] = (),
    chunk_size: int = 512,
    student_spec: HeadSpec | None = None,
) -> dict[str, torch.Tensor]:
    """Per-token statistics without gradients, chunked: `student_logprob` and (with a teacher)
    `teacher_logprob` of targets [N], plus each named divergence [N]. Temperature 1."""
    spec = student_spec or HeadSpec()
    out: dict[str, list[torch.Tensor]] = {"student_logprob": []}
    if teacher_head is not None:
        out["teacher_logprob"] = []
        out.update({d: [] for d in divergences})
    for i in range(0, student_hidden.shape[0], chunk_size):
        tgt = targets[i:i + chunk_size].unsqueeze(-1)
        z_s = spec.apply(student_hidden[i:i + chunk_size].float() @ student_weight.float().T)
        out["student_logprob"].append(torch.log_softmax(z_s, -1).gather(-1, tgt).squeeze(-1))
        if teacher_head is None:
            continue
        z_t = teacher_head.logits(teacher_hidden[i:i + chunk_size])
        out["teacher_logprob"].append(torch.log_softmax(z_t, -1).gather(-1, tgt).squeeze(-1))
        for d in divergences:
            out[d].append(DIVERGENCES[d](z_s, z_t))
    return {k: torch.cat(v) if v else student_hidden.new_zeros(0) for k, v in out.items()}
