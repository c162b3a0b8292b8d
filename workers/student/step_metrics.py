"""One train step's metrics: each rank's signal metrics, and the step's from every rank's own."""

from __future__ import annotations

from tensordict import TensorDict

from ondistill import batch as B
from ondistill import consistency


def student_step_metrics(ranks: list[dict[str, float]], tokens: int) -> dict[str, float]:
    """One train step's metrics from every student rank's own: loss and divergence are each
    rank's share of the global mean, so they add up; so do the counts behind the shares."""
    first = ranks[0]
    metrics = {
        "loss": sum(r["loss"] for r in ranks),
        "kl": sum(r["kl"] for r in ranks),
        "grad_norm": first["grad_norm"],  # already global (clip_grad_norm_ over the mesh)
        "lr": first["lr"],
        "response_tokens": tokens,
        # the longest any rank waited for its scored rows (the teacher's time, for references)
        "fetch_s": max(r["fetch_s"] for r in ranks),
        "skipped": first["skipped"],  # alike on every rank (the global gradient norm)
        "weights_finite": min(r["weights_finite"] for r in ranks),
    }
    metrics.update(consistency.combine(ranks))  # per rollout replica, on-policy steps
    if "alloc_retries" in first:
        metrics["alloc_retries"] = first["alloc_retries"]
    for total, share in (
        ("aligned_tokens", "aligned_fraction"),
        ("topk_mass", "teacher_topk_mass"),
    ):
        if total in first:  # cross-tokenizer: tokens that start an aligned chunk; top-k mass
            metrics[share] = sum(r[total] for r in ranks) / max(1, tokens)
    # Several teachers: each one's loss, divergence (its own per-token mean) and signal
    # shares, per rank a share of the whole; a rank may have none of a teacher's rows.
    named = {k for r in ranks for k in r if k.split("/")[0] in PER_TEACHER}
    for key in sorted(named):
        metrics[key] = sum(r.get(key, 0.0) for r in ranks)
    return metrics


# Per-teacher metrics, logged as <metric>/<teacher name> when a run has several teachers
PER_TEACHER = ("loss", "kl", "aligned_fraction", "teacher_topk_mass")


def signal_metrics(part: B.TeacherPart, td: TensorDict, several: bool) -> dict[str, float]:
    """What a part's signal says beyond the loss: the student tokens that start an aligned
    chunk (another tokenizer), the top-k mass (a top-k teacher). The one teacher's as totals
    (student_step_metrics makes them shares), a named teacher's as this rank's share of its own."""
    signal = B.signal_of(td)
    if signal is B.Signal.ALIGNED:
        from ondistill.xtok.translate import aligned_starts

        key, value = "aligned_tokens", float(aligned_starts(td))
    elif signal is B.Signal.TOPK:
        mass = td[B.TEACHER_TOPK_LOGPROBS].exp().sum(-1)[td[B.RESPONSE_MASK]]
        key, value = "topk_mass", float(mass.sum())
    else:
        return {}
    if not several:
        return {key: value}
    share = {"aligned_tokens": "aligned_fraction", "topk_mass": "teacher_topk_mass"}[key]
    return {f"{share}/{part.teacher}": value / max(1, part.tokens)}
