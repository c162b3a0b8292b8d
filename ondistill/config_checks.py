"""The checks of a Config that its dataclass types cannot make, and the tables they walk.

`validate()` runs at the entry point, before any model is loaded, and raises ConfigError
with one sentence naming the key, the bad value and what to write instead.
"""

from __future__ import annotations

from typing import Any

from ondistill.config import DTYPES, Config, ConfigError, TeacherConfig, schedule
from ondistill.divergences import DIVERGENCES
from ondistill.losses import OBJECTIVES
from ondistill.xtok import METHODS as CROSS_TOKENIZER_METHODS
from workers.engines import ROLLOUT_BACKENDS, TEACHER_BACKENDS

CHOICES: dict[str, tuple[str, ...]] = {
    "rollout.backend": ("auto", *ROLLOUT_BACKENDS),
    "teacher.backend": ("auto", *TEACHER_BACKENDS),
    "teacher.dtype": tuple(DTYPES),
    "student.schedule": ("cosine", "linear", "constant"),
    "student.param_dtype": ("float32", "bfloat16"),
    "loss.objective": tuple(OBJECTIVES),
    "loss.cross_tokenizer": CROSS_TOKENIZER_METHODS,
    "loss.divergence": tuple(DIVERGENCES),
    "loss.reduction": ("token", "sequence"),
    "data.bad_rows": ("error", "skip"),
    "log.wandb": ("offline", "online", "disabled"),
    "ray.placement": ("none", "colocated", "split"),
    "teacher.self_distill": ("none", "live", "ema"),
    "routing.mode": ("field", "mixture"),
}

# key -> (predicate, what the value must be)
_RANGES: dict[str, tuple[Any, str]] = {
    "rollout.temperature": (lambda v: v > 0, "> 0"),
    "rollout.top_p": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "rollout.n_samples": (lambda v: v >= 1, ">= 1"),
    "rollout.replicas": (lambda v: v >= 1, ">= 1"),
    "teacher.replicas": (lambda v: v >= 1, ">= 1"),
    "teacher.tp_size": (lambda v: v >= 1, ">= 1"),
    "teacher.self_every": (lambda v: v >= 1, ">= 1"),
    "teacher.ema_decay": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "rollout.max_new_tokens": (lambda v: v >= 1, ">= 1"),
    "rollout.sync_every": (lambda v: v >= 1, ">= 1"),
    "rollout.sleep_level": (lambda v: v in (1, 2), "1 or 2"),
    "student.world_size": (lambda v: v >= 1, ">= 1"),
    "student.lr": (lambda v: v > 0, "> 0"),
    "student.micro_batch_size": (lambda v: v >= 1, ">= 1"),
    "teacher.micro_batch_size": (lambda v: v >= 0, ">= 0 (0 scores the whole batch at once)"),
    "student.micro_batch_tokens": (lambda v: v >= 0, ">= 0 (0: micro-batches by rows)"),
    "teacher.micro_batch_tokens": (lambda v: v >= 0, ">= 0 (0: micro-batches by rows)"),
    "student.grad_clip": (lambda v: v >= 0, ">= 0 (0 disables clipping)"),
    "loss.temperature": (lambda v: v > 0, "> 0"),
    "loss.jsd_beta": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "loss.skew_alpha": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "loss.akl_mu": (lambda v: 0 < v < 1, "in (0, 1)"),
    "loss.ce_coef": (lambda v: v >= 0, ">= 0"),
    "loss.pg_discount": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "loss.pg_clip": (lambda v: v > 0, "> 0"),
    "teacher.topk": (lambda v: v >= 0, ">= 0 (0 sends hidden states)"),
    "loss.chunk_size": (lambda v: v >= 1, ">= 1"),
    "trainer.steps": (lambda v: v >= 0, ">= 0"),
    "trainer.prompts_per_step": (lambda v: v >= 1, ">= 1"),
    "trainer.on_policy_fraction": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "trainer.checkpoint_every": (lambda v: v >= -1, ">= 0, or -1 for no checkpoints"),
    "trainer.keep_checkpoints": (lambda v: v >= 1, ">= 1"),
    "trainer.max_restarts": (lambda v: v >= 0, ">= 0"),
    "data.eval_size": (lambda v: v >= 0, ">= 0"),
    "trainer.eval_every": (lambda v: v >= 0, ">= 0 (0: only before and after training)"),
    "student.warmup_steps": (lambda v: v >= 0, ">= 0"),
    "student.min_lr_ratio": (lambda v: 0 <= v <= 1, "in [0, 1] (a share of student.lr)"),
    "student.weight_decay": (lambda v: v >= 0, ">= 0"),
    "rollout.threads": (lambda v: v >= 1, ">= 1"),
    "teacher.threads": (lambda v: v >= 1, ">= 1"),
    "student.threads": (lambda v: v >= 1, ">= 1"),
    "rollout.max_model_len": (lambda v: v >= 2, ">= 2"),
    "rollout.gpu_memory_utilization": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "data.max_prompt_tokens": (lambda v: v >= 1, ">= 1"),
}


def _get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def check_values(root: Any, prefix: str = "", shown: str = "") -> None:
    """CHOICES and _RANGES of every key under `prefix` ("": all), read from `root` at the rest
    of the key and named `shown` + that rest in the error (a named teacher's engine section)."""
    named = [(k, v) for k, v in CHOICES.items() if k.startswith(prefix)]
    for key, allowed in named:
        value, key = _get(root, key[len(prefix) :]), shown + key[len(prefix) :]
        if value not in allowed:
            raise ConfigError(
                f"{key}={value!r} is not valid; choose one of: {', '.join(allowed)} "
                f"(e.g. {key}={allowed[0]})."
            )
    for key, (ok, must) in [(k, v) for k, v in _RANGES.items() if k.startswith(prefix)]:
        value, key = _get(root, key[len(prefix) :]), shown + key[len(prefix) :]
        if not ok(value):
            raise ConfigError(f"{key}={value!r} is out of range; it must be {must}.")


def validate(cfg: Config) -> Config:
    """Check every value that a dataclass type cannot; raise ConfigError naming the key."""
    from ondistill.teachers import validate_teachers  # it imports this module

    check_values(cfg)
    need = cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens
    if cfg.rollout.max_model_len < need:
        raise ConfigError(
            f"rollout.max_model_len={cfg.rollout.max_model_len} cannot hold a "
            f"prompt of data.max_prompt_tokens={cfg.data.max_prompt_tokens} plus "
            f"rollout.max_new_tokens={cfg.rollout.max_new_tokens}; set "
            f"rollout.max_model_len>={need}."
        )
    objectives = {s.objective for s in schedule(cfg)}  # the stages may differ
    validate_teachers(cfg, objectives)
    if "sft" in objectives and not cfg.loss.ce_coef:
        raise ConfigError(
            "loss.objective=sft trains on cross-entropy alone; set loss.ce_coef>0 "
            "(e.g. loss.ce_coef=1)."
        )
    if len(set(cfg.model.student_keep_layers)) != len(cfg.model.student_keep_layers):
        raise ConfigError(
            f"model.student_keep_layers={list(cfg.model.student_keep_layers)} "
            "repeats a layer; list each kept layer index once."
        )
    return cfg


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
    if t.self_distill != "none" and (t.tp_size > 1 or method != "none"):
        raise ConfigError(
            f"{key}.self_distill={t.self_distill} copies the student into one "
            f"teacher engine; set {key}.tp_size=1 and {method_key}=none."
        )
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
