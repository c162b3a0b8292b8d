"""Bad input fails early with one sentence naming what is wrong and how to fix it."""

import json
import re
import subprocess
import sys

import pytest
from transformers import AutoTokenizer

from ondistill import batch as B
from ondistill.config import Config, ConfigError, DataConfig
from ondistill.config_checks import validate
from ondistill.data import DataError, PromptSet
from ondistill.model_files import resolve


@pytest.mark.parametrize(
    "key,value,needle",
    [
        (
            "rollout.backend",
            "bogus",
            "rollout.backend='bogus' is not valid; choose one of: auto, hf, vllm",
        ),
        ("loss.divergence", "l2", "loss.divergence='l2' is not valid"),
        ("rollout.temperature", 0.0, "rollout.temperature=0.0 is out of range; it must be > 0"),
        ("trainer.on_policy_fraction", 1.5, "trainer.on_policy_fraction=1.5 is out of range"),
        ("student.warmup_steps", -1, "student.warmup_steps=-1 is out of range; it must be >= 0"),
        (
            "student.min_lr_ratio",
            1.5,
            "student.min_lr_ratio=1.5 is out of range; it must be in [0, 1]",
        ),
        ("rollout.threads", 0, "rollout.threads=0 is out of range; it must be >= 1"),
        ("teacher.threads", -2, "teacher.threads=-2 is out of range"),
        ("student.threads", 0, "student.threads=0 is out of range"),
        ("student.micro_batch_tokens", -1, "student.micro_batch_tokens=-1 is out of range"),
        ("teacher.tp_size", 0, "teacher.tp_size=0 is out of range; it must be >= 1"),
        ("rollout.sleep_level", 3, "rollout.sleep_level=3 is out of range; it must be 1 or 2"),
        (
            "rollout.max_model_len",
            100,
            "rollout.max_model_len=100 cannot hold a prompt of "
            "data.max_prompt_tokens=128 plus rollout.max_new_tokens=48; "
            "set rollout.max_model_len>=176",
        ),
    ],
)
def test_bad_config_values(key, value, needle):
    cfg = Config()
    section, field = key.split(".")
    setattr(getattr(cfg, section), field, value)
    with pytest.raises(ConfigError, match=re.escape(needle)):
        validate(cfg)


@pytest.mark.parametrize("backend", ["hf", "sglang"])
def test_tensor_parallel_teacher_needs_no_placement_group(backend):
    cfg = Config()
    cfg.teacher.tp_size, cfg.teacher.backend = 2, backend
    validate(cfg)
    cfg.ray.placement = "split"
    with pytest.raises(ConfigError, match="set ray.placement=none"):
        validate(cfg)


def test_defaults_are_valid():
    validate(Config())


def test_missing_model_path(tmp_path):
    with pytest.raises(ConfigError, match="has no config.json; give a local Hugging Face model"):
        resolve(str(tmp_path / "nope"), str(tmp_path))
    with pytest.raises(ConfigError, match="unknown builtin model 'gpt5'"):
        resolve("builtin:gpt5", str(tmp_path))


@pytest.mark.parametrize(
    "line,needle",
    [
        ("{not json", "not valid JSON"),
        ('["a list"]', "is a JSON list, not an object"),
        ('{"prompt": ""}', "'prompt' is missing or empty"),
        ('{"text": "hi"}', "'prompt' is missing or empty"),
        ('{"prompt": "hi", "response": 3}', "'response' is a int"),
        (json.dumps({"prompt": "word " * 400}), "over data.max_prompt_tokens=128"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path, tiny_dirs, line, needle):
    tok = AutoTokenizer.from_pretrained(tiny_dirs[1])
    path = tmp_path / "p.jsonl"
    good = [json.dumps({"prompt": f"p{i}"}) for i in range(5)]
    path.write_text("\n".join(good[:2] + [line] + good[2:]) + "\n")
    with pytest.raises(DataError, match=f"p.jsonl:3: .*{needle}.*data.bad_rows=skip"):
        PromptSet(DataConfig(prompts=str(path), eval_size=1), tok)
    skipped = PromptSet(DataConfig(prompts=str(path), eval_size=1, bad_rows="skip"), tok)
    assert skipped.skipped == 1 and len(skipped.train) == 4 and len(skipped.eval) == 1


def test_off_policy_needs_responses(tmp_path, tiny_dirs):
    tok = AutoTokenizer.from_pretrained(tiny_dirs[1])
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"p{i}"}) + "\n" for i in range(5)))
    ps = PromptSet(DataConfig(prompts=str(path), eval_size=1), tok)
    with pytest.raises(DataError, match="4 of 4 training rows have no 'response'"):
        ps.require_responses("off-policy batches")


