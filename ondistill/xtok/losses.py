"""Cross-tokenizer objectives over aligned chunks (align.py), chunked like ondistill.losses.

Inputs per micro-batch: the student's final hidden states at its response positions and the
teacher's at its own, each side's chunk index per token (-1: not aligned). Chunk k starts at
the same byte on both sides, so at its first token both next-token distributions condition on
the same text. Three methods:

- exact: at every chunk start, the configured divergence between the two distributions
  restricted to the shared vocabulary, plus one tail bucket holding the rest of each side's
  mass (a proper divergence, as ondistill.losses.with_tail does for top-k);
- uld: Universal Logit Distillation (Boizard et al., 2024) at every chunk start: L1 distance
  between the sorted probability vectors, the shorter zero-padded; needs no shared vocabulary;
- span: approximate likelihood matching (Minixhofer et al., 2025): a chunk's log-probability on
  each side is the sum of its tokens' log-probs (spans merged, so 1:n and n:m chunks count
  too); the configured divergence compares the binary distributions (p, 1 - p) of the chunk.

The teacher's logits are recomputed here from its hidden states with its own head, one chunk of
positions at a time, so no [tokens, teacher vocab] tensor exists for the whole batch.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from tensordict import TensorDict

from ondistill import batch as B
from ondistill.divergences import DIVERGENCES, DivergenceParams
from ondistill.heads import HeadSpec, OutputHead
from ondistill.losses import ObjectiveSpec, chunked_loss, with_tail
from ondistill.token_stats import chunked_token_stats
from ondistill.xtok.vocab import SharedVocab


@dataclass(frozen=True)
class AlignedPair:
    """One micro-batch of cross-tokenizer KD: each side's final hidden states at its own
    response positions, its head, its next tokens, and each token's aligned chunk (-1: none)."""

    s_hidden: torch.Tensor  # [b, R_s, H_s]
    s_weight: torch.Tensor  # [V_s, H_s] the student's head
    s_spec: HeadSpec
    s_targets: torch.Tensor  # [b, R_s]
    s_chunk: torch.Tensor  # [b, R_s]
    t_hidden: torch.Tensor  # [b, R_t, H_t]
    t_head: OutputHead
    t_targets: torch.Tensor  # [b, R_t]
    t_chunk: torch.Tensor  # [b, R_t]

    @classmethod
    def of(
        cls,
        s_hidden: torch.Tensor,
        s_weight: torch.Tensor,
        s_spec: HeadSpec,
        s_targets: torch.Tensor,
        teacher: dict[str, torch.Tensor],
        t_head: OutputHead,
    ) -> AlignedPair:
        """The student's side plus the teacher's tensors under their batch keys (Signal.ALIGNED)."""
        return cls(
            s_hidden, s_weight, s_spec, s_targets, teacher[B.STUDENT_CHUNK],
            teacher[B.XT_HIDDEN], t_head, teacher[B.XT_RESPONSE_IDS], teacher[B.TEACHER_CHUNK],
        )  # fmt: skip


def trim_teacher_padding(td: TensorDict) -> TensorDict:
    """The batch with its teacher-side slots cut to the longest teacher response in it (a
    micro-batch of short answers need not carry the whole batch's teacher padding)."""
    width = max(1, int(td[B.XT_RESPONSE_MASK].sum(1).max()))
    out = td.clone(False)
    for key in (B.XT_HIDDEN, B.XT_RESPONSE_IDS, B.XT_RESPONSE_MASK, B.TEACHER_CHUNK):
        out.set(key, td[key][:, :width])
    return out


def _teacher_logits(chunk: dict, temperature: float, spec: HeadSpec) -> torch.Tensor:
    return spec.apply(chunk["logits"].float()) / temperature


class _AlignedTeacher:
    """Teacher hidden states at the chunk starts [K, H_t] plus its head."""

    def __init__(self, hidden: torch.Tensor, head: OutputHead, shared: SharedVocab | None = None):
        self.hidden, self.head, self.spec = hidden, head, head.spec
        self.ids = (
            {}
            if shared is None
            else {
                "s_ids": shared.student_ids.to(hidden.device),
                "t_ids": shared.teacher_ids.to(hidden.device),
            }
        )

    def chunk(self, i: int, j: int) -> dict[str, torch.Tensor]:
        w = self.head.weight
        return {"logits": self.hidden[i:j].to(w.dtype) @ w.T, **self.ids}


class SharedVocabTeacher(_AlignedTeacher):
    @staticmethod
    def views(z_s, chunk, temperature: float, spec: HeadSpec):
        """Both sides as log-probs over [shared tokens..., everything else]: [c, k + 1]."""
        s = F.log_softmax(z_s, -1).index_select(-1, chunk["s_ids"])
        t = F.log_softmax(_teacher_logits(chunk, temperature, spec), -1)
        return with_tail(s), with_tail(t.index_select(-1, chunk["t_ids"]))


