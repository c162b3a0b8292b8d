"""The run's teachers as the driver sees them: resolved from the config, started as one
TeacherGroup each (behind the cross-tokenizer translation where a teacher tokenizes its own
way), and, each step, which rows each one scores and what its loss weighs (TeacherSet).

One teacher (model.teacher and the teacher: section) and several (`teachers:`) are the same
list here, made in one place (teacher_specs): the one teacher is its one entry, named
"teacher", and scores every row; several score the rows their data rows name
(routing.mode=field) or all of them (mixture). ondistill/teachers.py checks the settings.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tensordict import TensorDict

from ondistill import batch as B
from ondistill.config import Config, ConfigError, Placement, TeacherConfig
from ondistill.data import PromptSet, Routing
from ondistill.teachers import teacher_list

if TYPE_CHECKING:
    from ondistill.xtok.teacher import Scorer
    from ondistill.xtok.translate import Translator
    from workers.group import StudentGroup, TeacherGroup
    from workers.placement import Layout


@dataclass
class TeacherSpec:
    """One teacher, resolved: where its model is and how the student is compared with it."""

    name: str  # teachers[i].name, or "teacher" for the one teacher of model.teacher
    label: str  # how logs and errors call it: "teacher", or "teacher <name>" among several
    model: str  # as given (model.teacher or teachers[i].model)
    engine: TeacherConfig
    place: Placement
    weight: float = 1.0
    cross_tokenizer: str = "none"
    key: str = "loss.cross_tokenizer"  # where cross_tokenizer is set, for error messages
    model_dir: Path = Path()  # resolved by trainer.prepare.prepare
    tokenizer: Any = None  # its tokenizer where it differs from the student's


def teacher_specs(cfg: Config) -> list[TeacherSpec]:
    """The run's teachers (ondistill/teachers.py teacher_list), their models not yet resolved."""
    listed = teacher_list(cfg)
    return [
        TeacherSpec(
            t.name,
            "teacher" if len(listed) == 1 else f"teacher {t.name}",
            t.model,
            t.engine,
            t.ray,
            t.weight,
            t.cross_tokenizer,
            f"teachers[{i}].cross_tokenizer" if cfg.teachers else "loss.cross_tokenizer",
        )  # fmt: skip
        for i, t in enumerate(listed)
    ]


def routing_of(cfg: Config) -> Routing | None:
    """How rows name their teacher, when they do (routing.mode=field with several teachers)."""
    if len(cfg.teachers) < 2 or cfg.routing.mode != "field":
        return None
    return Routing(cfg.routing.key, tuple(t.name for t in cfg.teachers))


def other_tokenizer(teachers: list[TeacherSpec]) -> Any:
    """The one tokenizer other than the student's among the teachers (prompts are rendered in
    its chat template too), or None. Rows carry one such rendering, so two teachers with two
    further tokenizers are refused."""
    others = [t for t in teachers if t.tokenizer is not None]
    for t in others[1:]:
        if t.tokenizer.get_vocab() != others[0].tokenizer.get_vocab():
            raise ConfigError(
                f"teachers {others[0].name} and {t.name} each tokenize differently from the "
                "student and from each other; at most one tokenizer besides the student's is "
                "supported: give one of them a teacher of the student's tokenizer."
            )
    return others[0].tokenizer if others else None


@dataclass
class Member:
    name: str
    group: TeacherGroup  # its engines
    scorer: Scorer  # the group, or the group behind the cross-tokenizer translation
    weight: float = 1.0
    translator: Translator | None = None  # a teacher of another tokenizer: the translation


