"""The checks of a Config that involve more than one key; each key's own choices and range
are declared with its field (ondistill/config.py) and walked by ondistill/rules.py.

`validate()` runs at the entry point, before any model is loaded, and raises ConfigError
with one sentence naming the key, the bad value and what to write instead.
"""

from __future__ import annotations

from ondistill.config import Config, ConfigError
from ondistill.rules import check_values
from ondistill.stages import schedule
from ondistill.teachers import validate_teachers


def validate(cfg: Config) -> Config:
    """Check every value that a dataclass type cannot; raise ConfigError naming the key."""
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
