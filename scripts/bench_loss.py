"""KD loss from hidden states: ours (chunked) vs naive (full [tokens, vocab] logits) vs
liger-kernel's fused linear JSD (a maintained library that also starts from both hidden
states and heads; its beta 0 / 1 are the two KLs), same inputs, same run. Reports time
(forward + backward), extra peak memory, and the floor set by the four output-head matmuls
(student fwd, teacher fwd, grad wrt hidden, grad wrt head). The liger column needs CUDA and
`liger_kernel` importable; without it the column is left out.

    .venv/bin/python scripts/bench_loss.py --device cpu --tokens 2048 --hidden 2048
    python scripts/bench_loss.py --device cuda --tokens 4096 8192 16384 --hidden 2048 4096 \
        --fuse auto compile

Writes one JSON object per shape to stdout (and to --out if given).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from ondistill.heads import HeadSpec, OutputHead
from ondistill.losses import HiddenTeacher, ObjectiveSpec, chunked_loss


def naive_loss(hs, ws, ht, wt, weights, divergence):
    from ondistill.divergences import DIVERGENCES, DivergenceParams

    zs, zt = (hs @ ws.T).float(), (ht @ wt.T).float()
    return (DIVERGENCES[divergence](zs, zt, DivergenceParams()) * weights).sum()


def liger_loss(hs, ws, ht, wt, divergence, chunk):
    """liger-kernel's fused linear generalized JSD at the beta that is `divergence`, or None
    where it is not available. Which beta is which KL is checked against the naive loss."""
    if hs.device.type != "cuda" or divergence not in ("forward_kl", "reverse_kl"):
        return None
    try:
        from liger_kernel.transformers.functional import liger_fused_linear_jsd
    except ImportError:
        return None
    # liger: beta=0 -> KL(teacher || student) (forward), beta=1 -> KL(student || teacher)
    beta = 0.0 if divergence == "forward_kl" else 1.0
    return liger_fused_linear_jsd(hs, ws, ht, wt, None, beta, -100, 1.0)


def timed(fn, device, reps):
    times = []
    for _ in range(reps):
        if device == "cuda":
            torch.cuda.synchronize()
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_extra(fn, device, base_bytes):
    """Peak memory above what the inputs already hold (CUDA: allocator stats; CPU: not
    measured by the allocator, so reported as None)."""
    if device != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base_bytes


def bench(n, h, v, device, dtype, chunk, divergence, reps, fuse):
    g = torch.Generator(device=device).manual_seed(0)
    hs = (torch.randn(n, h, generator=g, device=device) * 1).to(dtype).requires_grad_()
    ws = (torch.randn(v, h, generator=g, device=device) * 0.02).to(dtype).requires_grad_()
    ht = torch.randn(n, h, generator=g, device=device).to(dtype)
    wt = (torch.randn(v, h, generator=g, device=device) * 0.02).to(dtype)
    weights = torch.full((n,), 1.0 / n, device=device)
    head = OutputHead(wt, HeadSpec())
    spec = ObjectiveSpec(divergence=divergence)

    def ours():
        hs.grad = ws.grad = None
        chunked_loss(
            hs, ws, HiddenTeacher(ht, head), weights, spec, chunk_size=chunk, fuse=fuse
        ).backward()

    def naive():
        hs.grad = ws.grad = None
        naive_loss(hs, ws, ht, wt, weights, divergence).backward()

    def liger():
        hs.grad = ws.grad = None
        liger_loss(hs, ws, ht, wt, divergence, chunk).backward()

    has_liger = liger_loss(hs, ws, ht, wt, divergence, chunk) is not None

    def floor():  # the head matmuls alone, at the same dtype
        zs, zt = hs.detach() @ ws.detach().T, ht @ wt.T
        zs @ ws.detach(), zt.T @ hs.detach()

    contenders = [("ours", ours), ("naive", naive), ("floor", floor)]
    contenders += [("liger", liger)] if has_liger else []
    for _, fn in contenders:  # warm-up
        fn()
    base = torch.cuda.memory_allocated() if device == "cuda" else 0
    out = {
        "tokens": n,
        "hidden": h,
        "vocab": v,
        "dtype": str(dtype).removeprefix("torch."),
        "chunk": chunk,
        "divergence": divergence,
        "fuse": fuse,
    }
    # check agreement once
    hs.grad = ws.grad = None
    a = chunked_loss(hs, ws, HiddenTeacher(ht, head), weights, spec, chunk_size=chunk, fuse=fuse)
    b = naive_loss(hs, ws, ht, wt, weights, divergence)
    out["abs_diff_loss"] = abs(a.item() - b.item())
    if has_liger:
        out["liger_abs_diff_loss"] = abs(
            liger_loss(hs, ws, ht, wt, divergence, chunk).item() - b.item()
        )
    del a, b
    for name, fn in contenders:
        out[f"{name}_s"] = timed(fn, device, reps)
        out[f"{name}_peak_extra_bytes"] = peak_extra(fn, device, base)
    flops = 8 * n * h * v
    out["head_tflop"] = flops / 1e12
    out["ours_over_floor"] = out["ours_s"] / out["floor_s"]
    out["ours_over_naive_time"] = out["ours_s"] / out["naive_s"]
    if has_liger:
        out["ours_over_liger_time"] = out["ours_s"] / out["liger_s"]
        out["ours_over_liger_memory"] = out["ours_peak_extra_bytes"] / out["liger_peak_extra_bytes"]
    if device == "cuda":
        out["ours_over_naive_memory"] = out["ours_peak_extra_bytes"] / out["naive_peak_extra_bytes"]
        out["floor_tflops"] = flops / out["floor_s"] / 1e12
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tokens", type=int, nargs="+", default=[4096])
    ap.add_argument("--hidden", type=int, nargs="+", default=[2048])
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--chunk", type=int, nargs="+", default=[0], help="0: 1024 on GPU, 512 on CPU")
    ap.add_argument(
        "--fuse",
        nargs="+",
        default=["auto"],
        choices=["auto", "compile", "none"],
        help="auto (GPU: the Triton KL kernel where it applies, else compiled; "
        "CPU: compiled for chunks of 4M+ logits), compile (the compiled "
        "generic step), none (the eager reference)",
    )
    ap.add_argument("--divergence", default="reverse_kl")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    chunks = [c or (1024 if args.device == "cuda" else 512) for c in args.chunk]
    machine = (
        torch.cuda.get_device_name()
        if args.device == "cuda"
        else f"{platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"
    )
    results = []
    for h in args.hidden:
        for n in args.tokens:
            for chunk in chunks:
                for fuse in args.fuse:
                    r = {
                        "machine": machine,
                        **bench(
                            n,
                            h,
                            args.vocab,
                            args.device,
                            dtype,
                            chunk,
                            args.divergence,
                            args.reps,
                            fuse,
                        ),
                    }
                    print(json.dumps(r), flush=True)
                    results.append(r)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
