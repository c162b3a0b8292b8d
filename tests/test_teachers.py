"""Several teachers: the config and data checks, routing each row to its teacher alone, and
the student's loss as the weighted sum of single-teacher losses (real Ray, HF teachers, one of
them of another tokenizer, and an FSDP2 student over gloo)."""

from __future__ import annotations

import json
import re

import pytest
import ray
import torch
from transformers import AutoTokenizer

from ondistill import batch as B
from ondistill.config import (
    Config,
    ConfigError,
    DataConfig,
    LossConfig,
    NamedTeacher,
    StudentConfig,
    TeacherConfig,
)
from ondistill.config_checks import validate
from ondistill.data import DataError, PromptSet, Routing, collate_prompts, read_rows
from tests.helpers import student_group, train_step
from trainer.controller import DatasetRollout

NAMES = ("llama", "gemma")


def two_teachers() -> Config:
    cfg = Config()
    cfg.teachers = [NamedTeacher("llama"), NamedTeacher("gemma", cross_tokenizer="exact")]
    return cfg


@pytest.mark.parametrize(
    "change,needle",
    [
        (
            lambda c: setattr(c.teachers[1], "name", "llama"),
            "teachers[1].name='llama': give each teacher a distinct, non-empty name",
        ),
        (
            lambda c: setattr(c.teachers[0], "weight", 0.0),
            "teachers[0].weight=0.0 is out of range; it must be > 0",
        ),
        (
            lambda c: setattr(c.teachers[1], "cross_tokenizer", "bpe"),
            "teachers[1].cross_tokenizer='bpe' is not valid",
        ),
        (
            lambda c: setattr(c.teachers[0].engine, "backend", "trt"),
            "teachers[0].engine.backend='trt' is not valid; choose one of: auto, hf, sglang",
        ),
        (
            lambda c: setattr(c.teachers[1].engine, "topk", 8),
            "teachers[1].cross_tokenizer=exact needs the teacher's hidden states; set "
            "teachers[1].engine.topk=0",
        ),
        (
            lambda c: setattr(c.self_distill, "mode", "ema"),
            "self_distill.mode=ema: self-distillation has one teacher",
        ),
        (
            lambda c: setattr(c.model, "teacher", "/models/big"),
            "model.teacher is for the one teacher and has no effect with teachers; set "
            "teachers[i].model",
        ),
        (
            lambda c: setattr(c.teacher, "threads", 1),
            "teacher is for the one teacher and has no effect with teachers; set "
            "teachers[i].engine",
        ),
        (lambda c: setattr(c.routing, "mode", "vote"), "routing.mode='vote' is not valid"),
        (lambda c: setattr(c.ray, "placement", "split"), "with several teachers set ray.placement"),
    ],
)
def test_bad_teacher_settings_are_refused_in_one_sentence(change, needle):
    cfg = two_teachers()
    validate(cfg)
    change(cfg)
    with pytest.raises(ConfigError, match=re.escape(needle)):
        validate(cfg)


def test_routing_without_teachers_is_refused():
    cfg = Config()
    cfg.routing.mode = "mixture"
    with pytest.raises(ConfigError, match="has no effect with one teacher"):
        validate(cfg)


