"""On CPU, large chunks run the loss step torch.compile'd (inductor, dynamic row count): it must
give the eager reference's loss and gradients for every teacher kind and objective, including
chunks of different row counts within one call."""

import pytest
import torch

import ondistill.losses as L
from ondistill.heads import HeadSpec, OutputHead
from ondistill.losses import HiddenTeacher, ObjectiveSpec, TopKTeacher, chunked_loss
from ondistill.xtok.losses import AlignedPair, cross_tokenizer_loss
from ondistill.xtok.vocab import SharedVocab

N, H, V = 37, 8, 300  # chunk 16: chunks of 16, 16 and 5 rows


def _run(monkeypatch, compiled: bool, fn):
    monkeypatch.setattr(L, "CPU_COMPILE_MIN_LOGITS", 0 if compiled else 1 << 62)
    g = torch.Generator().manual_seed(0)
    hs = torch.randn(N, H, generator=g).requires_grad_()
    ws = (torch.randn(V, H, generator=g) * 0.5).requires_grad_()
    loss = fn(hs, ws, g)
    loss.backward()
    return loss.detach(), hs.grad, ws.grad


def _hidden(spec, topk=False):
    def fn(hs, ws, g):
        ht, wt = torch.randn(N, H + 4, generator=g), torch.randn(V, H + 4, generator=g) * 0.5
        weights = (torch.rand(N, generator=g) > 0.3).float() / N
        extras = {
            "targets": torch.randint(0, V, (N,), generator=g),
            "rollout_logprobs": -torch.rand(N, generator=g) * 5,
        }
        if topk:
            top = torch.log_softmax(ht @ wt.T, -1).topk(20, -1)
            teacher = TopKTeacher(top.indices, top.values)
        else:
            teacher = HiddenTeacher(ht, OutputHead(wt, HeadSpec(scale=0.7, softcap=5.0)))
        return chunked_loss(hs, ws, teacher, weights, spec, extras, chunk_size=16)

    return fn


def _xtok(method, divergence):
    s_chunk = torch.arange(N).remainder(29).reshape(1, N)  # 29 chunks, some of two tokens
    s_chunk = torch.sort(s_chunk, -1).values
    t_chunk = torch.arange(29).reshape(1, 29)
    shared = SharedVocab(torch.arange(0, 60, 3), torch.arange(20))

    def fn(hs, ws, g):
        t_h = torch.randn(1, 29, H, generator=g)
        t_head = OutputHead(torch.randn(V // 2, H, generator=g) * 0.5, HeadSpec())
        s_tgt = torch.randint(0, V, (1, N), generator=g)
        t_tgt = torch.randint(0, V // 2, (1, 29), generator=g)
        weights = torch.full((1, N), 1.0 / N)
        pair = AlignedPair(
            hs.reshape(1, N, H), ws, HeadSpec(), s_tgt, s_chunk, t_h, t_head, t_tgt, t_chunk
        )
        return cross_tokenizer_loss(
            method,
            pair,
            weights,
            ObjectiveSpec(divergence=divergence),
            shared,
            16,
        )

    return fn


CASES = {
    "reverse_kl": _hidden(ObjectiveSpec(divergence="reverse_kl")),
    "jsd_t2_ce": _hidden(ObjectiveSpec(divergence="jsd", temperature=2.0, ce_coef=0.1)),
    "policy_gradient": _hidden(ObjectiveSpec(objective="policy_gradient")),
    "topk_forward_kl": _hidden(ObjectiveSpec(divergence="forward_kl"), topk=True),
    "xtok_exact_jsd": _xtok("exact", "jsd"),
    "xtok_uld": _xtok("uld", "reverse_kl"),
    "xtok_span": _xtok("span", "forward_kl"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_compiled_cpu_step_matches_eager(monkeypatch, case):
    monkeypatch.setattr(L, "_steps", {})
    eager = _run(monkeypatch, False, CASES[case])
    assert not any(key[0] == "compile" for key in L._steps)  # below the threshold: eager
    compiled = _run(monkeypatch, True, CASES[case])
    assert any(key[0] == "compile" for key in L._steps)
    assert float(compiled[0]) == pytest.approx(float(eager[0]), rel=1e-5, abs=1e-6)
    torch.testing.assert_close(compiled[1], eager[1], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(compiled[2], eager[2], rtol=1e-4, atol=1e-6)
    assert eager[1].abs().sum() > 0  # the gradient reaches the student
