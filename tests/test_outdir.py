"""An output directory that holds a run is continued only with that run's settings; resume=never
starts over there without leaving the old checkpoints where resume=auto would find them."""

import dataclasses
import json
import re

import pytest

from ondistill.config import Config, ConfigError
from trainer import checkpoint, outdir


def _saved_run(tmp_path, cfg: Config):
    out = tmp_path / "run"
    (out / "checkpoints" / "step_000004").mkdir(parents=True)
    (out / "checkpoints" / "step_000004" / "controller.json").write_text("{}")
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg)))
    return out


def test_same_settings_continue_and_operational_ones_may_differ(tmp_path):
    cfg = Config()
    out = _saved_run(tmp_path, cfg)
    cfg.trainer.max_restarts, cfg.student.threads, cfg.log.wandb = 5, 1, "disabled"
    outdir.check(out, dataclasses.asdict(cfg), "auto")  # no error


def test_operational_settings_of_each_listed_teacher_may_differ_and_its_model_not(tmp_path):
    from ondistill.config import NamedTeacher

    cfg = Config()
    cfg.teachers = [NamedTeacher("a"), NamedTeacher("b")]
    out = _saved_run(tmp_path, cfg)
    cfg.teachers[1].engine.threads, cfg.teachers[0].ray.cpus = 1, 2.0
    outdir.check(out, dataclasses.asdict(cfg), "auto")  # no error: how it runs, not what
    cfg.teachers[1].model = "/elsewhere"
    with pytest.raises(ConfigError, match=re.escape("teachers[1].model: ")):
        outdir.check(out, dataclasses.asdict(cfg), "auto")
    cfg.teachers[1].model = NamedTeacher().model
    cfg.teachers.append(NamedTeacher("c"))  # another teacher changes the math
    with pytest.raises(ConfigError, match=re.escape("teachers[2].cross_tokenizer: None -> 'none'")):
        outdir.check(out, dataclasses.asdict(cfg), "auto")


def test_other_settings_are_refused_with_the_keys_named(tmp_path):
    cfg = Config()
    out = _saved_run(tmp_path, cfg)
    old = cfg.student.lr
    cfg.student.lr, cfg.trainer.stages[0].share = old / 4, 0.25
    with pytest.raises(
        ConfigError,
        match=re.escape(
            "holds a run made with other settings "
            f"(student.lr: {old!r} -> {old / 4!r}; "
            "trainer.stages"
        ),
    ):
        outdir.check(out, dataclasses.asdict(cfg), "auto")
    outdir.check(out, dataclasses.asdict(cfg), "never")  # starting over is allowed


def test_start_over_moves_checkpoints_out_of_reach_of_auto(tmp_path):
    out = _saved_run(tmp_path, Config())
    assert checkpoint.latest(out / "checkpoints") is not None
    aside = outdir.start_over(out)
    assert aside is not None and (aside / "step_000004" / "controller.json").exists()
    assert checkpoint.latest(out / "checkpoints") is None
    assert outdir.start_over(out) is None  # nothing left to move


def test_reused_directory_is_refused_before_models(tmp_path, tiny_dirs):
    from trainer.prepare import prepare

    cfg = Config()
    cfg.model.teacher = "builtin:smollm2-135m-instruct"  # would convert into the cache
    cfg.model.cache_dir = str(tmp_path / "cache")
    out = _saved_run(tmp_path, cfg)
    cfg.loss.divergence = "jsd"
    cfg.trainer.stages = []
    with pytest.raises(ConfigError, match="loss.divergence: 'reverse_kl' -> 'jsd'"):
        prepare(cfg, out)
    assert not (tmp_path / "cache").exists()
