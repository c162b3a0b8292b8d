"""Whole runs through the controller on tiny models: on-policy, off-policy and GKD mixing."""

import json

import pytest
import torch

from ondistill.config import Config
from trainer.run import run


def tiny_config(tiny_dirs, prompts_file, tmp_path, **run_overrides) -> Config:
    teacher_dir, student_dir = tiny_dirs
    cfg = Config()
    cfg.model.teacher, cfg.model.student = str(teacher_dir), str(student_dir)
    cfg.model.student_keep_layers = []
    cfg.model.cache_dir = str(tmp_path / "cache")
    cfg.data.prompts, cfg.data.eval_size = str(prompts_file), 4
    cfg.rollout.backend, cfg.rollout.max_new_tokens, cfg.rollout.threads = "hf", 12, 1
    if run_overrides.get("on_policy_fraction") == 1.0:
        cfg.rollout.backend = "vllm"  # the default engine where vLLM is installed
    cfg.teacher.threads = 1
    cfg.student.lr, cfg.student.warmup_steps, cfg.student.threads = 3e-3, 0, 1
    cfg.trainer.steps, cfg.trainer.prompts_per_step = 8, 4
    cfg.trainer.stages = []  # one stage: trainer.on_policy_fraction, loss.divergence
    cfg.log.wandb, cfg.log.progress = "disabled", False
    for key, value in run_overrides.items():
        setattr(cfg.trainer, key, value)
    return cfg


@pytest.mark.parametrize("fraction", [1.0, 0.0, 0.5])
def test_tiny_run_lowers_divergence(ray_local, tiny_dirs, prompts_file, tmp_path, fraction):
    cfg = tiny_config(tiny_dirs, prompts_file, tmp_path, on_policy_fraction=fraction)
    if fraction == 1.0:
        cfg.student.world_size = 2  # the default path, sharded
    out = tmp_path / "out"
    results = run(cfg, out)

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "loss" in r]
    assert len(train) == cfg.trainer.steps
    assert all(r["time/generate"] >= 0 and r["time/train"] > 0 for r in train)
    on_policy = [r["on_policy"] for r in train]
    assert (
        on_policy == [1.0] * 8
        if fraction == 1
        else (on_policy == [0.0] * 8 if fraction == 0 else 0 < sum(on_policy) < 8)
    )
    losses = [r["loss"] for r in train]
    assert sum(losses[-2:]) < sum(losses[:2]), losses
    metric = "eval/rkl_student_samples" if fraction else "eval/fkl_teacher_samples"
    assert results["after"][metric] < results["before"][metric], results
    assert (out / "curves.png").stat().st_size > 10_000

    from transformers import AutoModelForCausalLM

    saved = AutoModelForCausalLM.from_pretrained(out / "student")
    assert saved.config.num_hidden_layers == 2
    original = AutoModelForCausalLM.from_pretrained(tiny_dirs[1])
    assert not torch.equal(
        saved.model.layers[0].mlp.up_proj.weight, original.model.layers[0].mlp.up_proj.weight
    )


def test_overlapped_run_trains_on_one_update_stale_samples(
    ray_local, tiny_dirs, prompts_file, tmp_path
):
    """trainer.overlap: the next batch is generated while this one trains. On-policy batches
    after the first come from the weights one update back; checkpoints record the data
    position before the batch in flight, so a resume draws that batch again."""
    import random

    from trainer.controller import _jsonable
    from trainer.prepare import prepare

    cfg = tiny_config(
        tiny_dirs,
        prompts_file,
        tmp_path,
        on_policy_fraction=0.5,
        overlap=True,
        steps=6,
        checkpoint_every=2,
    )
    cfg.rollout.backend = "vllm"
    out = tmp_path / "out"
    results = run(cfg, out)

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "loss" in r]
    assert len(train) == 6 and 0 < sum(r["on_policy"] for r in train) < 6
    expected = [float(r["on_policy"] and i > 0) for i, r in enumerate(train)]
    assert [r["rollout_lag"] for r in train] == expected, train
    assert (
        results["after"]["eval/rkl_student_samples"] < results["before"]["eval/rkl_student_samples"]
    )

    state = json.loads((out / "checkpoints" / "step_000004" / "controller.json").read_text())
    _, _, prompts = prepare(cfg)
    coin = random.Random(cfg.trainer.seed)
    for _ in range(4):  # four batches consumed; the fifth, in flight, is not
        prompts.next_examples(cfg.trainer.prompts_per_step)
        coin.random()
    assert state["controller"]["updates"] == 4
    assert state["controller"]["data"] == json.loads(json.dumps(prompts.state()))
    assert state["controller"]["rng"] == _jsonable(coin.getstate())

    # Resumed from step 4 elsewhere: steps 5-6 draw the same batches (same coin flips) and the
    # first of them is sampled by the checkpoint's own weights.
    cfg.trainer.resume = str(out / "checkpoints" / "step_000004")
    run(cfg, tmp_path / "resumed")
    again = [
        json.loads(line)
        for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    ]
    again = [r for r in again if "loss" in r]
    assert [r["on_policy"] for r in again] == [r["on_policy"] for r in train]
    assert again[4]["rollout_lag"] == 0.0
    assert again[5]["rollout_lag"] == again[5]["on_policy"]


