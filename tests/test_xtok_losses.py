"""Each cross-tokenizer objective against a plain float64 reference (loss and gradients)."""

import pytest
import torch

from ondistill.divergences import DIVERGENCES, DivergenceParams
from ondistill.heads import HeadSpec, OutputHead
from ondistill.losses import ObjectiveSpec
from ondistill.xtok.losses import (
    AlignedPair,
    aligned_stats,
    binary_logprobs,
    cross_tokenizer_loss,
)
from ondistill.xtok.vocab import SharedVocab

V_S, V_T, H_S, H_T = 11, 17, 6, 5
# Two rows. Row 0: 5 student tokens in chunks [0, 1, 1, 2, -1], 4 teacher tokens [0, 0, 1, 2];
# row 1: student [0, 1, 2, pad], teacher [0, 1, 1, 2] (1:1, n:1 / 1:n, and padding).
S_CHUNK = torch.tensor([[0, 1, 1, 2, -1], [0, 1, 2, -1, -1]])
T_CHUNK = torch.tensor([[0, 0, 1, 2], [0, 1, 1, 2]])
SHARED = SharedVocab(torch.tensor([0, 3, 4, 7, 10]), torch.tensor([5, 1, 16, 2, 0]))


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    s_h = torch.randn(2, 5, H_S, generator=g, dtype=torch.float64)
    s_w = torch.randn(V_S, H_S, generator=g, dtype=torch.float64)
    t_h = torch.randn(2, 4, H_T, generator=g, dtype=torch.float64)
    t_w = torch.randn(V_T, H_T, generator=g, dtype=torch.float64)
    s_tgt = torch.randint(0, V_S, (2, 5), generator=g)
    t_tgt = torch.randint(0, V_T, (2, 4), generator=g)
    weights = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]], dtype=torch.float64) / 7
    return s_h, s_w, t_h, t_w, s_tgt, t_tgt, weights


def _starts(chunks):
    out = []
    for row in chunks.tolist():
        seen = set()
        for r, c in enumerate(row):
            if c >= 0 and c not in seen:
                seen.add(c)
                out.append(r)
    return out


def _pairs():
    """(row, student position, teacher position, weight index) of each chunk start."""
    pairs = []
    for b in range(2):
        s_rows, t_rows = _starts(S_CHUNK[b : b + 1]), _starts(T_CHUNK[b : b + 1])
        pairs += [(b, i, j) for i, j in zip(s_rows, t_rows, strict=True)]
    return pairs


def _div(name, p_s, p_t):
    """Plain definitions on probability vectors (float64)."""
    if name == "reverse_kl":
        return (p_s * (p_s / p_t).log()).sum()
    if name == "forward_kl":
        return (p_t * (p_t / p_s).log()).sum()
    m = 0.5 * p_s + 0.5 * p_t  # jsd, beta = 0.5
    return 0.5 * (p_t * (p_t / m).log()).sum() + 0.5 * (p_s * (p_s / m).log()).sum()


def reference(method, div, s_h, s_w, t_h, t_w, s_tgt, t_tgt, weights, scale=1.0):
    total = 0.0
    if method in ("exact", "uld"):
        for b, i, j in _pairs():
            p_s = torch.softmax(s_h[b, i] @ s_w.T, -1)
            p_t = torch.softmax(scale * (t_h[b, j] @ t_w.T), -1)
            if method == "exact":
                q_s, q_t = p_s[SHARED.student_ids], p_t[SHARED.teacher_ids]
                q_s, q_t = (
                    torch.cat([q_s, 1 - q_s.sum(0, keepdim=True)]),
                    torch.cat([q_t, 1 - q_t.sum(0, keepdim=True)]),
                )
                total = total + weights[b, i] * _div(div, q_s, q_t)
            else:
                n = max(V_S, V_T)

                def pad(p: torch.Tensor, n: int = n) -> torch.Tensor:
                    return torch.cat([p, p.new_zeros(n - p.numel())]).sort(descending=True).values

                total = total + weights[b, i] * (pad(p_s) - pad(p_t)).abs().sum()
        return total
    for b in range(2):  # span: chunk log-probs, then the divergence of (p, 1 - p)
        for k in sorted(set(S_CHUNK[b].tolist()) - {-1}):
            ls = sum(
                torch.log_softmax(s_h[b, i] @ s_w.T, -1)[s_tgt[b, i]]
                for i in range(5)
                if S_CHUNK[b, i] == k
            )
            lt = sum(
                torch.log_softmax(scale * (t_h[b, j] @ t_w.T), -1)[t_tgt[b, j]]
                for j in range(4)
                if T_CHUNK[b, j] == k
            )
            q_s = torch.stack([ls.exp(), 1 - ls.exp()])
            q_t = torch.stack([lt.exp(), 1 - lt.exp()])
            first = _starts(S_CHUNK[b : b + 1])[k]
            total = total + weights[b, first] * _div(div, q_s, q_t)
    return total


