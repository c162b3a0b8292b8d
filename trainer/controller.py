"""The single controller: one step = [push weights] -> generate -> score -> train_step.

A new dataflow subclasses Controller and overrides `step()`, as trainer/overlap.py does.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch
from tensordict import TensorDict

from ondistill import batch as B
from ondistill.config import TrainerConfig, sampling_seed
from ondistill.data import PromptSet, collate_prompts
from ondistill.stages import Stage, stage_at

if TYPE_CHECKING:  # Ray stays out of the controller's imports
    from trainer.teachers import TeacherSet
    from workers.group import RolloutGroup, StudentGroup, TeacherGroup


@contextmanager
def timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    timings[f"time/{stage}"] = time.perf_counter() - start


class DatasetRollout:
    """The degenerate rollout of off-policy KD: each prompt's dataset response (carried on the
    prompts, B.DATASET_RESPONSES), truncated to max_new_tokens. It has no policy, so its
    logprobs are zeros; seed and greedy mean nothing to it."""

    def __init__(self, max_new_tokens: int):
        self.max_new_tokens = max_new_tokens

    def generate(
        self, prompts: TensorDict, seed: int | None = None, greedy: bool = False
    ) -> TensorDict:
        B.check(prompts, B.PROMPTS + B.DATASET_RESPONSES, "dataset rollout")
        width = max(1, min(self.max_new_tokens, int(prompts[B.DATASET_RESPONSE_MASK].sum(1).max())))
        td = prompts.exclude(*B.DATASET_RESPONSES)
        # contiguous: Ray sends such tensors to the teacher zero-copy (a column slice would be
        # copied anyway, with a warning on the console of every off-policy run)
        td.set(B.RESPONSE_IDS, prompts[B.DATASET_RESPONSE_IDS][:, :width].contiguous())
        td.set(B.RESPONSE_MASK, prompts[B.DATASET_RESPONSE_MASK][:, :width].contiguous())
        td.set(B.ROLLOUT_LOGPROBS, torch.zeros(td[B.RESPONSE_IDS].shape))
        return B.check(td, B.ROLLOUT, "dataset rollout")


class Generator(Protocol):
    def generate(
        self, prompts: TensorDict, seed: int | None = None, greedy: bool = False
    ) -> TensorDict: ...


@dataclass(frozen=True)
class Follower:
    """Self-distillation's teacher: the engine the student's weights (or, with ema, their
    moving average) go into every `every` updates."""

    group: TeacherGroup
    ema: bool
    every: int


@dataclass
class Controller:
    cfg: TrainerConfig
    prompts: PromptSet
    rollout: RolloutGroup
    dataset: DatasetRollout
    teacher: TeacherSet
    student: StudentGroup
    stages: list[Stage]  # config.schedule(): the on-policy share and objective per update
    sync_every: int = 1
    follower: Follower | None = None  # self-distillation's teacher

    def __post_init__(self) -> None:
        self.rng = random.Random(self.cfg.seed)  # GKD's per-batch on/off-policy coin
        self.updates = 0
        self.synced = 0  # the update the rollout engine's weights come from
        self.dropped = False  # the engine slept without its weights: the next sync pushes

    def sync(self, lag: int = 1) -> None:
        """Push the student's weights to the rollout engine if they are `lag` or more updates
        ahead. Lazy, so off-policy steps (SeqKD, GKD's dataset batches) never pay for it."""
        if self.dropped or self.updates - self.synced >= lag:
            self.student.push_weights(self.rollout)
            self.synced, self.dropped = self.updates, False

    def rest_rollout(self) -> None:
        """Put the rollout engine to sleep until it is next used, leaving the shared card to
        the teacher and student. With sync_every 1 every rollout follows a weight push, so the
        engine may drop its weights (vLLM at rollout.sleep_level 2: no host copy); the next
        sync() pushes them even where the update count alone would not (before the first
        update, after an evaluation)."""
        self.dropped = self.dropped or self.sync_every == 1
        self.rollout.sleep(drop_weights=self.dropped)

    def state(self) -> dict:
        """Everything needed to continue exactly where this controller is (JSON-safe)."""
        return {
            "updates": self.updates,
            "rng": _jsonable(self.rng.getstate()),
            "data": self.prompts.state(),
        }

    def load_state(self, state: dict) -> None:
        self.updates = state["updates"]
        # the restoring session pushed the checkpoint's weights
        self.synced, self.dropped = self.updates, False
        self.rng.setstate(_tupled(state["rng"]))
        self.prompts.load_state(state["data"])

    def draw(self, update: int) -> tuple[TensorDict, bool, int]:
        """The collated prompts (with their dataset responses when off-policy), on/off-policy
        coin and sampling seed of `update`."""
        examples = self.prompts.next_examples(self.cfg.prompts_per_step)
        on_policy = self.rng.random() < stage_at(self.stages, update).on_policy_fraction
        prompts = collate_prompts(
            examples, self.prompts.pad_id, self.prompts.teacher_pad_id, responses=not on_policy
        )
        return prompts, on_policy, sampling_seed(self.cfg.seed, update)

    def generator(self, on_policy: bool) -> Generator:
        return self.rollout if on_policy else self.dataset

    def step(self) -> dict[str, float]:
        timings: dict[str, float] = {}
        prompts, on_policy, seed = self.draw(self.updates)
        with timed(timings, "sync"):
            if on_policy:
                self.sync(self.sync_every)
        lag = self.updates - self.synced if on_policy else 0  # updates the sampler is behind
        with timed(timings, "generate"):
            batch = self.generator(on_policy).generate(prompts, seed=seed)
            if on_policy:
                self.rest_rollout()
        return self.score_and_train(batch, timings, on_policy, lag)

    def score_and_train(
        self, batch: TensorDict, timings: dict[str, float], on_policy: bool, lag: int
    ) -> dict[str, float]:
        """The rest of every step: the teachers score and the student updates, the scored rows
        going from the teacher replicas to the student ranks without passing through here
        (time/score: the longest a rank waited for them; time/train: the rest)."""
        stage = stage_at(self.stages, self.updates)
        tokens = int(batch[B.RESPONSE_MASK].sum())
        with timed(timings, "train"):
            parts = self.teacher.score_parts(
                batch, self.student.world_size, hand_over=True, by_tokens=self.student.by_tokens
            )
            metrics = self.student.train_teachers(
                parts, tokens, stage.objective, stage.divergence, stage.lr_scale
            )
        timings["time/score"] = metrics.pop("fetch_s")
        timings["time/train"] -= timings["time/score"]
        self.updates += 1
        if self.follower is not None and self.updates % self.follower.every == 0:
            with timed(timings, "teacher_sync"):
                self.student.push_teacher(self.follower.group, self.follower.ema)
        step_time = sum(timings.values())
        return {
            **metrics,
            **timings,
            "on_policy": float(on_policy),
            "rollout_lag": float(lag),
            "stage": float(self.stages.index(stage)),
            "tokens_per_s": metrics["response_tokens"] / step_time,
        }


def _jsonable(x):
    return [_jsonable(v) for v in x] if isinstance(x, (tuple, list)) else x


def _tupled(x):
    return tuple(_tupled(v) for v in x) if isinstance(x, list) else x