class TeacherSet:
    """Which rows each teacher scores, and what its loss weighs in the step."""

    def __init__(self, members: list[Member], mixture: bool = True, reduction: str = "token"):
        """mixture: every member scores every row (else each row's B.TEACHER_ROUTE names its
        one); reduction: loss.reduction, which decides a routed teacher's share of the step."""
        self.members, self.mixture, self.reduction = members, mixture, reduction

    def score_parts(
        self, batch: TensorDict, ranks: int, hand_over: bool = False, by_tokens: bool = False
    ) -> list[list[B.TeacherPart]]:
        """The step's rows cut over the student ranks as one teacher's would be (evenly, or by
        tokens), then each rank's piece scored by its teachers: per rank, one part per teacher
        with rows there, holding a Ray reference the rank fetches itself. hand_over and
        by_tokens as in TeacherGroup.score_parts."""
        if not self.mixture:
            B.check(batch, (B.TEACHER_ROUTE,), "teacher routing")
        pieces = B.balance_rows(batch, ranks) if by_tokens else B.split_rows(batch, ranks)
        out: list[list[B.TeacherPart]] = [[] for _ in pieces]
        tokens, rows = int(batch[B.RESPONSE_MASK].sum()), batch.batch_size[0]
        for k, member in enumerate(self.members):
            mine = [p if self.mixture else p[p[B.TEACHER_ROUTE] == k] for p in pieces]
            have = [i for i, p in enumerate(mine) if p.batch_size[0]]
            if not have:
                continue
            t_k = sum(int(mine[i][B.RESPONSE_MASK].sum()) for i in have)
            r_k = sum(mine[i].batch_size[0] for i in have)
            # routed: its mean times its share of the step, so the parts add up to the step's
            share = (
                1.0 if self.mixture else (t_k / tokens if self.reduction == "token" else r_k / rows)
            )
            refs = member.scorer.score_pieces([mine[i] for i in have], hand_over)
            for i, ref in zip(have, refs, strict=True):
                out[i].append(B.TeacherPart(ref, t_k, r_k, member.name, member.weight * share))
        return out

    def kill(self) -> None:
        for member in self.members:
            member.scorer.kill()


def start_teachers(
    cfg: Config, teachers: list[TeacherSpec], prompts: PromptSet, layout: Layout
) -> TeacherSet:
    """One TeacherGroup per teacher (a one-teacher run's takes the placement's slots)."""
    from ondistill.xtok.teacher import CrossTokenizerTeacher
    from ondistill.xtok.translate import Translator
    from workers.group import TeacherGroup

    members = []
    for t in teachers:
        slots = layout.teacher if len(teachers) == 1 else None
        group = TeacherGroup(t.engine.backend, str(t.model_dir), t.engine, t.place, slots)
        member = Member(t.name, group, group, t.weight)
        if t.tokenizer is not None:  # cross-tokenizer: the teacher reads text
            member.translator = Translator(prompts.tokenizer, t.tokenizer)
            member.scorer = CrossTokenizerTeacher(group, member.translator)
        members.append(member)
    return TeacherSet(members, routing_of(cfg) is None, cfg.loss.reduction)


def student_teachers(teachers: list[TeacherSpec]) -> dict[str, tuple[str, str]]:
    """What the student needs of its teachers (StudentGroup's `teachers`)."""
    return {t.name: (str(t.model_dir), t.cross_tokenizer) for t in teachers}


class HeadView:
    """The student as one teacher's evaluator sees it: its stats against that teacher."""

    def __init__(self, student: StudentGroup, teacher: str):
        self.student, self.teacher = student, teacher

    def token_stats(self, batch: TensorDict, divergences: tuple[str, ...] = ()):
        return self.student.token_stats(batch, divergences, self.teacher)

    def xtok_stats(self, batch: TensorDict):
        return self.student.xtok_stats(batch, self.teacher)


def start_evaluators(
    cfg: Config,
    teachers: list[TeacherSpec],
    members: TeacherSet,
    prompts: PromptSet,
    rollout: Any,
    student: StudentGroup,
) -> Any:
    """Held-out evaluation: the one teacher's Evaluator, or PerTeacher over one per teacher,
    each on the held-out rows routed to it (all of them in a mixture)."""
    from trainer.evaluate import Evaluator, PerTeacher
    from trainer.xtok_evaluate import CrossTokenizerEvaluator
    from workers.group import RolloutGroup

    evaluators = {}
    for k, (t, member) in enumerate(zip(teachers, members.members, strict=True)):
        view = copy.copy(prompts)
        if not members.mixture:
            view.eval = [e for e in prompts.eval if e.route == k]
            if not view.eval:
                print(f"[ondistill] teacher {t.name}: no held-out rows name it; not evaluated")
                continue
        # The teacher's own samples, drawn once by a short-lived engine that asks for
        # nothing, so it never waits for the resources the long-lived roles hold.
        one = dataclasses.replace(cfg.rollout, replicas=1)
        sampler = RolloutGroup("hf", str(t.model_dir), one, Placement(cpus=0))
        on = HeadView(student, t.name)
        args = (view, cfg.trainer.prompts_per_step, rollout, member.scorer, on, sampler)
        if member.translator is None:
            evaluators[t.name] = Evaluator(*args)
        else:
            evaluators[t.name] = CrossTokenizerEvaluator(*args, member.translator)
        sampler.kill()
    if len(teachers) == 1:  # its metrics keep their plain names (eval/kl, ...)
        return evaluators[teachers[0].name]
    return PerTeacher(evaluators)
