"""Choosing engines and giving a role's actors an environment of their own."""

from __future__ import annotations

import os

import torch

from ondistill.config import Placement, TeacherConfig
from trainer.preflight import pick_teacher_backend
from workers.group import tp_engine_placement


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
    cfg.tp_size = 2  # SGLang runs tensor-parallel ranks itself
    assert pick_teacher_backend(cfg, {"PYTHONPATH": str(tmp_path)}) == found


def test_a_tensor_parallel_sglang_actor_asks_for_every_ranks_card():
    """One SGLang actor runs all teacher.tp_size ranks: what it asks Ray for."""
    noset = "RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES"
    whole = tp_engine_placement(Placement(gpus=1, env={"A": "1"}), 4)
    assert whole.gpus == 4 and whole.env == {"A": "1"}  # Ray shows it exactly its 4 cards
    shared = tp_engine_placement(Placement(gpus=0.3, env={"A": "1"}), 2)
    # a share of one card, seeing the node's cards (its ranks go there and on the next)
    assert shared.gpus == 0.3 and shared.env == {"A": "1", noset: "1"}
    assert tp_engine_placement(Placement(gpus=0.3), 1) == Placement(gpus=0.3)
    assert tp_engine_placement(Placement(), 2) == Placement()  # CPU: refused by the engine
