"""Data-parallel engines: rollout replicas sample what one engine samples and all take the
student's weights; teacher replicas score what one teacher scores, and the scored rows go
from them to the student ranks without passing through the driver."""

from __future__ import annotations

import pytest
import ray
import torch
from tensordict import TensorDict

from ondistill import batch as B
from ondistill.config import (
    Config,
    ConfigError,
    LossConfig,
    Placement,
    RayConfig,
    RolloutConfig,
    StudentConfig,
    TeacherConfig,
)
from ondistill.data import Example, collate_prompts
from tests.helpers import student_group, train_parts, train_step
from workers.group import RolloutGroup, TeacherGroup
from workers.placement import plan, reserve

PROMPTS = [Example([1, 10 + i, 11, 12][: 2 + i % 3], None) for i in range(5)]


def _masked(td: TensorDict) -> list[list[int]]:
    return [ids[m].tolist() for ids, m in zip(td[B.RESPONSE_IDS], td[B.RESPONSE_MASK], strict=True)]


def test_vllm_replicas_sample_what_one_engine_samples_and_all_get_the_weights(ray_local, tiny_dirs):
    teacher_dir, student_dir = tiny_dirs
    cfg = RolloutConfig(n_samples=2, max_new_tokens=10, threads=1, replicas=2)
    rollout = RolloutGroup("vllm", str(student_dir), cfg)
    prompts = collate_prompts(PROMPTS, 2)  # 5 prompts: 3 to one replica, 2 to the other
    split = rollout.generate(prompts, seed=11)
    whole = ray.get(rollout.actors[1].generate.remote(prompts, 11, False))  # one engine, all
    assert split[B.PROMPT_INDEX].tolist() == whole[B.PROMPT_INDEX].tolist()
    assert _masked(split) == _masked(whole)
    m = split[B.RESPONSE_MASK]
    assert int(m.sum()) > 20
    torch.testing.assert_close(
        split[B.ROLLOUT_LOGPROBS][m], whole[B.ROLLOUT_LOGPROBS][m], rtol=1e-5, atol=1e-4
    )

    student = student_group(
        StudentConfig(lr=1e-2, warmup_steps=0, threads=1), LossConfig(), str(student_dir),
        str(teacher_dir), 2,
    )  # fmt: skip
    teacher = TeacherGroup("hf", str(teacher_dir), TeacherConfig(threads=1))
    train_step(student, teacher.score(split))  # the engines' weights are now stale
    student.push_weights(rollout)
    after = rollout.generate(prompts, seed=11)
    ours = student.token_stats(after)["student_logprob"]
    # rows 0-5 were sampled by replica 0, rows 6-9 by replica 1: both must match the student
    rows = after[B.RESPONSE_MASK].sum(1).tolist()
    theirs = after[B.ROLLOUT_LOGPROBS][after[B.RESPONSE_MASK]]
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4)
    assert sum(rows[:6]) > 0 and sum(rows[6:]) > 0
    assert after[B.ROLLOUT_REPLICA].tolist() == [0] * 6 + [1] * 4

    # Run-time consistency: the train step measures each replica against the student. Both
    # got this push; then only replica 0 gets the next one, and replica 1's drift shows.
    synced = train_step(student, teacher.score(after))
    assert synced["rollout_k3/r0"] < 1e-6 and synced["rollout_k3/r1"] < 1e-6
    assert abs(synced["rollout_log_ratio/r1"]) < 1e-3
    ray.get([a.push_weights.remote(rollout.actors[:1]) for a in student.actors])
    stale = train_step(student, teacher.score(rollout.generate(prompts, seed=12)))
    assert stale["rollout_k3/r0"] < 1e-6
    assert stale["rollout_k3/r1"] > 1e-4  # two updates at lr 1e-2 behind
    assert stale["rollout_k3_max"] == stale["rollout_k3/r1"]
    rollout.kill(), student.kill(), teacher.kill()


