"""What tests drive the worker groups and the losses through, built from their public verbs:
the product trains on the parts its teachers score (StudentGroup.train_teachers) and on
chunked_loss's teacher sides; these wrap a batch held here into that shape."""

from __future__ import annotations

import ray
import torch
from tensordict import TensorDict

from ondistill import batch as B
from ondistill.heads import HeadSpec, OutputHead
from ondistill.losses import HiddenTeacher, ObjectiveSpec, chunked_loss


def student_group(cfg, loss, student_dir, teacher_dir, total_steps: int, *args, **kwargs):
    """A StudentGroup comparing with one teacher (named "teacher", as a run's one teacher is),
    compared by loss.cross_tokenizer."""
    from workers.group import StudentGroup

    teachers = {"teacher": (str(teacher_dir), loss.cross_tokenizer)}
    return StudentGroup(cfg, loss, str(student_dir), teachers, total_steps, *args, **kwargs)


def train_parts(
    student,
    parts: list,
    tokens: int,
    rows: int,
    objective: str | None = None,
    divergence: str | None = None,
    lr_scale: float = 1.0,
) -> dict[str, float]:
    """One update on `tokens` response tokens in `rows` rows from the one teacher, one part per
    rank: a scored TensorDict, or a Ray reference to one (TeacherGroup.score_parts)."""
    per_rank = [[B.TeacherPart(p, tokens, rows)] for p in parts]
    return student.train_teachers(per_rank, tokens, objective, divergence, lr_scale)


def train_step(
    student, batch: TensorDict, objective: str | None = None, divergence: str | None = None
) -> dict[str, float]:
    """One update on a scored batch held here, its rows split evenly over the ranks."""
    B.check_scored(batch, "student.train_step")
    tokens, rows = int(batch[B.RESPONSE_MASK].sum()), batch.batch_size[0]
    assert rows % student.world_size == 0, "tests give batches that split over the ranks"
    parts = list(batch.chunk(student.world_size))
    return train_parts(student, parts, tokens, rows, objective, divergence)


def full_state(student, ema: bool = False) -> dict[str, torch.Tensor]:
    """The student's full parameters (or their EMA) under HF names, here."""
    return ray.get([a.full_state.remote(ema) for a in student.actors])[0]


def chunked_kd_loss(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_head: OutputHead,
    weights: torch.Tensor,
    divergence: str = "reverse_kl",
    temperature: float = 1.0,
    chunk_size: int = 512,
    student_spec: HeadSpec | None = None,
) -> torch.Tensor:
    """The plain full-vocabulary divergence between hidden-state heads (chunked_loss)."""
    return chunked_loss(
        student_hidden,
        student_weight,
        HiddenTeacher(teacher_hidden, teacher_head),
        weights,
        ObjectiveSpec(divergence=divergence, temperature=temperature),
        chunk_size=chunk_size,
        student_spec=student_spec,
    )
