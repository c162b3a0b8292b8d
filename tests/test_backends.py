"""Choosing engines and giving a role's actors an environment of their own."""

from __future__ import annotations

import os

import torch

from ondistill.config import Placement, TeacherConfig
from trainer.run import pick_teacher_backend


class Probe:
    def env(self, key: str) -> str | None:
        return os.environ.get(key)


def test_a_role_environment_reaches_its_actors_only(ray_local):
    import ray

    from workers.group import _remote

    mine = _remote(Probe, Placement(cpus=0.1, env={"ONDISTILL_PROBE": "teacher-only"})).remote()
    other = _remote(Probe, Placement(cpus=0.1)).remote()
    assert ray.get(mine.env.remote("ONDISTILL_PROBE")) == "teacher-only"
    assert ray.get(other.env.remote("ONDISTILL_PROBE")) is None
    # the job's own environment is kept beside it (workers/ray_env.init_ray)
    assert ray.get(mine.env.remote("TOKENIZERS_PARALLELISM")) == "false"
    ray.kill(mine), ray.kill(other)


def test_auto_teacher_backend(tmp_path):
    assert pick_teacher_backend(TeacherConfig(backend="hf"), {}) == "hf"
    assert pick_teacher_backend(TeacherConfig(backend="sglang"), {}) == "sglang"
    (tmp_path / "sglang").mkdir()  # an SGLang install only the teacher's actors see
    cfg = TeacherConfig()  # auto
    found = pick_teacher_backend(cfg, {"PYTHONPATH": str(tmp_path)})
    assert found == ("sglang" if torch.cuda.is_available() else "hf")
    cfg.tp_size = 2  # tensor-parallel teachers are served by hf
    assert pick_teacher_backend(cfg, {"PYTHONPATH": str(tmp_path)}) == "hf"
