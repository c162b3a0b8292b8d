"""The single controller: one step = [push weights] -> generate -> score -> train_step.

A new dataflow subclasses Controller and overrides `step()`, as trainer/overlap.py does.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from tensordict import TensorDict

from ondistill import batch as B
from ondistill.config import Stage, TrainerConfig, stage_at
from ondistill.data import PromptSet, collate_prompts, collate_responses


@contextmanager
def timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    timings[f"time/{stage}"] = time.perf_counter() - start


class DatasetRollout:
    """The degenerate rollout of off-policy KD: one dataset response per prompt (truncated to
    max_new_tokens). There is no rollout policy, so its logprobs are zeros."""

    def __init__(self, pad_id: int, max_new_tokens: int):
        self.pad_id, self.max_new_tokens = pad_id, max_new_tokens

    def generate(self, prompts: TensorDict, responses: list[list[int]]) -> TensorDict:
        td = collate_responses(prompts.clone(), responses, self.pad_id, self.max_new_tokens)
        td.set(B.ROLLOUT_LOGPROBS, torch.zeros(td[B.RESPONSE_IDS].shape))
        return B.check(td, B.ROLLOUT, "dataset rollout")


@dataclass
class Controller:
    cfg: TrainerConfig
    prompts: PromptSet
    rollout: object  # workers.group.RolloutGroup
    dataset: DatasetRollout
    teacher: object  # workers.group.TeacherGroup
    student: object  # workers.group.StudentGroup
    stages: list[Stage]  # config.schedule(): the on-policy share and objective per update
    sync_every: int = 1

    def __post_init__(self) -> None:
        self.rng = random.Random(self.cfg.seed)  # GKD's per-batch on/off-policy coin
        self.updates = 0
        self.synced = 0  # the update the rollout engine's weights come from

    def sync(self, lag: int = 1) -> None:
        """Push the student's weights to the rollout engine if they are `lag` or more updates
        ahead. Lazy, so off-policy steps (SeqKD, GKD's dataset batches) never pay for it."""
        if self.updates - self.synced >= lag:
            self.student.push_weights(self.rollout)
            self.synced = self.updates

    def state(self) -> dict:
        """Everything needed to continue exactly where this controller is (JSON-safe)."""
        return {
            "updates": self.updates,
            "rng": _jsonable(self.rng.getstate()),
            "data": self.prompts.state(),
        }

    def load_state(self, state: dict) -> None:
        self.updates = state["updates"]
        self.synced = self.updates  # the restoring session pushed the checkpoint's weights
        self.rng.setstate(_tupled(state["rng"]))
        self.prompts.load_state(state["data"])

    def draw(self, update: int) -> tuple[list, TensorDict, bool, int]:
        """The examples, collated prompts, on/off-policy coin and sampling seed of `update`.
        The seed is a function of the update, so a resumed run samples what the uninterrupted
        run would have."""
        examples = self.prompts.next_examples(self.cfg.prompts_per_step)
        prompts = collate_prompts(examples, self.prompts.pad_id, self.prompts.teacher_pad_id)
        on_policy = self.rng.random() < stage_at(self.stages, update).on_policy_fraction
        return examples, prompts, on_policy, self.cfg.seed * 1_000_003 + update

    def step(self) -> dict[str, float]:
        timings: dict[str, float] = {}
        examples, prompts, on_policy, seed = self.draw(self.updates)
        with timed(timings, "sync"):
            if on_policy:
                self.sync(self.sync_every)
        lag = self.updates - self.synced if on_policy else 0  # updates the sampler is behind
        with timed(timings, "generate"):
            if on_policy:
                batch = self.rollout.generate(prompts, seed=seed)
                self.rollout.sleep()  # on a shared GPU: room for the teacher and student
            else:
                batch = self.dataset.generate(prompts, [e.response_ids for e in examples])
        return self.score_and_train(batch, timings, on_policy, lag)

    def score_and_train(
        self, batch: TensorDict, timings: dict[str, float], on_policy: bool, lag: int
    ) -> dict[str, float]:
        """The rest of every step: teacher scores, student updates, the step's metrics."""
        with timed(timings, "score"):
            batch = self.teacher.score(batch, hand_over=True)
        stage = stage_at(self.stages, self.updates)
        with timed(timings, "train"):
            metrics = self.student.train_step(batch, stage.objective, stage.divergence)
        self.updates += 1
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