def test_teacher_replicas_feed_the_student_ranks_directly(ray_local, tiny_dirs, monkeypatch):
    teacher_dir, student_dir = tiny_dirs
    rollout = RolloutGroup("hf", str(student_dir), RolloutConfig(n_samples=2, max_new_tokens=8))
    batch = rollout.generate(collate_prompts(PROMPTS[:4], 2), seed=3)  # 8 rows
    rollout.kill()
    # colocated: teacher replica i and student rank i share placement-group bundle i
    cfg = Config(
        teacher=TeacherConfig(threads=1, replicas=2),
        student=StudentConfig(world_size=2, lr=1e-2, warmup_steps=0, threads=1),
        ray=RayConfig(placement="colocated"),
    )
    layout = reserve(cfg)
    assert layout.bundles == [["student 0", "rollout 0", "teacher 0"], ["student 1", "teacher 1"]]
    one = TeacherGroup("hf", str(teacher_dir), TeacherConfig(threads=1))
    two = TeacherGroup("hf", str(teacher_dir), cfg.teacher, slots=layout.teacher)
    expected = one.score(batch.clone())[B.TEACHER_HIDDEN]
    torch.testing.assert_close(two.score(batch.clone())[B.TEACHER_HIDDEN], expected)

    student = student_group(
        cfg.student, LossConfig(), str(student_dir), str(teacher_dir), 2, slots=layout.student
    )
    seen: list = []
    real_get = ray.get

    def spy(refs, *args, **kwargs):  # everything the driver receives from an actor
        out = real_get(refs, *args, **kwargs)
        seen.extend(out if isinstance(out, list) else [out])
        return out

    monkeypatch.setattr(ray, "get", spy)
    tokens, rows = int(batch[B.RESPONSE_MASK].sum()), batch.batch_size[0]
    parts = two.score_parts(batch, parts=2, hand_over=True)
    metrics = train_parts(student, parts, tokens, rows)
    monkeypatch.undo()
    assert seen and not any(isinstance(x, TensorDict) for x in seen), seen  # metrics only
    assert metrics["response_tokens"] == tokens and metrics["loss"] > 0
    # the same update from the gathered batch gives the same loss (a fresh student)
    again = student_group(
        StudentConfig(world_size=2, lr=1e-2, warmup_steps=0, threads=1), LossConfig(),
        str(student_dir), str(teacher_dir), 2,
    )  # fmt: skip
    gathered = one.score(batch.clone())
    half = train_parts(again, B.split_rows(gathered, 2), tokens, rows, lr_scale=0.5)
    assert half["loss"] == pytest.approx(metrics["loss"], rel=1e-5)
    assert half["lr"] == pytest.approx(0.5 * metrics["lr"])  # a stage's lr_scale applies
    for group in (one, two, student, again):
        group.kill()
    layout.release()


def test_placement_plans_sum_the_roles_and_refuse_what_cannot_sit_together():
    cfg = Config(
        rollout=RolloutConfig(replicas=2),
        teacher=TeacherConfig(replicas=1),
        student=StudentConfig(world_size=2),
        ray=RayConfig(
            placement="split",
            rollout=Placement(cpus=1, gpus=0.3),
            teacher=Placement(cpus=2, gpus=1),
            student=Placement(cpus=1, gpus=0.5, resources={"fast": 1}),
        ),
    )
    bundles, names = plan(cfg)
    assert names == [["student 0", "rollout 0"], ["student 1", "rollout 1"], ["teacher 0"]]
    assert bundles[0] == {"CPU": 2.0, "GPU": pytest.approx(0.8), "fast": 1.0}
    assert bundles[2] == {"CPU": 2.0, "GPU": 1.0}
    cfg.ray.placement, cfg.teacher.replicas = "colocated", 3
    with pytest.raises(ConfigError, match="teacher.replicas=3 > student.world_size=2"):
        plan(cfg)
