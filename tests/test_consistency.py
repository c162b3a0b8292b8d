"""Rollout consistency metrics: per-replica sums on each rank, combined on the driver; the
student's token log-probs come from the loss's own chunks."""

from __future__ import annotations

import pytest
import torch

from ondistill import consistency
from ondistill.heads import HeadSpec, OutputHead
from ondistill.losses import HiddenTeacher, ObjectiveSpec, chunked_loss


def test_replica_sums_combine_over_ranks_into_the_per_token_means():
    g = torch.Generator().manual_seed(0)
    student = -torch.rand(10, generator=g) * 3
    rollout = student + torch.randn(10, generator=g) * 0.1
    replica = torch.tensor([0, 0, 1, 1, 1, 0, 1, 1, 0, 1])
    ranks = [
        consistency.rank_sums(student[:4], rollout[:4], replica[:4]),
        consistency.rank_sums(student[4:], rollout[4:], replica[4:]),
    ]
    out = consistency.combine(ranks)
    log_r = student - rollout
    for r in (0, 1):
        pick = replica == r
        assert out[f"rollout_log_ratio/r{r}"] == pytest.approx(float(log_r[pick].mean()), abs=1e-6)
        k3 = (log_r[pick].exp() - 1 - log_r[pick]).mean()
        assert out[f"rollout_k3/r{r}"] == pytest.approx(float(k3), rel=1e-4)
        assert out[f"rollout_k3/r{r}"] > 0
    assert out["rollout_k3_max"] == max(out["rollout_k3/r0"], out["rollout_k3/r1"])
    assert consistency.combine([{"loss": 1.0}]) == {}  # off-policy steps: nothing to report


def test_chunked_loss_reports_the_students_token_logprobs():
    g = torch.Generator().manual_seed(1)
    n, h, v = 37, 16, 50
    hidden = torch.randn(n, h, generator=g, requires_grad=True)
    w_s = torch.randn(v, h, generator=g) * 0.3
    head = OutputHead(torch.randn(v, h, generator=g) * 0.3, HeadSpec())
    targets = torch.randint(0, v, (n,), generator=g)
    stats: dict = {}
    spec = ObjectiveSpec(temperature=2.0)  # the log-probs stay at temperature 1 (the sampler's)
    chunked_loss(
        hidden, w_s, HiddenTeacher(torch.randn(n, h, generator=g), head), torch.ones(n) / n,
        spec, {"targets": targets}, chunk_size=8, stats=stats, token_logprobs=True,
    )  # fmt: skip
    expected = torch.log_softmax(hidden.detach() @ w_s.T, -1).gather(-1, targets[:, None])[:, 0]
    torch.testing.assert_close(stats["student_logprob"], expected, rtol=1e-5, atol=1e-5)
