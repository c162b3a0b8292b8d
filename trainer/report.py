"""The end-of-run report: the held-out table (before, after, the teacher's own value), plain
warnings when the student looks collapsed or drifted, a few answers side by side from
samples.jsonl, and the driver's peak resident memory logged each step.
"""

from __future__ import annotations

import json
from pathlib import Path

SAMPLES = "samples.jsonl"  # every held-out answer of every evaluation, one row per prompt


def driver_peak_rss_gib() -> float:
    """This process's peak resident memory: what the driver held, hidden states or not.
    Linux's VmHWM belongs to this program's address space; getrusage's ru_maxrss (the fallback
    elsewhere) survives exec, so a driver started by a big process would report the parent's
    peak (seen: 28.5 GiB from a benchmark that had just written a 14B model)."""
    import resource

    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20  # KiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def summary(
    results: dict[str, dict[str, float]], out_dir: Path, seconds: float, shown: int = 3
) -> str:
    """The held-out table (before, after, the teacher's own value where it has one), a plain
    warning if the student looks collapsed, and a few answers side by side."""
    from trainer.quality import CollapseRule

    lines = [f"\n[ondistill] done in {seconds:.0f}s; outputs in {out_dir}"]
    if "before" not in results:
        return "\n".join(lines)
    teacher, after = results.get("teacher", {}), results.get("after", {})
    lines.append(f"{'held-out metric':<34}{'before':>10}{'after':>10}{'teacher':>10}")
    for key, before in results["before"].items():
        row = [before, after.get(key, float("nan")), teacher.get(key, float("nan"))]
        lines.append(
            f"{key.removeprefix('eval/'):<34}"
            + "".join(f"{v:>10.4f}" if v == v else f"{'':>10}" for v in row)
        )
    # each teacher's rows against that teacher's answers ("" with one teacher)
    for suffix in CollapseRule.suffixes(after) if teacher else []:
        rows_of = f" on teacher {suffix[1:]}'s rows" if suffix else ""
        reasons = CollapseRule().check(after, teacher, suffix)
        if reasons:
            lines.append(
                f"\n[ondistill] WARNING: the student looks collapsed{rows_of}: "
                + "; ".join(reasons)
                + f". Read its answers in {out_dir / SAMPLES} before using it."
            )
        drift = CollapseRule.drifted(results["before"], after, suffix)
        if drift:
            lines.append(
                f"\n[ondistill] WARNING{rows_of}: {drift}, whatever its KLs say. Read its "
                f"answers in {out_dir / SAMPLES} before using it."
            )
    rows = (
        [json.loads(x) for x in (out_dir / SAMPLES).read_text().splitlines()]
        if (out_dir / SAMPLES).exists()
        else []
    )

    def row_key(r: dict) -> tuple:  # with several teachers, a prompt has a row per teacher
        return r["prompt"], r.get("teacher")

    first = {row_key(r): r for r in rows if r["phase"] == "before"}
    for r in [r for r in rows if r["phase"] == "after" and row_key(r) in first][:shown]:
        lines.append(f"\nprompt:  {r['prompt']}")
        for who, text in (
            (f"teacher {r['teacher']}" if "teacher" in r else "teacher", r["teacher_greedy"]),
            ("before", first[row_key(r)]["student_greedy"]),
            ("after", r["student_greedy"]),
        ):
            lines.append(f"  {who + ':':<9}{_one_line(text)}")
    return "\n".join(lines)


def _one_line(text: str, width: int = 110) -> str:
    text = repr(text)[1:-1]  # newlines and repeats stay visible
    return text if len(text) <= width else text[: width - 3] + "..."
