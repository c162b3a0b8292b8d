"""Several teachers (`teachers:` in the config): their checks, before any work starts.

Each teacher has a name, a model, a weight, a cross-tokenizer method and its own engine
section. `routing.mode=field` sends each row to the teacher its data row names (under
`routing.key`); `mixture` has every teacher score every row, and the loss is the sum of their
losses, each times its weight. With `teachers` empty the run has the one teacher of
model.teacher and the teacher: section, as before.
"""

from __future__ import annotations

from ondistill.config import (
    BUILTIN_TEACHER,
    Config,
    ConfigError,
    Placement,
    RoutingConfig,
    TeacherConfig,
)
from ondistill.config_checks import check_values, validate_teacher
from ondistill.xtok import METHODS


def validate_teachers(cfg: Config, objectives: set[str]) -> None:
    """The teacher settings of the run: the one teacher's, or every named teacher's."""
    if not cfg.teachers:
        if cfg.routing != RoutingConfig():
            raise ConfigError(
                f"routing.mode={cfg.routing.mode} routing.key={cfg.routing.key} has no effect "
                "with one teacher; list several under teachers, or leave routing unset."
            )
        validate_teacher(cfg, cfg.teacher, cfg.loss.cross_tokenizer, objectives)
        return
    if len(cfg.teachers) == 1:
        raise ConfigError(
            "teachers lists one teacher; give one teacher as model.teacher (and its teacher: "
            "section), or list two or more."
        )
    _refuse_shadowed(cfg)
    if cfg.ray.placement != "none":
        raise ConfigError(
            f"ray.placement={cfg.ray.placement} places one teacher's replicas; with several "
            "teachers set ray.placement=none (each asks for its teachers[i].ray)."
        )
    if not cfg.routing.key:
        raise ConfigError("routing.key is empty; name the rows' field (e.g. routing.key=teacher).")
    seen: set[str] = set()
    for i, t in enumerate(cfg.teachers):
        key = f"teachers[{i}]"
        if not t.name or "/" in t.name or t.name in seen:
            raise ConfigError(
                f"{key}.name={t.name!r}: give each teacher a distinct, non-empty name "
                "without '/' (it names its rows and its metrics, kl/<name>)."
            )
        seen.add(t.name)
        if not t.weight > 0:
            raise ConfigError(f"{key}.weight={t.weight} must be > 0 (teacher {t.name}).")
        if t.cross_tokenizer not in METHODS:
            raise ConfigError(
                f"{key}.cross_tokenizer={t.cross_tokenizer!r} is not valid; choose one of: "
                f"{', '.join(METHODS)}."
            )
        if t.engine.self_distill != "none":
            raise ConfigError(
                f"{key}.engine.self_distill={t.engine.self_distill}: self-distillation has "
                "one teacher, the student's copy; use teacher.self_distill without teachers."
            )
        check_values(t.engine, "teacher.", f"{key}.engine.")
        validate_teacher(
            cfg, t.engine, t.cross_tokenizer, objectives, f"{key}.engine", f"{key}.cross_tokenizer"
        )


def _refuse_shadowed(cfg: Config) -> None:
    """The one teacher's settings mean nothing beside `teachers`: refuse them when set, naming
    the per-teacher key, as config._check_shadowed does for stages."""
    for key, set_, instead in (
        ("model.teacher", cfg.model.teacher != BUILTIN_TEACHER, "teachers[i].model"),
        ("teacher", cfg.teacher != TeacherConfig(), "teachers[i].engine"),
        ("ray.teacher", cfg.ray.teacher != Placement(), "teachers[i].ray"),
        ("loss.cross_tokenizer", cfg.loss.cross_tokenizer != "none", "teachers[i].cross_tokenizer"),
    ):
        if set_:
            raise ConfigError(
                f"{key} is for the one teacher and has no effect with teachers; set "
                f"{instead} for each teacher instead."
            )