class SortedTeacher(_AlignedTeacher):
    @staticmethod
    def views(z_s, chunk, temperature: float, spec: HeadSpec):
        """Sorted probabilities, cut to the smaller vocabulary n plus one bucket holding the
        rest: [c, n + 1]. One side's rest is empty, so L1 on these equals L1 on the
        zero-padded vectors."""
        s = F.softmax(z_s, -1).sort(-1, descending=True).values
        t = F.softmax(_teacher_logits(chunk, temperature, spec), -1)
        t = t.sort(-1, descending=True).values
        n = min(s.shape[-1], t.shape[-1])
        cut = lambda p: torch.cat([p[:, :n], p[:, n:].sum(-1, keepdim=True)], -1)  # noqa: E731
        return cut(s), cut(t)


class NoTeacher:
    """For per-token objectives that need only the student (span's second pass, sft)."""

    spec = None

    def chunk(self, i: int, j: int) -> dict[str, torch.Tensor]:
        return {}

    @staticmethod
    def views(z_s, chunk, temperature: float, spec: None):
        return z_s, z_s


def _uld(s_view, t_view, z_s, extras, spec: ObjectiveSpec) -> torch.Tensor:
    return (s_view - t_view).abs().sum(-1)


def _token_logprob(s_view, t_view, z_s, extras, spec: ObjectiveSpec) -> torch.Tensor:
    return F.log_softmax(z_s, -1).gather(-1, extras["targets"][:, None]).squeeze(-1)


def chunk_starts(chunk_ids: torch.Tensor) -> torch.Tensor:
    """[b, R] chunk index per token -> [b, R] bool, True on the first token of each chunk."""
    prev = F.pad(chunk_ids[:, :-1], (1, 0), value=-1)
    return (chunk_ids >= 0) & (chunk_ids != prev)


def _global_chunks(chunk_ids: torch.Tensor) -> torch.Tensor:
    """Row-local chunk indices [b, R] -> one index over the micro-batch (row-major), -1 kept."""
    starts = chunk_starts(chunk_ids)
    glob = starts.flatten().long().cumsum(0).view_as(chunk_ids) - 1
    return torch.where(chunk_ids >= 0, glob, -1)


def binary_logprobs(logp: torch.Tensor) -> torch.Tensor:
    """[K] log p of an event -> [K, 2] log-probs of (event, not event), finite."""
    logp = logp.clamp(max=-1e-6)
    log_not = torch.where(logp > -0.693, torch.log(-torch.expm1(logp)), torch.log1p(-logp.exp()))
    return torch.stack([logp, log_not], -1)


def _span_loss(
    x: AlignedPair, weights: torch.Tensor, spec: ObjectiveSpec, chunk_size: int, stats: dict
) -> torch.Tensor:
    """ALM in two passes: no-grad per-token log-probs give each chunk's log p on both sides and
    the loss's gradient g_k w.r.t. the student's; then one chunked pass through the student head
    with per-token weights g_k(i) carries exactly that gradient into the student."""
    s_hidden, s_weight, s_spec, s_targets, s_chunk = (
        x.s_hidden, x.s_weight, x.s_spec, x.s_targets, x.s_chunk
    )  # fmt: skip
    t_hidden, t_head, t_targets, t_chunk = x.t_hidden, x.t_head, x.t_targets, x.t_chunk
    s_glob, t_glob = _global_chunks(s_chunk), _global_chunks(t_chunk)
    keep_s, keep_t = s_glob >= 0, t_glob >= 0
    num = int(chunk_starts(s_chunk).sum())
    lp_s = chunked_token_stats(
        s_hidden[keep_s].detach(),
        s_weight.detach(),
        None,
        None,
        s_targets[keep_s],
        (),
        chunk_size,
        s_spec,
    )["student_logprob"]
    lp_t = chunked_token_stats(
        t_hidden[keep_t], t_head.weight, None, None, t_targets[keep_t], (), chunk_size, t_head.spec
    )["student_logprob"]
    L_s = torch.zeros(num, device=lp_s.device).index_add_(0, s_glob[keep_s], lp_s.float())
    L_t = torch.zeros(num, device=lp_s.device).index_add_(0, t_glob[keep_t], lp_t.float())
    w = weights[chunk_starts(s_chunk)].float()
    with torch.enable_grad():
        L_s = L_s.requires_grad_()
        per_chunk = DIVERGENCES[spec.divergence](
            binary_logprobs(L_s), binary_logprobs(L_t), spec.params
        )
        value = (per_chunk * w).sum()
        (g,) = torch.autograd.grad(value, L_s)
    coef = g[s_glob[keep_s]]
    inner: dict = {}
    surrogate = chunked_loss(
        s_hidden[keep_s],
        s_weight,
        NoTeacher(),
        coef,
        replace(spec, ce_coef=0.0),
        {"targets": s_targets[keep_s]},
        chunk_size,
        s_spec,
        inner,
        objective=_token_logprob,
    )
    stats["divergence"] = float(value)
    return surrogate - surrogate.detach() + value.detach()