@pytest.mark.parametrize(
    "method,div",
    [
        ("exact", "reverse_kl"),
        ("exact", "forward_kl"),
        ("exact", "jsd"),
        ("uld", "reverse_kl"),
        ("span", "reverse_kl"),
        ("span", "forward_kl"),
    ],
)
@pytest.mark.parametrize("chunk_size", [1, 64])
def test_objective_matches_reference(method, div, chunk_size):
    s_h, s_w, t_h, t_w, s_tgt, t_tgt, weights = _inputs()
    s_h.requires_grad_(), s_w.requires_grad_()
    head = OutputHead(t_w, HeadSpec(scale=0.7))
    stats = {}
    pair = AlignedPair(s_h, s_w, HeadSpec(), s_tgt, S_CHUNK, t_h, head, t_tgt, T_CHUNK)
    loss = cross_tokenizer_loss(
        method,
        pair,
        weights,
        ObjectiveSpec(divergence=div),
        SHARED,
        chunk_size,
        stats,
    )
    g_h, g_w = torch.autograd.grad(loss, (s_h, s_w))
    ref = reference(method, div, s_h, s_w, t_h, t_w, s_tgt, t_tgt, weights, scale=0.7)
    r_h, r_w = torch.autograd.grad(ref, (s_h, s_w))
    assert float(loss.detach()) == pytest.approx(float(ref), rel=1e-5, abs=1e-6)
    assert stats["divergence"] == pytest.approx(float(ref), rel=1e-5, abs=1e-6)
    torch.testing.assert_close(g_h, r_h, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(g_w, r_w, rtol=1e-4, atol=1e-6)


def test_ce_term_and_sft():
    s_h, s_w, t_h, t_w, s_tgt, t_tgt, weights = _inputs(1)
    s_h.requires_grad_()
    head = OutputHead(t_w, HeadSpec())
    for method, spec in [
        ("exact", ObjectiveSpec(objective="sft", ce_coef=1.0)),
        ("uld", ObjectiveSpec(ce_coef=0.5)),
    ]:
        ce_ref = -(
            torch.log_softmax(s_h @ s_w.T, -1).gather(-1, s_tgt[..., None])[..., 0] * weights
        ).sum()
        pair = AlignedPair(s_h, s_w, HeadSpec(), s_tgt, S_CHUNK, t_h, head, t_tgt, T_CHUNK)
        loss = cross_tokenizer_loss(
            method,
            pair,
            weights,
            spec,
            SHARED,
            3,
        )
        base = (
            0
            if spec.objective == "sft"
            else reference(method, "reverse_kl", s_h, s_w, t_h, t_w, s_tgt, t_tgt, weights)
        )
        ref = base + spec.ce_coef * ce_ref
        assert float(loss.detach()) == pytest.approx(float(ref.detach()), rel=1e-6)
        torch.testing.assert_close(
            torch.autograd.grad(loss, s_h)[0],
            torch.autograd.grad(ref, s_h)[0],
            rtol=1e-5,
            atol=1e-8,
        )


def test_binary_logprobs_are_finite_and_normalised():
    logp = torch.tensor([0.0, -1e-9, -0.1, -0.7, -5.0, -80.0], dtype=torch.float64)
    lp = binary_logprobs(logp)
    assert torch.isfinite(lp).all()
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(6, dtype=torch.float64))
    # the event keeps its log-prob (certain events are clamped just below 0: log(1-p) finite)
    torch.testing.assert_close(lp[:, 0], logp.clamp(max=-1e-6))
    # the complement is log(1 - p), here by plain float64 arithmetic where it is accurate
    plain = torch.log(1 - logp[2:].exp())
    torch.testing.assert_close(lp[2:, 1], plain, rtol=1e-12, atol=1e-15)
    assert lp[0, 1] == pytest.approx(
        torch.log(torch.tensor(1e-6, dtype=torch.float64)).item(), rel=1e-5
    )


def test_aligned_stats_match_the_losses():
    s_h, s_w, t_h, t_w, s_tgt, t_tgt, weights = _inputs(2)
    head = OutputHead(t_w, HeadSpec())
    pair = AlignedPair(s_h, s_w, HeadSpec(), s_tgt, S_CHUNK, t_h, head, t_tgt, T_CHUNK)
    st = aligned_stats(pair, SHARED, 2)
    ones = torch.ones_like(weights)
    for key, method, div in [
        ("exact_reverse_kl", "exact", "reverse_kl"),
        ("exact_forward_kl", "exact", "forward_kl"),
        ("uld", "uld", ""),
    ]:
        assert float(st[key].sum()) == pytest.approx(
            float(reference(method, div, s_h, s_w, t_h, t_w, s_tgt, t_tgt, ones)), rel=1e-6
        )
    span = DIVERGENCES["forward_kl"](
        binary_logprobs(st["span_student_logprob"]),
        binary_logprobs(st["span_teacher_logprob"]),
        DivergenceParams(),
    )
    assert float(span.sum()) == pytest.approx(
        float(reference("span", "forward_kl", s_h, s_w, t_h, t_w, s_tgt, t_tgt, ones)), rel=1e-5
    )
