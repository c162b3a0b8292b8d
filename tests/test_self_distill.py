"""Self-distillation: the teacher is a copy of the student (live, or the EMA of its weights)
pushed into the teacher engine, and a prompt only the teacher sees (`teacher_prompt`)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ondistill import batch as B
from ondistill.config import DataConfig, LossConfig, StudentConfig, TeacherConfig
from ondistill.data import PromptSet, collate_prompts, collate_responses
from tests.helpers import full_state, student_group, train_step
from tests.test_student import scored_batches
from workers.group import TeacherGroup


def close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)


def test_ema_follows_its_formula_and_survives_a_checkpoint(ray_local, tiny_dirs, tmp_path):
    teacher_dir, student_dir = tiny_dirs
    batches = scored_batches(teacher_dir, student_dir, 2)
    cfg = StudentConfig(world_size=2, lr=1e-2, warmup_steps=0, threads=1)
    student = student_group(cfg, LossConfig(), str(student_dir), str(teacher_dir), 4)
    student.track_ema(0.75)
    ema = full_state(student)  # starts at the weights
    for batch in batches:
        train_step(student, batch)
        now = full_state(student)
        ema = {n: 0.75 * e + 0.25 * now[n] for n, e in ema.items()}
        close(full_state(student, ema=True), ema)
    assert any((ema[n] - now[n]).abs().max() > 1e-4 for n in now)  # it lags the weights
    student.save(str(tmp_path))
    student.kill()
    again = student_group(cfg, LossConfig(), str(student_dir), str(teacher_dir), 4)
    again.track_ema(0.75)
    again.load(str(tmp_path))
    close(full_state(again, ema=True), ema)
    close(full_state(again), now)
    again.kill()


def hidden_of(student_dir, state: dict[str, torch.Tensor], batch) -> torch.Tensor:
    """What an HF model with these weights gives at the batch's response positions."""
    lm = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32)
    lm.load_state_dict(state, strict=False)  # a tied head has one name
    ids, mask, pos = B.full_sequence(batch)
    with torch.no_grad():
        out = lm.get_decoder()(input_ids=ids, attention_mask=mask, position_ids=pos)
    return out.last_hidden_state[:, B.response_positions(batch)]


@pytest.mark.parametrize("ema", [False, True])
def test_after_a_push_the_teacher_scores_with_the_students_weights(ray_local, tiny_dirs, ema):
    teacher_dir, student_dir = tiny_dirs
    batches = scored_batches(teacher_dir, student_dir, 2)
    student = student_group(
        StudentConfig(lr=1e-2, warmup_steps=0, threads=1), LossConfig(), str(student_dir),
        str(teacher_dir), 4,
    )  # fmt: skip
    if ema:
        student.track_ema(0.5)
    teacher = TeacherGroup("hf", str(student_dir), TeacherConfig(threads=1))  # the student's copy
    before = teacher.score(batches[1].clone())[B.TEACHER_HIDDEN]
    train_step(student, batches[0])
    assert student.push_teacher(teacher, ema) > 0
    after = teacher.score(batches[1].clone())[B.TEACHER_HIDDEN]
    expected = hidden_of(student_dir, full_state(student, ema), batches[1])
    m = batches[1][B.RESPONSE_MASK]
    assert (after[m] - before[m]).abs().max() > 1e-3
    torch.testing.assert_close(after[m], expected[m], rtol=1e-4, atol=1e-5)
    student.kill(), teacher.kill()


def test_a_teacher_prompt_changes_the_teachers_scores_not_the_students_inputs(
    ray_local, tiny_dirs, prompts_file
):
    teacher_dir, student_dir = tiny_dirs
    tok = AutoTokenizer.from_pretrained(student_dir)
    hinted = PromptSet(
        DataConfig(prompts=str(prompts_file), teacher_prompt="{prompt}\nHint: {response}"), tok
    )
    plain = PromptSet(DataConfig(prompts=str(prompts_file)), tok)
    ex_h, ex_p = hinted.train[:3], plain.train[:3]
    td_h = collate_prompts(ex_h, hinted.pad_id)
    td_p = collate_prompts(ex_p, plain.pad_id)
    hint = tok.decode(td_h[B.TEACHER_CONTEXT_IDS][0][td_h[B.TEACHER_CONTEXT_MASK][0]])
    assert "Hint: The number" in hint
    torch.testing.assert_close(td_h[B.PROMPT_IDS], td_p[B.PROMPT_IDS])  # the student's prompt
    responses = [e.response_ids for e in ex_h]
    for td in (td_h, td_p):
        collate_responses(td, responses, plain.pad_id, 16)
        td.set(B.ROLLOUT_LOGPROBS, torch.zeros(td[B.RESPONSE_IDS].shape))
    teacher = TeacherGroup("hf", str(teacher_dir), TeacherConfig(threads=1))
    a, b = teacher.score(td_h.clone()), teacher.score(td_p.clone())
    teacher.kill()
    m = td_h[B.RESPONSE_MASK]
    assert (a[B.TEACHER_HIDDEN][m] - b[B.TEACHER_HIDDEN][m]).abs().max() > 1e-2
    student = student_group(
        StudentConfig(threads=1), LossConfig(), str(student_dir), str(teacher_dir), 1
    )
    torch.testing.assert_close(
        student.token_stats(a)["student_logprob"], student.token_stats(b)["student_logprob"]
    )
    student.kill()


def test_self_distillation_run_with_an_ema_teacher_and_a_hint(
    ray_local, tiny_dirs, prompts_file, tmp_path
):
    from tests.test_run import tiny_config
    from trainer.run import run

    cfg = tiny_config(tiny_dirs, prompts_file, tmp_path, on_policy_fraction=0.5, steps=4)
    cfg.self_distill.mode, cfg.self_distill.ema_decay, cfg.self_distill.every = "ema", 0.5, 2
    cfg.data.teacher_prompt = "{prompt}\nA good answer: {response}"
    cfg.trainer.checkpoint_every, cfg.log.plot = 2, False
    out = tmp_path / "out"
    run(cfg, out)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "loss" in r]
    assert len(train) == 4
    assert [("time/teacher_sync" in r) for r in train] == [False, True, False, True]
    assert all(r["loss"] > 0 for r in train)
