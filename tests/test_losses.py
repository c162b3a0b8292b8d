"""Every objective of the chunked loss against a plain float64 reference over full logits:
values and gradients, several shapes, chunk sizes, temperatures."""

import pytest
import torch

from ondistill.divergences import DIVERGENCES, DivergenceParams
from ondistill.heads import HeadSpec, OutputHead
from ondistill.losses import (
    HiddenTeacher,
    ObjectiveSpec,
    TopKTeacher,
    chunked_loss,
    discounted_advantages,
)
from ondistill.token_stats import chunked_token_stats
from tests.helpers import chunked_kd_loss

P = DivergenceParams(beta=0.3, alpha=0.2, mu=0.6)


def _kl(p, q):
    return (p * (p.log() - q.log())).sum(-1)


def reference(name: str, s_logits: torch.Tensor, t_logits: torch.Tensor) -> torch.Tensor:
    """Textbook formulas on probabilities, float64, written independently of the library."""
    s, t = torch.softmax(s_logits, -1), torch.softmax(t_logits, -1)
    if name == "forward_kl":
        return _kl(t, s)
    if name == "reverse_kl":
        return _kl(s, t)
    if name == "jsd":
        m = P.beta * t + (1 - P.beta) * s
        return P.beta * _kl(t, m) + (1 - P.beta) * _kl(s, m)
    if name == "tvd":
        return 0.5 * (s - t).abs().sum(-1)
    if name == "skew_forward_kl":
        return _kl(t, P.alpha * t + (1 - P.alpha) * s)
    if name == "skew_reverse_kl":
        return _kl(s, (1 - P.alpha) * t + P.alpha * s)
    if name == "adaptive_kl":
        out = []
        for srow, trow in zip(s, t, strict=True):
            order = torch.argsort(trow, descending=True)
            cum, head = 0.0, torch.zeros_like(trow, dtype=torch.bool)
            for rank, idx in enumerate(order.tolist()):
                if rank == 0 or cum + trow[idx] <= P.mu:
                    head[idx] = True
                cum += trow[idx].item()
            gap = (trow - srow.detach()).abs()
            w = gap[head].sum() / gap.sum()
            out.append(w * _kl(trow, srow) + (1 - w) * _kl(srow, trow))
        return torch.stack(out)
    raise KeyError(name)


def make(n, h, v, seed):
    g = torch.Generator().manual_seed(seed)
    hs = torch.randn(n, h, generator=g)
    ws = torch.randn(v, h, generator=g) * 0.5
    ht, wt = torch.randn(n, h + 4, generator=g), torch.randn(v, h + 4, generator=g) * 0.5
    weights = (torch.rand(n, generator=g) > 0.3).double() / n
    targets = torch.randint(0, v, (n,), generator=g)
    return hs, ws, ht, wt, weights, targets


def ours_and_ref(hs, ws, ht, wt, weights, spec, chunk, ref_per_token, extras=None):
    t_spec = HeadSpec(scale=0.7, softcap=5.0)  # exercise the teacher's scaling and capping
    h32, w32 = hs.clone().requires_grad_(), ws.clone().requires_grad_()
    ours = chunked_loss(
        h32,
        w32,
        HiddenTeacher(ht, OutputHead(wt, t_spec)),
        weights.float(),
        spec,
        extras,
        chunk_size=chunk,
    )
    ours.backward()
    h64, w64 = hs.double().requires_grad_(), ws.double().requires_grad_()
    zs = (h64 @ w64.T) / spec.temperature
    zt = t_spec.apply(ht.double() @ wt.double().T) / spec.temperature
    ref = (ref_per_token(zs, zt) * weights).sum()
    ref.backward()
    return (ours, h32.grad, w32.grad), (ref, h64.grad, w64.grad)


