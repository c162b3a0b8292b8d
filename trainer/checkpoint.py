"""Checkpoints that survive crashes: written to a temporary directory and renamed into place
only when complete, so a directory named `step_NNNNNN` is always whole.

Layout of one checkpoint:
  step_000010/
    student/            torch.distributed.checkpoint shards (model + optimizer), every rank
    student_extra.pt    LR-schedule state and each rank's RNG states (rank 0 writes)
    controller.json     step, data position, GKD coin RNG, rollout seed counter, eval results
    metrics.jsonl       the metrics history up to this step
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

PATTERN = re.compile(r"^step_(\d{6,})$")


def complete_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under root, oldest first (temporary directories never match)."""
    if not root.exists():
        return []
    steps = {p: m for p in root.iterdir() if p.is_dir() and (m := PATTERN.match(p.name))}
    return sorted(steps, key=lambda p: int(steps[p].group(1)))


def latest(root: Path) -> Path | None:
    done = complete_checkpoints(root)
    return done[-1] if done else None


def begin(root: Path, step: int) -> tuple[Path, Path]:
    """(temporary dir to write into, final dir). The temporary dir is on the same filesystem
    so the final rename is atomic."""
    root.mkdir(parents=True, exist_ok=True)
    return Path(
        tempfile.mkdtemp(prefix=f".tmp_step_{step:06d}_", dir=root)
    ), root / f"step_{step:06d}"


def commit(tmp: Path, final: Path, keep: int) -> Path:
    """Rename tmp into place, then delete all but the newest `keep` complete checkpoints and
    any leftovers of interrupted writes."""
    if final.exists():  # an earlier attempt at this very step finished: replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    for old in complete_checkpoints(final.parent)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    for stale in final.parent.glob(".tmp_step_*"):
        shutil.rmtree(stale, ignore_errors=True)
    return final


def write_json(path: Path, data: dict[str, Any]) -> None:
    with open(path, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
