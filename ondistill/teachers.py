"""The teachers' settings (model.teacher and teacher:, or `teachers:`): their checks across
keys, before any work starts.

Each teacher has a name, a model, a weight, a cross-tokenizer method and its own engine
section. `routing.mode=field` sends each row to the teacher its data row names (under
`routing.key`); `mixture` has every teacher score every row, and the loss is the sum of their
losses, each times its weight. With `teachers` empty the run has the one teacher of
model.teacher and the teacher: section, as before; teacher_list() makes that the one entry of
the same list, so everything after the checks sees one shape.
"""

from __future__ import annotations

from ondistill.config import (
    BUILTIN_TEACHER,
    Config,
    ConfigError,
    NamedTeacher,
    Placement,
    RoutingConfig,
    TeacherConfig,
)


def teacher_list(cfg: Config) -> list[NamedTeacher]:
    """The run's teachers in the one shape every stage after the checks reads: `teachers:` as
    listed, or the one teacher of model.teacher, the teacher: section, ray.teacher and
    loss.cross_tokenizer as a one-entry list, named "teacher"."""
    if cfg.teachers:
        return list(cfg.teachers)
    one = NamedTeacher("teacher", cfg.model.teacher, 1.0, cfg.loss.cross_tokenizer)
    one.engine, one.ray = cfg.teacher, cfg.ray.teacher
    return [one]


def validate_teachers(cfg: Config, objectives: set[str]) -> None:
    """The teacher settings of the run: the one teacher's, or every listed teacher's."""
    if len(cfg.teachers) < 2 and cfg.routing != RoutingConfig():
        raise ConfigError(
            f"routing.mode={cfg.routing.mode} routing.key={cfg.routing.key} has no effect "
            "with one teacher; list several under teachers, or leave routing unset."
        )
    _validate_self_distill(cfg)
    if not cfg.teachers:
        validate_teacher(cfg, cfg.teacher, cfg.loss.cross_tokenizer, objectives)
        return
    _refuse_shadowed(cfg)
    if cfg.ray.placement != "none" and len(cfg.teachers) > 1:
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
        validate_teacher(
            cfg, t.engine, t.cross_tokenizer, objectives, f"{key}.engine", f"{key}.cross_tokenizer"
        )


def _validate_self_distill(cfg: Config) -> None:
    mode = cfg.self_distill.mode
    if mode == "none":
        return
    if cfg.teachers:
        raise ConfigError(
            f"self_distill.mode={mode}: self-distillation has one teacher, the student's copy; "
            "leave teachers empty."
        )
    if cfg.teacher.tp_size > 1 or cfg.loss.cross_tokenizer != "none":
        raise ConfigError(
            f"self_distill.mode={mode} copies the student into one teacher engine; set "
            "teacher.tp_size=1 and loss.cross_tokenizer=none."
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


def validate_teacher(
    cfg: Config,
    t: TeacherConfig,
    method: str,
    objectives: set[str],
    key: str = "teacher",
    method_key: str = "loss.cross_tokenizer",
) -> None:
    """The checks of one teacher's engine section `t` (named `key`) and its cross-tokenizer
    method (named `method_key`) against the run's objectives."""
    if t.topk and (objectives != {"divergence"} or cfg.loss.temperature != 1):
        raise ConfigError(
            f"{key}.topk>0 supports loss.objective=divergence at "
            f"loss.temperature=1 only; set {key}.topk=0 to send hidden states."
        )
    _validate_cross_tokenizer(cfg, t, method, objectives, key, method_key)
    if t.tp_size > 1 and cfg.ray.placement != "none":
        raise ConfigError(
            f"{key}.tp_size={t.tp_size} places each rank by ray.teacher alone; "
            "set ray.placement=none."
        )


def _validate_cross_tokenizer(
    cfg: Config, t: TeacherConfig, method: str, objectives: set[str], key: str, method_key: str
) -> None:
    if method == "none":
        return
    if "policy_gradient" in objectives:
        raise ConfigError(
            f"{method_key}={method} works with loss.objective=divergence "
            "(or sft); policy_gradient needs the teacher's log-prob of each "
            "student token, which another tokenizer does not give."
        )
    if t.topk:
        raise ConfigError(
            f"{method_key}={method} needs the teacher's hidden states; set {key}.topk=0."
        )
    if method == "span" and cfg.loss.temperature != 1:
        raise ConfigError(
            f"{method_key}=span compares chunk likelihoods at temperature "
            "1; set loss.temperature=1 or use exact/uld."
        )
