"""The Triton KL kernel (the fused GPU path of the two KLs), run by Triton's interpreter on
CPU: the same step contract as the generic path, equal to a float64 reference.

The interpreter must be chosen before Triton is first imported, so the kernel tests run in a
child pytest with TRITON_INTERPRET=1 (and are skipped in this process)."""

import os
import re
import subprocess
import sys

import pytest
import torch

from ondistill.divergences import DIVERGENCES, DivergenceParams
from ondistill.heads import HeadSpec
from ondistill.losses import (
    OBJECTIVES,
    HiddenTeacher,
    ObjectiveSpec,
    TopKTeacher,
    _kernel_applies,
    _kl_kernel_step,
    _value_and_grad,
)

pytest.importorskip("triton")
CHILD = os.environ.get("TRITON_INTERPRET") == "1"
in_child = pytest.mark.skipif(not CHILD, reason="runs in test_kernels_under_the_interpreter")


def test_kernels_under_the_interpreter():
    if CHILD:
        pytest.skip("this is the child run")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
        env={**os.environ, "TRITON_INTERPRET": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert int(re.search(r"(\d+) passed", proc.stdout).group(1)) >= 9, proc.stdout[-2000:]


@pytest.mark.parametrize("divergence", ["reverse_kl", "forward_kl"])
@pytest.mark.parametrize(
    "c,v,block,temperature", [(5, 1000, 256, 1.0), (3, 77, 4096, 2.0), (4, 512, 128, 0.7)]
)
@in_child
def test_kernel_matches_float64_reference(divergence, c, v, block, temperature):
    from ondistill.kernels.kl import kl_chunk

    g = torch.Generator().manual_seed(c * v)
    z_s, z_t = torch.randn(c, v, generator=g) * 4, torch.randn(c, v, generator=g) * 4
    weights = torch.rand(c, generator=g)
    per_row, grad = kl_chunk(z_s, z_t, weights, temperature, divergence == "reverse_kl", block)
    x = z_s.double().requires_grad_()
    ref = DIVERGENCES[divergence](x / temperature, z_t.double() / temperature, DivergenceParams())
    (ref * weights.double()).sum().backward()
    torch.testing.assert_close(per_row.double(), ref.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad.double(), x.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("divergence", ["reverse_kl", "forward_kl"])
@in_child
def test_kernel_step_equals_generic_step(divergence):
    """What ondistill.losses calls per chunk: same gradient, loss and divergence, from bf16
    logits as on GPU (to bf16 rounding)."""
    g = torch.Generator().manual_seed(1)
    z_raw = (torch.randn(6, 300, generator=g) * 3).bfloat16()
    chunk = {"logits": (torch.randn(6, 300, generator=g) * 3).bfloat16()}
    weights = torch.rand(6, generator=g)
    spec = ObjectiveSpec(divergence=divergence, temperature=1.5)
    grad, (loss, div) = _kl_kernel_step(z_raw, chunk, weights, {}, spec)
    ref_grad, (ref_loss, ref_div) = _value_and_grad(
        z_raw,
        chunk,
        weights,
        {},
        views=HiddenTeacher.views,
        spec=spec,
        s_spec=HeadSpec(),
        t_spec=HeadSpec(),
        objective=OBJECTIVES["divergence"],
    )
    assert grad.dtype == z_raw.dtype
    torch.testing.assert_close(grad.float(), ref_grad.float(), rtol=2e-2, atol=2e-5)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(div, ref_div, rtol=1e-5, atol=1e-6)


def test_kernel_only_where_it_is_exact():
    plain, kl = HeadSpec(), ObjectiveSpec(divergence="reverse_kl")
    assert _kernel_applies(HiddenTeacher.views, kl, plain, plain)
    assert _kernel_applies(
        HiddenTeacher.views, ObjectiveSpec(divergence="forward_kl"), plain, plain
    )
    assert not _kernel_applies(HiddenTeacher.views, ObjectiveSpec(divergence="jsd"), plain, plain)
    assert not _kernel_applies(HiddenTeacher.views, ObjectiveSpec(ce_coef=0.5), plain, plain)
    assert not _kernel_applies(
        HiddenTeacher.views, ObjectiveSpec(objective="policy_gradient"), plain, plain
    )
    assert not _kernel_applies(TopKTeacher.views, kl, plain, None)
    assert not _kernel_applies(HiddenTeacher.views, kl, plain, HeadSpec(softcap=30.0))