def cross_tokenizer_loss(
    method: str,
    x: AlignedPair,
    weights: torch.Tensor,
    spec: ObjectiveSpec,
    shared: SharedVocab | None,
    chunk_size: int = 512,
    stats: dict | None = None,
) -> torch.Tensor:
    """sum over aligned chunks of weight x per-chunk objective (+ ce_coef x cross-entropy on
    every response token with weight > 0); differentiable in x.s_hidden and x.s_weight.

    weights [b, R_s]: the per-token loss weights; a chunk takes its first student token's.
    stats receives the weighted objective sum under "divergence"."""
    stats = stats if stats is not None else {}
    s_hidden, s_weight, s_spec, s_targets, s_chunk = (
        x.s_hidden, x.s_weight, x.s_spec, x.s_targets, x.s_chunk
    )  # fmt: skip
    t_hidden, t_head, t_chunk = x.t_hidden, x.t_head, x.t_chunk
    s_start, t_start = chunk_starts(s_chunk), chunk_starts(t_chunk)
    if int(s_start.sum()) != int(t_start.sum()):
        raise ValueError(
            f"{int(s_start.sum())} student chunks but {int(t_start.sum())} teacher "
            "chunks; the alignment of this batch is inconsistent."
        )
    zero = s_hidden.sum() * 0
    if method == "sft" or spec.objective == "sft":
        loss, stats["divergence"] = zero, 0.0
    elif method == "span":
        loss = _span_loss(x, weights, spec, chunk_size, stats)
    else:
        teacher = (
            SharedVocabTeacher(t_hidden[t_start], t_head, shared)
            if method == "exact"
            else SortedTeacher(t_hidden[t_start], t_head)
        )
        loss = chunked_loss(
            s_hidden[s_start],
            s_weight,
            teacher,
            weights[s_start],
            replace(spec, objective="divergence", ce_coef=0.0),
            {"targets": s_targets[s_start]},
            chunk_size,
            s_spec,
            stats,
            objective=None if method == "exact" else _uld,
        )
    if spec.ce_coef:  # cross-entropy on every response token, as in the same-vocabulary path
        keep = weights != 0
        ce_spec = replace(spec, objective="sft")
        loss = loss + chunked_loss(
            s_hidden[keep],
            s_weight,
            NoTeacher(),
            weights[keep],
            ce_spec,
            {"targets": s_targets[keep]},
            chunk_size,
            s_spec,
            {},
        )
    return loss


@torch.no_grad()
def aligned_stats(
    x: AlignedPair, shared: SharedVocab, chunk_size: int = 512
) -> dict[str, torch.Tensor]:
    """Per-chunk held-out metrics [K] at temperature 1: exact-span forward and reverse KL on the
    shared vocabulary (+ tail), ULD distance, and the chunk log-probs of both sides."""
    s_hidden, s_weight, s_spec, s_targets, s_chunk = (
        x.s_hidden, x.s_weight, x.s_spec, x.s_targets, x.s_chunk
    )  # fmt: skip
    t_hidden, t_head, t_targets, t_chunk = x.t_hidden, x.t_head, x.t_targets, x.t_chunk
    s_start, t_start = chunk_starts(s_chunk), chunk_starts(t_chunk)
    hs, ht = s_hidden[s_start], t_hidden[t_start]
    out: dict[str, list[torch.Tensor]] = {"exact_forward_kl": [], "exact_reverse_kl": [], "uld": []}
    exact, uld = SharedVocabTeacher(ht, t_head, shared), SortedTeacher(ht, t_head)
    for i in range(0, hs.shape[0], chunk_size):
        j = i + chunk_size
        z_s = s_spec.apply(hs[i:j].float() @ s_weight.float().T)
        sv, tv = SharedVocabTeacher.views(z_s, exact.chunk(i, j), 1.0, t_head.spec)
        out["exact_forward_kl"].append(DIVERGENCES["forward_kl"](sv, tv, DivergenceParams()))
        out["exact_reverse_kl"].append(DIVERGENCES["reverse_kl"](sv, tv, DivergenceParams()))
        sv, tv = SortedTeacher.views(z_s, uld.chunk(i, j), 1.0, t_head.spec)
        out["uld"].append((sv - tv).abs().sum(-1))
    res = {k: torch.cat(v) if v else hs.new_zeros(0) for k, v in out.items()}
    s_glob, t_glob = _global_chunks(s_chunk), _global_chunks(t_chunk)
    keep_s, keep_t = s_glob >= 0, t_glob >= 0
    num = int(s_start.sum())
    lp_s = chunked_token_stats(
        s_hidden[keep_s], s_weight, None, None, s_targets[keep_s], (), chunk_size, s_spec
    )["student_logprob"]
    lp_t = chunked_token_stats(
        t_hidden[keep_t], t_head.weight, None, None, t_targets[keep_t], (), chunk_size, t_head.spec
    )["student_logprob"]
    res["span_student_logprob"] = torch.zeros(num).index_add_(0, s_glob[keep_s].cpu(), lp_s.cpu())
    res["span_teacher_logprob"] = torch.zeros(num).index_add_(0, t_glob[keep_t].cpu(), lp_t.cpu())
    return res
