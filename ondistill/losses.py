"""Chunked distillation objectives from hidden states (or a teacher's top-k).

The teacher's logits are recomputed here from its final hidden states and output head; the
student's come from its hidden states and head. Tokens are walked in chunks: per chunk both
heads run, the per-token objective and its gradient w.r.t. the student logits are computed,
and that gradient is pushed straight through the student head. Nothing of size
[tokens, vocab] outlives a chunk: extra memory is O(chunk x vocab).

Objectives (one signature, see `Objective`):
- `divergence`: a registered full-vocabulary divergence (ondistill.divergences);
- `sft`: nothing but the cross-entropy term (plain fine-tuning, the baseline);
- `policy_gradient`: on-policy RL on the per-token reverse-KL reward
  log p_teacher(y_t) - log p_student(y_t) (MiniLLM / on-policy RKL), PPO-clipped importance
  ratio against the rollout engine's logprobs;
either plus `ce_coef` x cross-entropy on the response tokens.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from ondistill.divergences import DIVERGENCES
from ondistill.heads import HeadSpec, OutputHead
from ondistill.objective import ObjectiveName, ObjectiveSpec


class TeacherSide(Protocol):
    """The teacher as chunked_loss walks it: per chunk of positions, whatever its `views` turn
    into (student view, teacher view), both [c, K]."""

    @property
    def spec(self) -> HeadSpec | None: ...

    def chunk(self, i: int, j: int) -> dict[str, torch.Tensor]: ...

    @staticmethod
    def views(
        z_s: torch.Tensor, chunk: dict[str, torch.Tensor], temperature: float, spec: Any
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


class HiddenTeacher:
    """Teacher given as final hidden states [N, H_t] plus its output head."""

    def __init__(self, hidden: torch.Tensor, head: OutputHead):
        self.hidden, self.head = hidden, head

        self.spec = head.spec

    def chunk(self, i: int, j: int) -> dict[str, torch.Tensor]:
        w = self.head.weight
        return {"logits": self.hidden[i:j].to(w.dtype) @ w.T}  # the matmul, in the head's dtype

    @staticmethod
    def views(
        z_s: torch.Tensor, chunk: dict[str, torch.Tensor], temperature: float, spec: HeadSpec
    ):
        """(student view, teacher view) of one chunk, both logits-like [c, V]."""
        return z_s, spec.apply(chunk["logits"].float()) / temperature


class TopKTeacher:
    """Teacher given as its top-k token ids and log-probs [N, k]. Both sides are reduced to
    k + 1 buckets (the k ids, then everything else), so the divergence stays a proper
    divergence between two distributions; with k = V the tail is empty and it is exact."""

    spec = None

    def __init__(self, ids: torch.Tensor, logprobs: torch.Tensor):
        self.ids, self.logprobs = ids, logprobs.float()

    def chunk(self, i: int, j: int) -> dict[str, torch.Tensor]:
        return {"ids": self.ids[i:j], "logprobs": self.logprobs[i:j]}

    @staticmethod
    def views(z_s: torch.Tensor, chunk: dict[str, torch.Tensor], temperature: float, spec: None):
        student_top = F.log_softmax(z_s, -1).gather(-1, chunk["ids"])
        return with_tail(student_top), with_tail(chunk["logprobs"])

    def captured_mass(self) -> torch.Tensor:
        return self.logprobs.exp().sum(-1)  # [N]


def _log_tail(log_in: torch.Tensor) -> torch.Tensor:
    """log(1 - sum(exp(log_in))) per row. An empty tail (k = V) is clamped to a tiny mass
    before the log, so both its value and its gradient stay finite (and ~0 in the loss)."""
    return (1 - log_in.exp().sum(-1, keepdim=True)).clamp_min(1e-30).log()


def with_tail(top: torch.Tensor) -> torch.Tensor:
    """[c, k] log-probs of k tokens -> [c, k + 1]: those, then the log of the rest's mass."""
    return torch.cat([top, _log_tail(top)], -1)


