"""Overlapped dataflow: the rollout engine generates the next batch while the current one is
scored and trained, so a step takes about max(generate, score + train) instead of the sum.

The price is one update of staleness: the batch trained at update k was sampled by the
weights after update k - 1 (the importance ratio of `loss.objective=policy_gradient` corrects
for exactly this; the divergence objectives simply see slightly older samples). Calls to the
engine run in order, so the weight push of step k lands after the generation it must not
disturb and before the one that should use it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from tensordict import TensorDict

from ondistill.data import collate_prompts
from trainer.controller import Controller, timed


@dataclass
class Pending:
    """A batch on its way: sampled by the engine (on-policy) or read from the dataset."""

    result: Callable[[], TensorDict]
    on_policy: bool
    update: int  # the update it will be trained at
    weights_from: int  # the update the sampler's weights come from
    state_before: dict  # the controller's state before this batch was drawn


class OverlapController(Controller):
    def __post_init__(self) -> None:
        super().__post_init__()
        self.pending: Pending | None = None

    def _launch(self, update: int) -> Pending:
        """Draw the prompts of `update` and start its generation."""
        before = Controller.state(self)
        examples = self.prompts.next_examples(self.cfg.prompts_per_step)
        prompts = collate_prompts(examples, self.prompts.pad_id, self.prompts.teacher_pad_id)
        if self.rng.random() < self.cfg.on_policy_fraction:
            self.sync(self.sync_every)
            return Pending(self.rollout.submit(prompts, seed=self.cfg.seed * 1_000_003 + update),
                           True, update, self.synced, before)
        responses = [e.response_ids for e in examples]
        return Pending(lambda: self.dataset.generate(prompts, responses), False, update, update,
                       before)

    def step(self) -> dict[str, float]:
        timings: dict[str, float] = {}
        with timed(timings, "generate"):  # only the part not hidden behind the last step
            current = self.pending or self._launch(self.updates)
            batch = current.result()
        with timed(timings, "sync"):  # the next batch samples from the newest weights
            ahead = self.updates + 1 < self.cfg.steps
            self.pending = self._launch(self.updates + 1) if ahead else None
        with timed(timings, "score"):
            batch = self.teacher.score(batch)
        with timed(timings, "train"):
            metrics = self.student.train_step(batch)
        self.updates += 1
        step_time = sum(timings.values())
        return {**metrics, **timings, "on_policy": float(current.on_policy),
                "rollout_lag": float(current.update - current.weights_from),
                "tokens_per_s": metrics["response_tokens"] / step_time}

    def state(self) -> dict:
        """As of before the batch in flight was drawn: a resumed run draws it again (sampled by
        the checkpoint's weights, one update fresher than the uninterrupted run's)."""
        if self.pending is None:
            return Controller.state(self)
        return {**self.pending.state_before, "updates": self.updates}

    def load_state(self, state: dict) -> None:
        super().load_state(state)
        self.pending = None
