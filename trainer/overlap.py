"""Overlapped dataflow: the rollout engine generates the next batch while the current one is
scored and trained, so a step takes about max(generate, score + train) instead of the sum.

The price is one update of staleness: the batch trained at update k was sampled by the
weights after update k - 1 (the importance ratio of `loss.objective=policy_gradient` corrects
for exactly this; the divergence objectives simply see slightly older samples). Calls to the
engine run in order, so the weight push of step k lands after the generation it must not
disturb and before the one that should use it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tensordict import TensorDict

from trainer.controller import Controller, timed


@dataclass
class Pending:
    """A batch on its way: sampled by the engine (on-policy) or read from the dataset."""

    result: Callable[[], TensorDict]
    on_policy: bool
    lag: int  # updates between the sampler's weights and the update it is trained at
    state_before: dict  # the controller's state before this batch was drawn


class OverlapController(Controller):
    def __post_init__(self) -> None:
        super().__post_init__()
        self.pending: Pending | None = None

    def _launch(self, update: int) -> Pending:
        """Draw the prompts of `update` and start its generation."""
        before = Controller.state(self)
        prompts, on_policy, seed = self.draw(update)
        if on_policy:
            self.sync(self.sync_every)
            return Pending(
                self.rollout.submit(prompts, seed=seed), True, update - self.synced, before
            )
        return Pending(lambda: self.dataset.generate(prompts), False, 0, before)

    def step(self) -> dict[str, float]:
        timings: dict[str, float] = {}
        with timed(timings, "generate"):  # only the part not hidden behind the last step
            current = self.pending or self._launch(self.updates)
            batch = current.result()
        with timed(timings, "sync"):  # the next batch samples from the newest weights
            ahead = self.updates + 1 < self.cfg.steps
            self.pending = self._launch(self.updates + 1) if ahead else None
        return self.score_and_train(batch, timings, current.on_policy, current.lag)

    def state(self) -> dict:
        """As of before the batch in flight was drawn: a resumed run draws it again (sampled by
        the checkpoint's weights, one update fresher than the uninterrupted run's)."""
        if self.pending is None:
            return Controller.state(self)
        return {**self.pending.state_before, "updates": self.updates}

    def load_state(self, state: dict) -> None:
        super().load_state(state)
        self.pending = None