def test_rows_must_name_a_teacher_of_the_run(tmp_path):
    path = tmp_path / "rows.jsonl"
    rows = [{"prompt": "a", "teacher": "llama"}, {"prompt": "b"}, {"prompt": "c", "teacher": "x"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    routing = Routing("teacher", NAMES)
    with pytest.raises(DataError, match=re.escape(f"{path}:2: has no 'teacher'; with routing")):
        read_rows(DataConfig(prompts=str(path)), routing)
    kept, skipped = read_rows(DataConfig(prompts=str(path), bad_rows="skip"), routing)
    assert [r["prompt"] for _, r in kept] == ["a"] and skipped == 2
    path.write_text(json.dumps(rows[2]) + "\n")
    with pytest.raises(DataError, match=re.escape("'teacher' is 'x', not a teacher of this run")):
        read_rows(DataConfig(prompts=str(path)), routing)


def test_shipped_routed_rows_name_the_recipes_teachers():
    cfg = DataConfig(prompts="builtin:multi_teacher")
    rows, skipped = read_rows(cfg, Routing("teacher", ("smol", "gemma")))
    assert len(rows) >= 100 and skipped == 0
    assert {r["teacher"] for _, r in rows} == {"smol", "gemma"}


@pytest.fixture(scope="module")
def routed_file(tmp_path_factory, prompts_file):
    """The shared tiny prompts, every third row for gemma, the rest for llama."""
    path = tmp_path_factory.mktemp("routed") / "rows.jsonl"
    rows = [json.loads(x) for x in prompts_file.read_text().splitlines()]
    path.write_text(
        "".join(json.dumps({**r, "teacher": NAMES[i % 3 == 0]}) + "\n" for i, r in enumerate(rows))
    )
    return path


@pytest.fixture(scope="module")
def setup(ray_local, tiny_dirs, tiny_gemma_teacher, routed_file):
    """A routed batch of 7 dataset rows, and the two teachers' engines behind a TeacherSet."""
    from ondistill.xtok.teacher import CrossTokenizerTeacher
    from ondistill.xtok.translate import Translator
    from trainer.teachers import Member
    from workers.group import TeacherGroup

    teacher_dir, student_dir = tiny_dirs
    s_tok, g_tok = (AutoTokenizer.from_pretrained(d) for d in (student_dir, tiny_gemma_teacher))
    ps = PromptSet(
        DataConfig(prompts=str(routed_file), eval_size=4),
        s_tok,
        teacher_tokenizer=g_tok,
        routing=Routing("teacher", NAMES),
    )
    prompts = collate_prompts(ps.train[:7], ps.pad_id, ps.teacher_pad_id, responses=True)
    batch = DatasetRollout(16).generate(prompts)
    assert batch[B.TEACHER_ROUTE].tolist() == [1, 0, 0, 1, 0, 0, 1]
    llama = TeacherGroup("hf", str(teacher_dir), TeacherConfig(threads=1))
    gemma = TeacherGroup("hf", str(tiny_gemma_teacher), TeacherConfig(threads=1))
    translator = Translator(s_tok, g_tok)
    members = [
        Member("llama", llama, llama, 2.0),
        Member("gemma", gemma, CrossTokenizerTeacher(gemma, translator), 0.5, translator),
    ]
    yield batch, members
    for m in members:
        m.scorer.kill()


def test_routing_sends_each_row_to_its_teacher_and_no_other(setup):
    from trainer.teachers import TeacherSet

    batch, members = setup
    per_rank = TeacherSet(members, mixture=False).score_parts(batch, 2)
    assert len(per_rank) == 2
    llama_alone = members[0].scorer.score(batch.clone())[B.TEACHER_HIDDEN]
    gemma_alone = members[1].scorer.score(batch.clone())[B.XT_HIDDEN]
    seen = []
    for parts in per_rank:
        for part in parts:
            # references from a teacher group, rows from the cross-tokenizer translation
            td = ray.get(part.batch) if isinstance(part.batch, ray.ObjectRef) else part.batch
            k = NAMES.index(part.teacher)
            assert (td[B.TEACHER_ROUTE] == k).all()  # its rows only
            rows = td[B.PROMPT_INDEX]
            seen += rows.tolist()
            assert part.rows == int((batch[B.TEACHER_ROUTE] == k).sum())
            if part.teacher == "llama":
                assert B.signal_of(td) is B.Signal.HIDDEN
                m = td[B.RESPONSE_MASK]
                torch.testing.assert_close(td[B.TEACHER_HIDDEN][m], llama_alone[rows][m])
            else:
                assert B.signal_of(td) is B.Signal.ALIGNED
                m = td[B.XT_RESPONSE_MASK]
                width = m.shape[1]
                torch.testing.assert_close(td[B.XT_HIDDEN][m], gemma_alone[rows][:, :width][m])
    assert sorted(seen) == list(range(7))  # every row once


@pytest.fixture(scope="module")
def students(setup, tiny_dirs, tiny_gemma_teacher):
    """A two-rank student holding both teachers' heads, and one plain single-teacher student
    per teacher; lr 0, so every step's loss is at the same (initial) weights."""
    from workers.group import StudentGroup

    teacher_dir, student_dir = tiny_dirs
    cfg = StudentConfig(lr=0.0, warmup_steps=0, threads=1, micro_batch_size=2)
    heads = {"llama": (str(teacher_dir), "none"), "gemma": (str(tiny_gemma_teacher), "exact")}
    multi = StudentGroup(
        StudentConfig(world_size=2, lr=0.0, warmup_steps=0, threads=1, micro_batch_size=2),
        LossConfig(),
        str(student_dir),
        heads,
        4,
    )
    llama = student_group(cfg, LossConfig(), str(student_dir), str(teacher_dir), 4)
    gemma = student_group(
        cfg, LossConfig(cross_tokenizer="exact"), str(student_dir), str(tiny_gemma_teacher), 4
    )
    yield multi, llama, gemma
    for s in (multi, llama, gemma):
        s.kill()


def _single(student, scorer, batch) -> dict[str, float]:
    return train_step(student, scorer.score(batch.clone()))


def test_mixture_loss_is_the_weighted_sum_of_single_teacher_losses(setup, students):
    from trainer.teachers import TeacherSet

    batch, members = setup
    multi, llama, gemma = students
    tokens = int(batch[B.RESPONSE_MASK].sum())
    mixed = multi.train_teachers(TeacherSet(members).score_parts(batch, 2), tokens)
    alone = {
        "llama": _single(llama, members[0].scorer, batch),
        "gemma": _single(gemma, members[1].scorer, batch),
    }
    for name in NAMES:
        assert mixed[f"loss/{name}"] == pytest.approx(alone[name]["loss"], rel=1e-4)
        assert mixed[f"kl/{name}"] == pytest.approx(alone[name]["kl"], rel=1e-4)
    assert alone["llama"]["loss"] != pytest.approx(alone["gemma"]["loss"], rel=1e-2)
    expected = 2.0 * alone["llama"]["loss"] + 0.5 * alone["gemma"]["loss"]
    assert mixed["loss"] == pytest.approx(expected, rel=1e-4)
    assert 0 < mixed["aligned_fraction/gemma"] <= 1


def test_routed_loss_adds_each_teachers_loss_on_its_own_rows(setup, students):
    from trainer.teachers import TeacherSet

    batch, members = setup
    multi, llama, gemma = students
    for m in members:
        m.weight = 1.0
    try:
        tokens = int(batch[B.RESPONSE_MASK].sum())
        routed = multi.train_teachers(TeacherSet(members, False).score_parts(batch, 2), tokens)
    finally:
        members[0].weight, members[1].weight = 2.0, 0.5
    total = 0.0
    for k, (name, student) in enumerate(zip(NAMES, (llama, gemma), strict=True)):
        rows = batch[batch[B.TEACHER_ROUTE] == k]
        alone = _single(student, members[k].scorer, rows)
        assert routed[f"loss/{name}"] == pytest.approx(alone["loss"], rel=1e-4)
        assert routed[f"kl/{name}"] == pytest.approx(alone["kl"], rel=1e-4)
        total += alone["loss"] * int(rows[B.RESPONSE_MASK].sum()) / tokens
    assert routed["loss"] == pytest.approx(total, rel=1e-4)  # the step's token mean