# (student view [c, K], teacher view [c, K], student logits z_s [c, V], extras) -> loss [c]
Objective = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, dict, ObjectiveSpec], torch.Tensor]


def _divergence(s_view, t_view, z_s, extras, spec: ObjectiveSpec) -> torch.Tensor:
    return DIVERGENCES[spec.divergence](s_view, t_view, spec.params)


def _policy_gradient(s_view, t_view, z_s, extras, spec: ObjectiveSpec) -> torch.Tensor:
    targets = extras["targets"].unsqueeze(-1)
    lp_s = F.log_softmax(z_s, -1).gather(-1, targets).squeeze(-1)
    advantage = extras.get("advantages")
    if advantage is None:  # undiscounted: the per-token reward itself
        lp_t = F.log_softmax(t_view, -1).gather(-1, targets).squeeze(-1)
        advantage = (lp_t - lp_s).detach()
    ratio = (lp_s - extras["rollout_logprobs"]).exp()
    clipped = ratio.clamp(1 - spec.pg_clip, 1 + spec.pg_clip)
    return -torch.minimum(ratio * advantage, clipped * advantage)


def _sft(s_view, t_view, z_s, extras, spec: ObjectiveSpec) -> torch.Tensor:
    return z_s.new_zeros(z_s.shape[0])  # plain fine-tuning: only the ce_coef term


OBJECTIVES: dict[str, Objective] = {
    "divergence": _divergence,
    "policy_gradient": _policy_gradient,
    "sft": _sft,
}
assert set(OBJECTIVES) == set(ObjectiveName)  # the names the config accepts


def chunk_objective(
    z_raw,
    t_chunk,
    weights,
    extras,
    views: Callable,
    spec: ObjectiveSpec,
    s_spec: HeadSpec,
    t_spec: HeadSpec | None,
    objective: Objective,
):
    """One chunk's weighted objective from the student's raw logits z_raw [c, V]; returns
    (loss, weighted divergence sum). Pure, so it can be differentiated with
    torch.func and compiled whole: the softmaxes, divergence and gradient fuse."""
    z_s = s_spec.apply(z_raw.float()) / spec.temperature
    s_view, t_view = views(z_s, t_chunk, spec.temperature, t_spec)
    base = objective(s_view, t_view, z_s, extras, spec)
    per_token = base
    if spec.ce_coef:
        ce = -F.log_softmax(z_s, -1).gather(-1, extras["targets"][:, None]).squeeze(-1)
        per_token = base + spec.ce_coef * ce
    loss = (per_token * weights).sum()
    if spec.objective == "policy_gradient":  # report the divergence too, for comparable curves
        div = (DIVERGENCES[spec.divergence](s_view.detach(), t_view, spec.params) * weights).sum()
    else:  # the objective itself, without the cross-entropy term
        div = (base.detach() * weights).sum()
    return loss, div


_value_and_grad = torch.func.grad_and_value(chunk_objective, has_aux=True)
_steps: dict[tuple, Callable] = {}
FUSE = ("auto", "compile", "none")


def _kl_kernel_step(z_raw, t_chunk, weights, extras, spec: ObjectiveSpec):
    from ondistill.kernels.kl import kl_chunk

    per_row, grad = kl_chunk(
        z_raw, t_chunk["logits"], weights, spec.temperature, reverse=spec.divergence == "reverse_kl"
    )
    loss = (per_row * weights).sum()
    return grad, (loss, loss.detach())


def _kernel_applies(
    views: Callable, spec: ObjectiveSpec, s_spec: HeadSpec, t_spec: HeadSpec | None
) -> bool:
    """The Triton KL kernel covers the plain KLs between plain heads (Qwen, Llama, ...)."""
    return (
        views is HiddenTeacher.views
        and spec.objective == "divergence"
        and not spec.ce_coef
        and spec.divergence in ("reverse_kl", "forward_kl")
        and s_spec == HeadSpec()
        and t_spec == HeadSpec()
    )


