"""The training schedule: trainer.stages resolved against the run's settings, once, on the
driver. Each update belongs to one stage, which sets its batches' on-policy fraction, its
objective and divergence, and a learning-rate scale.
"""

from __future__ import annotations

from dataclasses import dataclass

from ondistill.config import Config, ConfigError, LossConfig, StageConfig, TrainerConfig


@dataclass(frozen=True)
class Stage:
    """A resolved stage: every field set."""

    name: str
    first: int  # index of its first update
    steps: int
    on_policy_fraction: float
    divergence: str
    objective: str
    lr_scale: float = 1.0


def schedule(cfg: Config) -> list[Stage]:
    """trainer.stages resolved against the run's settings; ConfigError names a bad stage.
    Stage boundaries are the cumulative shares of trainer.steps, rounded."""
    tr = cfg.trainer
    given = tr.stages or [StageConfig("train")]
    stages, first, total_share = [], 0, 0.0
    for i, s in enumerate(given):
        key = f"trainer.stages[{i}]"
        if s.share is None and i != len(given) - 1:
            raise ConfigError(
                f"{key} has no share; give every stage but the last a share of "
                f"trainer.steps (e.g. {key}.share=0.5)."
            )
        total_share += 1 - total_share if s.share is None else s.share
        if (s.share is not None and not 0 < s.share <= 1) or total_share > 1 + 1e-9:
            raise ConfigError(
                f"{key}.share={s.share}: each share must be in (0, 1] and all "
                "shares together at most 1."
            )
        fraction = tr.on_policy_fraction if s.on_policy_fraction is None else s.on_policy_fraction
        divergence = cfg.loss.divergence if s.divergence is None else s.divergence
        objective = cfg.loss.objective if s.objective is None else s.objective
        if objective == "policy_gradient" and fraction < 1:
            raise ConfigError(
                f"{key} trains loss.objective=policy_gradient, which needs "
                f"on-policy batches only, but its on_policy_fraction={fraction}; "
                "set it to 1 or give the stage objective=divergence."
            )
        end = tr.steps if i == len(given) - 1 else round(total_share * tr.steps)  # last: to the end
        stages.append(
            Stage(
                s.name or f"stage{i}",
                first,
                end - first,
                fraction,
                divergence,
                objective,
                s.lr_scale,
            )
        )
        first = end
    _check_shadowed(cfg, given)
    return stages


def _check_shadowed(cfg: Config, given: list[StageConfig]) -> None:
    """A run-wide setting that every stage replaces would be ignored without a word: refuse
    it when it differs from its default (someone set it, expecting an effect)."""
    for section, field_name, default in (
        ("trainer", "on_policy_fraction", TrainerConfig.on_policy_fraction),
        ("loss", "divergence", LossConfig.divergence),
        ("loss", "objective", LossConfig.objective),
    ):
        key, value = f"{section}.{field_name}", getattr(getattr(cfg, section), field_name)
        if value != default and all(getattr(s, field_name) is not None for s in given):
            raise ConfigError(
                f"{key}={value} has no effect: every stage of trainer.stages sets its own "
                f"{field_name}; set it per stage (e.g. trainer.stages.{len(given) - 1}."
                f"{field_name}={value}), or trainer.stages=[] for one stage that uses {key}."
            )


def stage_at(stages: list[Stage], update: int) -> Stage:
    """The stage that update number `update` (0-based) belongs to."""
    for stage in stages:
        if update < stage.first + stage.steps:
            return stage
    return stages[-1]
