"""The chunked KD loss against a naive float64 computation over full logits."""
import pytest
import torch

from ondistill.heads import HeadSpec, OutputHead
from ondistill.losses import DIVERGENCES, chunked_kd_loss, chunked_token_stats


def naive(hs, ws, ht, wt, weights, name, temperature, s_spec, t_spec):
    zs = s_spec.apply(hs.double() @ ws.double().T) / temperature
    zt = t_spec.apply(ht.double() @ wt.double().T) / temperature
    ls, lt = torch.log_softmax(zs, -1), torch.log_softmax(zt, -1)
    if name == "forward_kl":
        per_token = (lt.exp() * (lt - ls)).sum(-1)
    else:
        per_token = (ls.exp() * (ls - lt)).sum(-1)
    return (per_token * weights.double()).sum()


@pytest.mark.parametrize("name", ["forward_kl", "reverse_kl"])
@pytest.mark.parametrize("n,h,v,chunk", [(7, 16, 50, 3), (33, 8, 300, 16), (64, 32, 1000, 1000)])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_chunked_matches_naive_float64(name, n, h, v, chunk, temperature):
    g = torch.Generator().manual_seed(n * v)
    hs = torch.randn(n, h, generator=g, requires_grad=True)
    ws = (torch.randn(v, h, generator=g) * 0.5).requires_grad_()
    ht, wt = torch.randn(n, h + 4, generator=g), torch.randn(v, h + 4, generator=g) * 0.5
    weights = (torch.rand(n, generator=g) > 0.3).float() / n
    t_spec = HeadSpec(scale=0.7, softcap=5.0)  # exercise the teacher's scaling and capping

    ours = chunked_kd_loss(hs, ws, ht, OutputHead(wt, t_spec), weights, name, temperature, chunk)
    ours.backward()
    hs64, ws64 = hs.detach().double().requires_grad_(), ws.detach().double().requires_grad_()
    ref = naive(hs64, ws64, ht, wt, weights, name, temperature, HeadSpec(), t_spec)
    ref.backward()

    assert ours.item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-6)
    torch.testing.assert_close(hs.grad.double(), hs64.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ws.grad.double(), ws64.grad, rtol=1e-4, atol=1e-6)


def test_chunk_size_does_not_change_result():
    g = torch.Generator().manual_seed(1)
    hs, ws = torch.randn(50, 8, generator=g), torch.randn(200, 8, generator=g)
    ht = torch.randn(50, 8, generator=g)
    head = OutputHead(torch.randn(200, 8, generator=g), HeadSpec())
    w = torch.full((50,), 1 / 50)
    values = [chunked_kd_loss(hs, ws, ht, head, w, "reverse_kl", 1.0, c).item() for c in (1, 7, 50)]
    assert max(values) - min(values) < 1e-5


def test_token_stats_match_loss_and_logprobs():
    g = torch.Generator().manual_seed(2)
    hs, ws = torch.randn(20, 8, generator=g), torch.randn(100, 8, generator=g)
    ht, head = torch.randn(20, 8, generator=g), OutputHead(torch.randn(100, 8, generator=g), HeadSpec())
    targets = torch.randint(0, 100, (20,), generator=g)
    stats = chunked_token_stats(hs, ws, ht, head, targets, ("reverse_kl",), chunk_size=6)
    loss = chunked_kd_loss(hs, ws, ht, head, torch.ones(20), "reverse_kl", 1.0, 6)
    assert stats["reverse_kl"].sum().item() == pytest.approx(loss.item(), rel=1e-5)
    expected = torch.log_softmax(hs @ ws.T, -1).gather(-1, targets[:, None]).squeeze(-1)
    torch.testing.assert_close(stats["student_logprob"], expected, rtol=1e-5, atol=1e-5)


def test_vocab_mismatch_is_refused():
    head = OutputHead(torch.randn(10, 4), HeadSpec())
    with pytest.raises(ValueError, match="vocabulary"):
        chunked_kd_loss(torch.randn(3, 4), torch.randn(11, 4), torch.randn(3, 4), head,
                        torch.ones(3))


def test_registry_has_both_kls():
    assert {"forward_kl", "reverse_kl"} <= set(DIVERGENCES)
