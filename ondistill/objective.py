"""What the student is trained to minimise, by name: the objectives, the divergences and the
cross-tokenizer methods the config accepts, and the frozen spec a train step computes.

A leaf module without torch, so the config schema names the choices and defaults without
importing the math. The math registers its implementations under these names
(ondistill/losses.py OBJECTIVES, ondistill/divergences/ DIVERGENCES) and refuses any other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum, auto


class ObjectiveName(StrEnum):
    divergence = auto()
    policy_gradient = auto()  # MiniLLM-style on-policy RKL
    sft = auto()  # ce_coef x cross-entropy only: plain fine-tuning, the baseline


class DivergenceName(StrEnum):  # each one file in ondistill/divergences/
    forward_kl = auto()
    reverse_kl = auto()
    jsd = auto()
    tvd = auto()
    skew_forward_kl = auto()
    skew_reverse_kl = auto()
    adaptive_kl = auto()


class CrossTokenizer(StrEnum):
    """A teacher with another tokenizer (ondistill/xtok/)."""

    none = auto()  # same tokenizer required
    exact = auto()  # divergence on the shared vocabulary + tail at aligned positions
    uld = auto()  # sorted probabilities, any vocabularies
    span = auto()  # chunk likelihoods, spans merged


@dataclass(frozen=True)
class DivergenceParams:
    beta: float = 0.5  # generalized JSD: 0 -> forward KL, 1 -> reverse KL
    alpha: float = 0.1  # skew KLs: weight of the skewing distribution
    mu: float = 0.5  # adaptive KL: teacher mass that counts as the head


@dataclass(frozen=True)
class ObjectiveSpec:
    """What to compute per token. `extras` keys used: targets, rollout_logprobs, advantages.
    These defaults are the config's (LossConfig reads them from here)."""

    objective: str = "divergence"  # an ObjectiveName
    divergence: str = "reverse_kl"  # a DivergenceName
    params: DivergenceParams = field(default_factory=DivergenceParams)
    temperature: float = 1.0
    ce_coef: float = 0.0
    pg_clip: float = 0.2