def test_batch_check_names_the_key():
    import torch
    from tensordict import TensorDict

    td = TensorDict({B.PROMPT_IDS: torch.zeros(2, 3, dtype=torch.long)}, batch_size=[2])
    with pytest.raises(B.BatchError, match="teacher.score: batch has no 'prompt_mask'"):
        B.check(td, B.ROLLOUT, "teacher.score")
    td.set(B.PROMPT_MASK, torch.zeros(2, 3))  # float, not bool
    with pytest.raises(B.BatchError, match="'prompt_mask' is torch.float32"):
        B.check(td, B.PROMPTS, "rollout.generate")


def _cli(*args, timeout=120, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "ondistill.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )


def test_cli_prints_config_and_rejects_bad_keys_before_work():
    shown = _cli("--cfg", "job", "recipe=gkd", "loss.chunk_size=64")
    assert shown.returncode == 0, shown.stderr
    assert "chunk_size: 64" in shown.stdout and "on_policy_fraction: 0.5" in shown.stdout
    unknown = _cli("rollout.temprature=0.5")
    assert unknown.returncode != 0 and "temprature" in unknown.stderr
    bad = _cli("rollout.backend=bogus", "model.teacher=/nonexistent")
    assert bad.returncode != 0
    # a choice is an enum of the schema: OmegaConf refuses it while composing the config
    assert "rollout.backend=bogus" in bad.stderr
    assert "Invalid value 'bogus', expected one of [auto, hf, vllm]" in bad.stderr
    missing = _cli("model.teacher=/nonexistent")
    assert "model path '/nonexistent' has no config.json" in missing.stderr


def _weightless_copy(src, dst):
    """A model directory with its config and tokenizer but no weights: anything that tries to
    load the model from it fails, so an error about it proves no model was loaded."""
    import shutil

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    return dst


def _tiny_cfg(tiny_dirs, tmp_path, prompts="builtin"):
    cfg = Config()
    cfg.model.teacher, cfg.model.student = str(tiny_dirs[0]), str(tiny_dirs[1])
    cfg.model.student_keep_layers, cfg.model.cache_dir = [], str(tmp_path / "cache")
    cfg.data.prompts = str(prompts)
    return cfg


def test_mismatched_tokenizers_are_refused_before_any_model_loads(tmp_path, tiny_dirs):
    from trainer.preflight import check_tokenizers
    from trainer.prepare import prepare

    other = _weightless_copy(tiny_dirs[1], tmp_path / "other-student")
    tok = AutoTokenizer.from_pretrained(other)
    tok.add_tokens(["<only-in-the-student>"])
    tok.save_pretrained(other)
    cfg = _tiny_cfg(tiny_dirs, tmp_path)
    cfg.model.teacher = str(_weightless_copy(tiny_dirs[0], tmp_path / "teacher"))
    cfg.model.student = str(other)
    with pytest.raises(
        ConfigError, match="tokenize differently; pick a student with the teacher's tokenizer"
    ):
        prepare(cfg)
    student_tok, teacher_tok = check_tokenizers(tiny_dirs[0], tiny_dirs[1])
    assert teacher_tok is None and len(student_tok) == len(tok) - 1  # the student's own
    with pytest.raises(
        ConfigError,
        match="loss.cross_tokenizer=exact is for a teacher with "
        "another tokenizer, but teacher and student share one",
    ):
        check_tokenizers(tiny_dirs[0], tiny_dirs[1], "exact")


@pytest.mark.parametrize(
    "content,needle",
    [
        (b"\xff\xfe\x00binary", "p.jsonl:3: not UTF-8 text (byte 0 of the line)"),
        (b'{"prompt": 42}', "p.jsonl:3: 'prompt' is a number, not a string"),
        (b'{"prompt": ["a"]}', "p.jsonl:3: 'prompt' is a list, not a string"),
    ],
)
def test_bad_bytes_and_types_name_the_line_and_can_be_skipped(tmp_path, tiny_dirs, content, needle):
    tok = AutoTokenizer.from_pretrained(tiny_dirs[1])
    path = tmp_path / "p.jsonl"
    good = [json.dumps({"prompt": f"p{i}"}).encode() for i in range(5)]
    path.write_bytes(b"\n".join(good[:2] + [content] + good[2:]) + b"\n")
    with pytest.raises(DataError, match=re.escape(needle)):
        PromptSet(DataConfig(prompts=str(path), eval_size=1), tok)
    skipped = PromptSet(DataConfig(prompts=str(path), eval_size=1, bad_rows="skip"), tok)
    assert skipped.skipped == 1 and len(skipped.train) + len(skipped.eval) == 5


def test_prompts_path_that_is_a_directory(tmp_path, tiny_dirs):
    tok = AutoTokenizer.from_pretrained(tiny_dirs[1])
    with pytest.raises(DataError, match="is a directory; give the path of a JSONL file"):
        PromptSet(DataConfig(prompts=str(tmp_path)), tok)


def test_data_errors_come_before_any_model_is_converted(tmp_path, tiny_dirs):
    """A builtin teacher on a cold cache takes 1-2 minutes to convert: bad data must stop the
    run first, with nothing written to the cache."""
    from trainer.prepare import prepare

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "fine"}\n{oops\n')
    cfg = _tiny_cfg(tiny_dirs, tmp_path, bad)
    cfg.model.teacher = "builtin:smollm2-135m-instruct"
    with pytest.raises(DataError, match="bad.jsonl:2: not valid JSON"):
        prepare(cfg)
    assert not (tmp_path / "cache").exists()


def test_malformed_model_config_is_one_sentence(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text('{"model_type": "llama", ')
    with pytest.raises(ConfigError, match="config.json is not valid JSON"):
        resolve(str(tmp_path / "m"), str(tmp_path))


def test_keep_layers_out_of_range_before_weights_load(tmp_path, tiny_dirs):
    from ondistill.model_files import derive_student

    source = _weightless_copy(tiny_dirs[0], tmp_path / "teacher")  # 4 layers, no weights
    with pytest.raises(
        ConfigError,
        match=r"student_keep_layers has \[99\], but the source "
        r"model has layers 0..3",
    ):
        derive_student(source, [0, 99], str(tmp_path / "cache"))


def test_output_dir_and_resume_are_checked_before_models(tmp_path, tiny_dirs):
    from trainer.prepare import prepare

    cfg = _tiny_cfg(tiny_dirs, tmp_path)
    cfg.model.teacher = "builtin:smollm2-135m-instruct"  # would convert into the cache
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    with pytest.raises(ConfigError, match="trainer.output_dir=.*taken is a file; give a directory"):
        prepare(cfg, a_file)
    cfg.trainer.resume = str(tmp_path / "nope" / "step_000004")
    with pytest.raises(ConfigError, match="trainer.resume=.* is not a complete checkpoint"):
        prepare(cfg, tmp_path / "out")
    assert not (tmp_path / "cache").exists()


def test_stop_token_outside_vocabulary(tmp_path, tiny_dirs):
    from trainer.prepare import prepare

    cfg = _tiny_cfg(tiny_dirs, tmp_path)
    cfg.rollout.stop_token_ids = [2, 10**6]
    with pytest.raises(
        ConfigError,
        match=r"rollout.stop_token_ids has \[1000000\], outside the "
        "student's vocabulary of 49152 tokens",
    ):
        prepare(cfg)


def test_unreachable_cluster_fails_fast_and_writes_nothing(tmp_path, tiny_dirs):
    import time

    out = tmp_path / "out"
    start = time.perf_counter()
    res = _cli(
        f"model.teacher={tiny_dirs[0]}",
        f"model.student={tiny_dirs[1]}",
        "model.student_keep_layers=[]",
        f"model.cache_dir={tmp_path}",
        "ray.address=127.0.0.1:1",
        f"trainer.output_dir={out}",
        cwd=tmp_path,
    )
    assert res.returncode != 0
    assert "ray.address=127.0.0.1:1: no Ray cluster answers there" in res.stderr
    assert time.perf_counter() - start < 90
    assert not out.exists()
    assert not (tmp_path / "runs").exists()  # Hydra's run directory is not left behind


def test_refused_run_leaves_no_run_directory(tmp_path):
    res = _cli("model.teacher=/nonexistent", cwd=tmp_path)
    assert res.returncode != 0 and "has no config.json" in res.stderr
    assert not (tmp_path / "runs").exists()


def test_stage_schedule_follows_shares_and_refuses_bad_stages():
    from ondistill.config import StageConfig
    from ondistill.stages import schedule, stage_at

    cfg = Config()
    cfg.trainer.steps = 7
    cfg.trainer.stages = [
        StageConfig("a", 0.3, 0.0, "forward_kl"),
        StageConfig("b", 0.3),
        StageConfig("c"),
    ]
    stages = schedule(cfg)
    assert [(s.name, s.first, s.steps) for s in stages] == [("a", 0, 2), ("b", 2, 2), ("c", 4, 3)]
    assert [stage_at(stages, u).name for u in range(7)] == list("aabbccc")
    assert stages[1].divergence == cfg.loss.divergence  # unset: the run's own setting
    cfg.trainer.stages = [StageConfig("a"), StageConfig("b")]
    with pytest.raises(ConfigError, match=re.escape("trainer.stages[0] has no share")):
        validate(cfg)
    cfg.trainer.stages = [StageConfig("a", 0.7), StageConfig("b", 0.7)]
    with pytest.raises(ConfigError, match=re.escape("all shares together at most 1")):
        validate(cfg)
    cfg.trainer.stages = [StageConfig("a", 0.5, divergence="l2"), StageConfig("b")]
    with pytest.raises(
        ConfigError, match=re.escape("trainer.stages[0].divergence='l2' is not valid")
    ):
        validate(cfg)
    cfg.trainer.stages = [StageConfig("a", 0.5, 0.0, objective="policy_gradient"), StageConfig("b")]
    with pytest.raises(
        ConfigError,
        match=re.escape(
            "trainer.stages[0] trains loss.objective=policy_gradient, which needs on-policy"
        ),
    ):
        validate(cfg)


def test_setting_that_every_stage_replaces_is_refused():
    from ondistill.config import StageConfig

    cfg = Config()
    cfg.trainer.stages = [
        StageConfig("a", 0.5, 0.0, "forward_kl"),
        StageConfig("b", None, 0.5, "forward_kl"),
    ]
    validate(cfg)
    cfg.loss.divergence = "jsd"
    with pytest.raises(
        ConfigError,
        match=re.escape(
            "loss.divergence=jsd has no effect: every stage of trainer.stages sets its own "
            "divergence; set it per stage (e.g. trainer.stages.1.divergence=jsd)"
        ),
    ):
        validate(cfg)


def test_schema_and_its_checks_import_no_torch_nor_higher_layers():
    code = (
        "import sys, ondistill.config, ondistill.config_checks, ondistill.stages; "
        "print(sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('torch', 'workers', 'trainer')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_registered_name_is_a_config_choice_and_back():
    from ondistill.config import RolloutBackend, TeacherBackend
    from ondistill.divergences import DIVERGENCES
    from ondistill.losses import OBJECTIVES
    from ondistill.objective import DivergenceName, ObjectiveName
    from workers.engines import ROLLOUT_BACKENDS, TEACHER_BACKENDS

    assert set(DIVERGENCES) == set(DivergenceName)
    assert set(OBJECTIVES) == set(ObjectiveName)
    assert {"auto", *ROLLOUT_BACKENDS} == set(RolloutBackend)
    assert {"auto", *TEACHER_BACKENDS} == set(TeacherBackend)


def test_a_named_teachers_section_is_checked_like_the_one_teachers():
    from ondistill.config import NamedTeacher

    cfg = Config()
    cfg.teachers = [NamedTeacher("a"), NamedTeacher("b")]
    cfg.teachers[1].engine.threads = 0
    with pytest.raises(
        ConfigError,
        match=re.escape("teachers[1].engine.threads=0 is out of range; it must be >= 1"),
    ):
        validate(cfg)