def test_two_stage_run_writes_samples_and_quality_summary(
    ray_local, tiny_dirs, prompts_file, tmp_path, capsys
):
    """The default schedule's shape (off-policy warm start, then on-policy) on tiny models: the
    stages follow their shares, every held-out answer lands in samples.jsonl, and the summary
    holds the answer metrics beside the teacher's own values."""
    from ondistill.config import StageConfig

    cfg = tiny_config(tiny_dirs, prompts_file, tmp_path, steps=5)
    cfg.rollout.backend = "vllm"
    cfg.trainer.stages = [StageConfig("warm", 0.4, 0.0, "forward_kl"), StageConfig("rest")]
    out = tmp_path / "out"
    results = run(cfg, out)

    train = [
        r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r
    ]
    assert [r["stage"] for r in train] == [0, 0, 1, 1, 1]
    assert [r["on_policy"] for r in train] == [0, 0, 1, 1, 1]
    samples = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in samples] == ["before"] * 4 + ["after"] * 4
    assert all(
        len(r["student_samples"]) == len(r["teacher_samples"]) == cfg.rollout.n_samples
        and isinstance(r["student_greedy"], str)
        and r["prompt"].startswith("Say ")
        for r in samples
    )
    for key in (
        "greedy_distinct_2",
        "sample_repeated_3gram_rate",
        "greedy_chrf",
        "sample_eos_share",
        "student_nll_teacher_samples",
    ):
        assert f"eval/{key}" in results["after"]
    assert 0 <= results["after"]["eval/greedy_chrf"] <= 100
    assert results["teacher"]["eval/greedy_distinct_2"] > 0
    printed = capsys.readouterr().out
    assert "greedy_distinct_2" in printed and "teacher" in printed
    assert f"prompt:  {samples[4]['prompt']}" in printed  # answers side by side


def test_collapsed_student_is_called_out(ray_local, tiny_dirs, prompts_file, tmp_path, capsys):
    """A silly learning rate wrecks the tiny student into repeating itself: the held-out KLs
    are still reported, but the summary says in plain words that the student collapsed."""
    cfg = tiny_config(tiny_dirs, prompts_file, tmp_path, steps=4)
    cfg.student.lr, cfg.student.grad_clip = 0.05, 0.0
    results = run(cfg, tmp_path / "out")
    after, teacher = results["after"], results["teacher"]
    assert after["eval/greedy_distinct_2"] < 0.6 * teacher["eval/greedy_distinct_2"], after
    assert "WARNING: the student looks collapsed" in capsys.readouterr().out


def test_one_teacher_spelled_either_way_trains_alike(ray_local, tiny_dirs, prompts_file, tmp_path):
    """model.teacher + teacher: and a one-entry teachers: list are the same run: one list of
    one teacher from the config on (ondistill/teachers.py teacher_list)."""
    from ondistill.config import NamedTeacher, TeacherConfig
    from ondistill.config_checks import validate

    losses = {}
    for spelling in ("model.teacher", "teachers"):
        cfg = tiny_config(tiny_dirs, prompts_file, tmp_path, steps=3, on_policy_fraction=0.5)
        cfg.data.eval_size, cfg.log.plot, cfg.trainer.save_student = 0, False, False
        cfg.trainer.checkpoint_every = -1
        if spelling == "teachers":
            cfg.teachers = [NamedTeacher("t", cfg.model.teacher, engine=cfg.teacher)]
            cfg.model.teacher, cfg.teacher = NamedTeacher().model, TeacherConfig()
        validate(cfg)
        out = tmp_path / spelling
        run(cfg, out)
        rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        losses[spelling] = [(r["loss"], r["kl"]) for r in rows if "loss" in r]
        assert not any("/" in k for r in rows for k in r if k.startswith(("loss", "kl")))
    assert len(losses["teachers"]) == 3
    assert losses["teachers"] == losses["model.teacher"]