def assert_match(ours, ref):
    assert ours[0].item() == pytest.approx(ref[0].item(), rel=1e-5, abs=1e-6)
    torch.testing.assert_close(ours[1].double(), ref[1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours[2].double(), ref[2], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", sorted(DIVERGENCES))
@pytest.mark.parametrize(
    "n,h,v,chunk,temperature",
    [(7, 16, 50, 3, 1.0), (33, 8, 300, 16, 2.0), (64, 32, 1000, 1000, 0.7)],
)
def test_divergences_match_float64_reference(name, n, h, v, chunk, temperature):
    hs, ws, ht, wt, weights, _ = make(n, h, v, n * v)
    spec = ObjectiveSpec(divergence=name, params=P, temperature=temperature)
    ours, ref = ours_and_ref(
        hs, ws, ht, wt, weights, spec, chunk, lambda zs, zt: reference(name, zs, zt)
    )
    assert_match(ours, ref)


def test_cross_entropy_term_adds_to_divergence():
    hs, ws, ht, wt, weights, targets = make(20, 8, 64, 3)
    spec = ObjectiveSpec(divergence="forward_kl", ce_coef=0.5)

    def ref(zs, zt):
        ce = -torch.log_softmax(zs, -1).gather(-1, targets[:, None]).squeeze(-1)
        return reference("forward_kl", zs, zt) + 0.5 * ce

    ours, expected = ours_and_ref(hs, ws, ht, wt, weights, spec, 6, ref, {"targets": targets})
    assert_match(ours, expected)


@pytest.mark.parametrize("discounted", [False, True])
def test_policy_gradient_matches_reference(discounted):
    hs, ws, ht, wt, weights, targets = make(24, 8, 64, 4)
    g = torch.Generator().manual_seed(9)
    rollout_lp = -torch.rand(24, generator=g) * 5
    t_spec = HeadSpec(scale=0.7, softcap=5.0)
    spec = ObjectiveSpec(objective="policy_gradient", pg_clip=0.2)
    with torch.no_grad():  # reference reward and (optionally) discounted advantages, float64
        lp_s0 = (
            torch.log_softmax(hs.double() @ ws.double().T, -1)
            .gather(-1, targets[:, None])
            .squeeze(-1)
        )
        lp_t = torch.log_softmax(t_spec.apply(ht.double() @ wt.double().T), -1)
        lp_t = lp_t.gather(-1, targets[:, None]).squeeze(-1)
        adv = lp_t - lp_s0
        if discounted:  # 4 rows of 6 tokens
            adv = discounted_advantages(
                adv.view(4, 6), torch.ones(4, 6, dtype=torch.float64), 0.9
            ).view(-1)
    extras = {"targets": targets, "rollout_logprobs": rollout_lp}
    if discounted:
        extras["advantages"] = adv.float()

    def ref(zs, zt):
        lp_s = torch.log_softmax(zs, -1).gather(-1, targets[:, None]).squeeze(-1)
        ratio = (lp_s - rollout_lp.double()).exp()
        return -torch.minimum(ratio * adv, ratio.clamp(0.8, 1.2) * adv)

    ours, expected = ours_and_ref(hs, ws, ht, wt, weights, spec, 5, ref, extras)
    assert_match(ours, expected)


def test_discounted_advantages():
    r = torch.tensor([[1.0, 2.0, 3.0, 9.0]])
    m = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    torch.testing.assert_close(
        discounted_advantages(r, m, 0.5),
        torch.tensor([[1 + 0.5 * 2 + 0.25 * 3, 2 + 0.5 * 3, 3.0, 0.0]]),
    )


def test_jsd_limits_are_the_kls():
    hs, ws, ht, wt, weights, _ = make(10, 8, 40, 5)
    head = OutputHead(wt, HeadSpec())

    def value(name, beta=0.5):
        spec = ObjectiveSpec(divergence=name, params=DivergenceParams(beta=beta))
        return chunked_loss(hs, ws, HiddenTeacher(ht, head), weights.float(), spec).item()

    assert value("jsd", 0.0) == pytest.approx(value("forward_kl"), rel=1e-6)
    assert value("jsd", 1.0) == pytest.approx(value("reverse_kl"), rel=1e-6)
    # approaching the ends, JSD / beta -> forward KL and JSD / (1 - beta) -> reverse KL
    assert value("jsd", 1e-4) / 1e-4 == pytest.approx(value("forward_kl"), rel=5e-3)
    assert value("jsd", 1 - 1e-4) / 1e-4 == pytest.approx(value("reverse_kl"), rel=5e-3)


@pytest.mark.parametrize("name", ["forward_kl", "reverse_kl", "jsd", "tvd"])
def test_topk_with_full_vocab_equals_full(name):
    hs, ws, ht, wt, weights, _ = make(12, 8, 30, 6)
    head = OutputHead(wt, HeadSpec())
    top = torch.log_softmax(head.logits(ht), -1).topk(30, -1)
    spec = ObjectiveSpec(divergence=name)
    full_h, topk_h = hs.clone().requires_grad_(), hs.clone().requires_grad_()
    full = chunked_loss(full_h, ws, HiddenTeacher(ht, head), weights.float(), spec, chunk_size=5)
    topk = chunked_loss(
        topk_h, ws, TopKTeacher(top.indices, top.values), weights.float(), spec, chunk_size=5
    )
    full.backward(), topk.backward()
    assert topk.item() == pytest.approx(full.item(), rel=1e-5, abs=1e-6)
    torch.testing.assert_close(topk_h.grad, full_h.grad, rtol=1e-4, atol=1e-6)


def test_topk_tail_bucket_is_a_proper_divergence():
    hs, ws, ht, wt, weights, _ = make(12, 8, 30, 7)
    head = OutputHead(wt, HeadSpec())
    top = torch.log_softmax(head.logits(ht), -1).topk(5, -1)
    teacher = TopKTeacher(top.indices, top.values)
    assert (teacher.captured_mass() < 1).all() and (teacher.captured_mass() > 0).all()
    # a student equal to the teacher has zero divergence even with a tail bucket
    zero = chunked_loss(ht, wt, teacher, weights.float(), ObjectiveSpec(divergence="forward_kl"))
    assert abs(zero.item()) < 1e-6
    # and on 6 buckets (5 + tail) it equals the float64 KL of the bucketed distributions
    with torch.no_grad():
        ls, lt = torch.log_softmax(hs.double() @ ws.double().T, -1), top.values.double()

        def buckets(lp, ids=None):
            top_lp = lp.gather(-1, ids) if ids is not None else lp
            return torch.cat([top_lp.exp(), 1 - top_lp.exp().sum(-1, keepdim=True)], -1)

        expected = (_kl(buckets(lt), buckets(ls, top.indices)) * weights).sum()
    got = chunked_loss(hs, ws, teacher, weights.float(), ObjectiveSpec(divergence="forward_kl"))
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


def test_chunk_size_does_not_change_result():
    hs, ws, ht, wt, weights, _ = make(50, 8, 200, 8)
    head = OutputHead(wt, HeadSpec())
    values = [
        chunked_kd_loss(hs, ws, ht, head, weights.float(), "adaptive_kl", 1.0, c).item()
        for c in (1, 7, 50)
    ]
    assert max(values) - min(values) < 1e-6


def test_token_stats_match_loss_and_logprobs():
    hs, ws, ht, wt, _, targets = make(20, 8, 100, 9)
    head = OutputHead(wt, HeadSpec())
    stats = chunked_token_stats(hs, ws, ht, head, targets, ("reverse_kl",), chunk_size=6)
    loss = chunked_kd_loss(hs, ws, ht, head, torch.ones(20), "reverse_kl", 1.0, 6)
    assert stats["reverse_kl"].sum().item() == pytest.approx(loss.item(), rel=1e-5)
    expected = torch.log_softmax(hs @ ws.T, -1).gather(-1, targets[:, None]).squeeze(-1)
    torch.testing.assert_close(stats["student_logprob"], expected, rtol=1e-5, atol=1e-5)


def test_vocab_mismatch_is_refused():
    head = OutputHead(torch.randn(10, 4), HeadSpec())
    with pytest.raises(ValueError, match="vocabulary"):
        chunked_kd_loss(
            torch.randn(3, 4), torch.randn(11, 4), torch.randn(3, 4), head, torch.ones(3)
        )
