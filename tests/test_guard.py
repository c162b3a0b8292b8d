"""A diverging run (student.lr=1e9) never saves what it diverged into: it stops at the first
non-finite loss with the kept checkpoint named (trainer.nonfinite=stop), or skips and counts
such updates (skip); either way every checkpoint and the export hold finite weights."""

import json
import re

import pytest
import torch

from tests.test_run import tiny_config
from trainer import checkpoint
from trainer.guard import DivergedError
from trainer.run import run


def _diverging(tiny_dirs, prompts_file, tmp_path, mode: str):
    cfg = tiny_config(
        tiny_dirs, prompts_file, tmp_path, steps=4, checkpoint_every=1, on_policy_fraction=0.0
    )
    cfg.student.lr, cfg.trainer.nonfinite = 1e9, mode
    cfg.trainer.keep_checkpoints, cfg.data.eval_size, cfg.log.plot = 1, 0, False
    return cfg


def _finite_checkpoint(ckpt, tmp_path) -> bool:
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    dcp_to_torch_save(ckpt / "student", tmp_path / "flat.pt")
    state = torch.load(tmp_path / "flat.pt", weights_only=False)
    tensors = []

    def walk(x):
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            tensors.append(x)
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)

    walk(state)
    assert tensors, "the checkpoint holds no weights"
    return all(bool(t.isfinite().all()) for t in tensors)


def _rows(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_diverging_run_stops_at_the_first_nonfinite_loss(
    ray_local, tiny_dirs, prompts_file, tmp_path
):
    cfg = _diverging(tiny_dirs, prompts_file, tmp_path, "stop")
    out = tmp_path / "out"
    with pytest.raises(DivergedError, match=r"step (\d+): the loss is (nan|inf)") as err:
        run(cfg, out)
    step = int(re.search(r"step (\d+)", str(err.value)).group(1))
    newest = checkpoint.latest(out / "checkpoints")
    assert newest is not None and newest.name == f"step_{step - 1:06d}"
    assert f"the newest checkpoint, {newest}, holds the last finite weights" in str(err.value)
    assert _finite_checkpoint(newest, tmp_path)
    assert not (out / "student").exists()  # nothing exported
    assert [r["step"] for r in _rows(out) if "loss" in r][-1] == step  # the bad step is logged


def test_skip_mode_counts_skipped_updates_and_exports_finite_weights(
    ray_local, tiny_dirs, prompts_file, tmp_path
):
    from transformers import AutoModelForCausalLM

    cfg = _diverging(tiny_dirs, prompts_file, tmp_path, "skip")
    out = tmp_path / "out"
    run(cfg, out)
    train = [r for r in _rows(out) if "loss" in r]
    assert len(train) == cfg.trainer.steps
    skipped = [r for r in train if r["skipped"]]
    assert skipped and skipped[-1]["skipped_updates"] == len(skipped)
    assert _finite_checkpoint(checkpoint.latest(out / "checkpoints"), tmp_path)
    model = AutoModelForCausalLM.from_pretrained(out / "student")
    assert all(bool(p.isfinite().all()) for p in model.parameters())
