"""Per-token statistics of a batch's response tokens without gradients, chunked like the
losses (ondistill/losses.py): the student's and the teacher's log-probabilities of the
targets, and any registered divergence, for evaluation, metrics and the policy-gradient
reward. Memory O(chunk x vocab)."""

from __future__ import annotations

import torch

from ondistill.divergences import DIVERGENCES
from ondistill.heads import HeadSpec, OutputHead
from ondistill.objective import DivergenceParams


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
    params = DivergenceParams()
    out: dict[str, list[torch.Tensor]] = {"student_logprob": []}
    if teacher_head is not None:
        out["teacher_logprob"] = []
        out.update({d: [] for d in divergences})
    for i in range(0, student_hidden.shape[0], chunk_size):
        tgt = targets[i : i + chunk_size].unsqueeze(-1)
        z_s = spec.apply(student_hidden[i : i + chunk_size].float() @ student_weight.float().T)
        out["student_logprob"].append(torch.log_softmax(z_s, -1).gather(-1, tgt).squeeze(-1))
        if teacher_head is None or teacher_hidden is None:
            continue
        z_t = teacher_head.logits(teacher_hidden[i : i + chunk_size])
        out["teacher_logprob"].append(torch.log_softmax(z_t, -1).gather(-1, tgt).squeeze(-1))
        for d in divergences:
            out[d].append(DIVERGENCES[d](z_s, z_t, params))
    return {k: torch.cat(v) if v else student_hidden.new_zeros(0) for k, v in out.items()}