# CPU: compiling the generic step (inductor's C++ kernels) takes 3-7 s once per process and
# spec, then a 512 x 49,152 chunk takes 0.26 s instead of 0.70 (reverse KL) or 1.46 (JSD) eager.
# Chunks below this many logits are cheap either way and stay eager, so small runs compile nothing.
CPU_COMPILE_MIN_LOGITS = 1 << 22


@functools.cache
def _has_cxx() -> bool:
    """Inductor's CPU kernels are C++: on a machine without a compiler, auto stays eager."""
    from torch._inductor import cpp_builder

    try:
        cpp_builder.get_cpp_compiler()
    except RuntimeError:  # InvalidCxxCompiler
        return False
    return True


def _step_fn(
    device: torch.device,
    fuse: str,
    views: Callable,
    spec: ObjectiveSpec,
    s_spec: HeadSpec,
    t_spec: HeadSpec | None,
    logits: int,
    objective: Objective,
) -> Callable:
    """(z_raw, t_chunk, weights, extras) -> (grad wrt z_raw, (loss, divergence)) for chunks of
    up to `logits` entries. fuse=auto takes the Triton KL kernel on CUDA where it applies; otherwise
    auto and compile run the generic step compiled once per distinct (device kind, teacher kind,
    specs), the specs bound as constants so that new batches never recompile (on CPU, auto only
    for chunks of at least CPU_COMPILE_MIN_LOGITS, with a C++ compiler). fuse=none runs the
    eager reference."""
    if fuse not in FUSE:
        raise ValueError(f"fuse={fuse!r}; choose one of {FUSE}")
    cuda = device.type == "cuda"
    builtin = objective is OBJECTIVES.get(spec.objective)
    if fuse == "auto" and cuda and builtin and _kernel_applies(views, spec, s_spec, t_spec):
        return functools.partial(_kl_kernel_step, spec=spec)
    cpu_eager = not cuda and (logits < CPU_COMPILE_MIN_LOGITS or not _has_cxx())
    mode = "none" if fuse == "none" or (fuse == "auto" and cpu_eager) else "compile"
    key = (mode, cuda, views, spec, s_spec, t_spec, objective)
    if key not in _steps:
        fn = functools.partial(
            _value_and_grad,
            views=views,
            spec=spec,
            s_spec=s_spec,
            t_spec=t_spec,
            objective=objective,
        )
        # The last chunk of a batch is shorter. CUDA keeps static shapes (a Triton kernel per
        # row count); on CPU one dynamic compile serves every row count at the same speed.
        _steps[key] = fn if mode == "none" else torch.compile(fn, dynamic=not cuda)
    return _steps[key]


