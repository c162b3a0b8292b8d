"""The run's output directory: usable before any work starts, and never silently shared by
two runs with different settings.

A directory that already holds a run (its `config.json`) is continued only with the settings
that made it; settings that change the math or the data must match. `trainer.resume=never`
starts over there, moving the older run's checkpoints aside so that a later `resume=auto`
cannot pick them up.
"""

from __future__ import annotations

import json
import os
import time
from enum import Enum
from pathlib import Path
from typing import Any

from ondistill.config import Config, ConfigError
from ondistill.rules import is_operational


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys to leaf values, through sections and lists of sections
    (teachers[1].engine.threads)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for i, item in enumerate(value):
                out.update(flatten(item, f"{prefix}{key}[{i}]."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def differing(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """'key: old -> new' for every setting that changes the math or the data: any but those
    marked operational in the schema (threads, logging, placement: how a run is carried out,
    not what it computes), which a continued run may change."""
    a, b = flatten(old), flatten(new)
    keys = sorted(k for k in a.keys() | b.keys() if not is_operational(Config, k))
    return [f"{k}: {_shown(a.get(k))} -> {_shown(b.get(k))}" for k in keys if a.get(k) != b.get(k)]


def _shown(value: Any) -> str:
    """As the user writes it: a choice by its name, not the enum's repr."""
    return repr(value.value if isinstance(value, Enum) else value)


def check(out_dir: Path, config: dict[str, Any], resume: str) -> None:
    """Refuse, before any work, an output directory the run cannot write or one that holds
    a run with other settings (unless resume=never starts over there)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(
            f"trainer.output_dir={out_dir} is a file; give a directory (new or an earlier run's)."
        )
    parent = next(p for p in (out_dir, *out_dir.parents) if p.exists())
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(
            f"trainer.output_dir={out_dir} cannot be written ({parent} is not "
            "writable); choose a directory you can write."
        )
    saved = out_dir / "config.json"
    if resume == "never" or not saved.exists():
        return
    changes = differing(json.loads(saved.read_text()), config)
    if changes:
        shown = "; ".join(changes[:4]) + (
            f"; and {len(changes) - 4} more" if len(changes) > 4 else ""
        )
        raise ConfigError(
            f"trainer.output_dir={out_dir} holds a run made with other settings "
            f"({shown}); to continue it, run with its settings ({saved}); to start "
            "over, give a new trainer.output_dir, or trainer.resume=never to reuse "
            "this one (its checkpoints are moved aside)."
        )


def start_over(out_dir: Path) -> Path | None:
    """resume=never in a directory with checkpoints: move them to checkpoints.old-<time> (kept,
    but out of reach of resume=auto). Returns where they went."""
    ckpts = out_dir / "checkpoints"
    if not ckpts.exists() or not any(ckpts.iterdir()):
        return None
    aside = out_dir / f"checkpoints.old-{time.strftime('%Y%m%d-%H%M%S')}"
    ckpts.rename(aside)
    return aside
