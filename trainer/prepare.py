"""A run's preparation, in phases, cheapest first, before Ray or any engine starts: the
settings (config, output directory, resume, data rows), then the models (converted or cut
only once the settings passed), then the prompts. Bad input stops in one sentence here."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ondistill.config import Config, ConfigError
from ondistill.config_checks import validate
from ondistill.data import PromptSet
from ondistill.model_files import derive_student, resolve
from ondistill.stages import schedule
from trainer.preflight import check_resume, check_tokenizers
from trainer.teachers import TeacherSpec, other_tokenizer, routing_of, teacher_specs


def prepare(cfg: Config, out_dir: Path | None = None) -> tuple[list[TeacherSpec], Path, PromptSet]:
    """Everything that can fail on bad input, cheapest first, before Ray or any engine starts:
    the settings, then the models (converted or cut only once the settings, the output
    directory and the data rows passed), then the prompts. Returns the teachers (models
    resolved), the student's directory and the prompts."""
    rows = _check_settings(cfg, out_dir)
    teachers, student_dir, tokenizer = _resolve_models(cfg)
    return teachers, student_dir, _read_prompts(cfg, rows, tokenizer, teachers)


def _check_settings(cfg: Config, out_dir: Path | None) -> tuple[list[tuple[str, dict]], int]:
    """The config, the output directory, the resume setting and the data rows (read, not yet
    tokenized); returns the rows."""
    from ondistill.data import read_rows

    validate(cfg)
    tr = cfg.trainer
    if (
        tr.prompts_per_step * cfg.rollout.n_samples
    ) % cfg.student.world_size or tr.prompts_per_step % cfg.student.world_size:
        raise ConfigError(
            f"trainer.prompts_per_step={tr.prompts_per_step} must be a multiple of "
            f"student.world_size={cfg.student.world_size} (rows split evenly over ranks)."
        )
    if out_dir is not None:
        from trainer import outdir

        outdir.check(out_dir, dataclasses.asdict(cfg), tr.resume)
    check_resume(tr.resume)
    return read_rows(cfg.data, routing_of(cfg))


def _resolve_models(cfg: Config) -> tuple[list[TeacherSpec], Path, Any]:
    """The student's directory (cut from model.student), every teacher's, and the student's
    tokenizer, checked against each teacher's."""
    student_dir = derive_student(
        resolve(cfg.model.student, cfg.model.cache_dir),
        list(cfg.model.student_keep_layers),
        cfg.model.cache_dir,
    )
    teachers = teacher_specs(cfg)
    self_distill = cfg.self_distill.mode != "none"  # the teacher starts as the student
    for t in teachers:
        t.model_dir = student_dir if self_distill else resolve(t.model, cfg.model.cache_dir)
        tokenizer, t.tokenizer = check_tokenizers(
            t.model_dir, student_dir, t.cross_tokenizer, t.key
        )
    outside = [t for t in cfg.rollout.stop_token_ids if not 0 <= t < len(tokenizer)]
    if outside:
        raise ConfigError(
            f"rollout.stop_token_ids has {outside}, outside the student's "
            f"vocabulary of {len(tokenizer)} tokens; give ids in 0..{len(tokenizer) - 1}."
        )
    return teachers, student_dir, tokenizer


def _read_prompts(
    cfg: Config,
    rows: tuple[list[tuple[str, dict]], int],
    tokenizer: Any,
    teachers: list[TeacherSpec],
) -> PromptSet:
    """The rows tokenized into the training and held-out prompts; off-policy stages need each
    row's response."""
    prompts = PromptSet(
        cfg.data,
        tokenizer,
        seed=cfg.trainer.seed,
        teacher_tokenizer=other_tokenizer(teachers),
        rows=rows,
        routing=routing_of(cfg),
    )
    off_policy = [s for s in schedule(cfg) if s.on_policy_fraction < 1 and s.steps]
    if off_policy:
        prompts.require_responses(
            f"stage {off_policy[0].name} (on_policy_fraction="
            f"{off_policy[0].on_policy_fraction}) asks for off-policy "
            "batches"
        )
    return prompts