class _Chunked(torch.autograd.Function):
    """Forward computes the loss AND its gradients chunk by chunk; backward only scales them.

    Computing gradients in forward (as Liger's fused linear cross-entropy does) is what keeps
    memory bounded: autograd would otherwise keep every chunk's [chunk, V] logits alive.
    """

    @staticmethod
    def forward(
        ctx,
        s_hidden,
        s_weight,
        teacher,
        weights,
        extras,
        spec: ObjectiveSpec,
        s_spec: HeadSpec,
        chunk: int,
        stats: dict,
        fuse: str,
        objective: Objective,
        logprobs: bool,
    ):
        # Matmuls run in the weights' dtype (bf16 on GPU, fp32 on CPU); softmax, divergence
        # and gradients are float32; the head gradient accumulates in the weights' dtype.
        w_s = s_weight.detach()
        grad_h = torch.empty_like(s_hidden, dtype=w_s.dtype)
        grad_w = torch.zeros_like(w_s)
        # One step for every chunk: a shorter last chunk reuses it (compiled with dynamic rows).
        step = _step_fn(
            s_hidden.device,
            fuse,
            teacher.views,
            spec,
            s_spec,
            teacher.spec,
            min(chunk, s_hidden.shape[0]) * w_s.shape[0],
            objective,
        )
        total = torch.zeros((), dtype=torch.float32, device=s_hidden.device)
        div_sum = torch.zeros_like(total)
        token_lp = []
        for i in range(0, s_hidden.shape[0], chunk):
            j = i + chunk
            h = s_hidden[i:j].detach().to(w_s.dtype)
            ex = {k: v[i:j] for k, v in extras.items()}
            z = h @ w_s.T
            if logprobs:  # the sampled tokens' log-probs at temperature 1, as the sampler saw them
                z_s = s_spec.apply(z.float())
                tgt = ex["targets"][:, None]
                token_lp.append((z_s.gather(-1, tgt) - z_s.logsumexp(-1, keepdim=True))[:, 0])
            g, (loss, div) = step(z, teacher.chunk(i, j), weights[i:j].float(), ex)
            total += loss
            div_sum += div
            g = g.to(w_s.dtype)
            torch.mm(g, w_s, out=grad_h[i:j])
            grad_w.addmm_(g.T, h)
        stats["divergence"] = float(div_sum)
        if logprobs:
            stats["student_logprob"] = torch.cat(token_lp) if token_lp else total.new_zeros(0)
        ctx.save_for_backward(grad_h, grad_w)
        ctx.dtypes = (s_hidden.dtype, s_weight.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        # none for teacher, weights, extras, spec, s_spec, chunk, stats, fuse, objective, logprobs
        no_grad = [None] * 10
        return (
            (grad_h * grad_out).to(ctx.dtypes[0]),
            (grad_w * grad_out).to(ctx.dtypes[1]),
            *no_grad,
        )


def chunked_loss(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    teacher: TeacherSide,
    weights: torch.Tensor,
    spec: ObjectiveSpec | None = None,
    extras: dict[str, torch.Tensor] | None = None,
    chunk_size: int = 512,
    student_spec: HeadSpec | None = None,
    stats: dict | None = None,
    fuse: str = "auto",
    objective: Objective | None = None,
    token_logprobs: bool = False,
) -> torch.Tensor:
    """sum_n weights[n] * objective_n, differentiable in student_hidden [N, H_s] and
    student_weight [V, H_s]. weights [N] (0 on padding; 1/num_tokens gives the token mean).
    extras: per-token [N] tensors the objective needs (targets, rollout_logprobs, advantages).
    stats, if given, receives the weighted divergence sum under "divergence". fuse: auto runs
    each chunk's softmax/divergence/gradient as the Triton KL kernel where it applies (CUDA),
    else as one torch.compile'd function (on CPU for large chunks only); compile always the
    latter; none eager. objective: a per-token function of the `Objective` signature instead of
    the registered OBJECTIVES[spec.objective] (the cross-tokenizer methods bring their own).
    token_logprobs: stats also receives "student_logprob" [N], the log-prob of extras["targets"]
    at temperature 1 (what a sampler of the student gives them), from the logits the loss
    computes anyway (ondistill/consistency.py compares it with the rollout engine's)."""
    spec = spec or ObjectiveSpec()
    if spec.divergence not in DIVERGENCES:
        raise KeyError(f"unknown divergence {spec.divergence!r}; registered: {sorted(DIVERGENCES)}")
    if (
        isinstance(teacher, HiddenTeacher)
        and student_weight.shape[0] != teacher.head.weight.shape[0]
    ):
        raise ValueError(
            f"student vocabulary ({student_weight.shape[0]}) and teacher vocabulary "
            f"({teacher.head.weight.shape[0]}) differ; use a cross-tokenizer method."
        )
    return _Chunked.apply(
        student_hidden,
        student_weight,
        teacher,
        weights,
        extras or {},
        spec,
        student_spec or HeadSpec(),
        chunk_size,
        stats if stats is not None else {},
        fuse,
        objective or OBJECTIVES[spec.objective],
        token_logprobs,
    )


def discounted_advantages(reward: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """A_t = sum_{k >= t} gamma^(k - t) r_k over each row's response tokens. reward, mask [b, R]."""
    out = torch.zeros_like(reward)
    running = torch.zeros_like(reward[:, 0])
    for t in range(reward.shape[1] - 1, -1, -1):
        running = (reward[:, t] + gamma * running) * mask[:, t]
        out[:, t] = running
    return out
