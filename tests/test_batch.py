"""The batch schema: the teacher signal a scored batch carries, and the dataset rollout that
turns the dataset responses carried on the prompts into a rollout batch."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict

from ondistill import batch as B
from ondistill.data import Example, collate_prompts
from trainer.controller import DatasetRollout


def _rollout(rows: int = 4) -> TensorDict:
    td = TensorDict(
        {
            B.PROMPT_IDS: torch.ones(rows, 3, dtype=torch.long),
            B.PROMPT_MASK: torch.ones(rows, 3, dtype=torch.bool),
            B.PROMPT_INDEX: torch.arange(rows),
            B.RESPONSE_IDS: torch.ones(rows, 5, dtype=torch.long),
            B.RESPONSE_MASK: torch.ones(rows, 5, dtype=torch.bool),
            B.ROLLOUT_LOGPROBS: torch.zeros(rows, 5),
        },
        batch_size=[rows],
    )
    return B.check(td, B.ROLLOUT, "test")


def test_signal_travels_with_the_batch_and_its_parts():
    td = _rollout()
    td.set(B.TEACHER_TOPK_IDS, torch.zeros(4, 5, 2, dtype=torch.long))
    td.set(B.TEACHER_TOPK_LOGPROBS, torch.zeros(4, 5, 2))
    B.scored(td, B.Signal.TOPK, "test")
    # what the student ranks and micro-batches see
    parts = [*td.chunk(2), *td.split(3), td[torch.tensor([0, 3])], td.clone()]
    assert [B.signal_of(p) for p in parts] == [B.Signal.TOPK] * len(parts)
    assert B.teacher_keys(B.Signal.TOPK) == (B.TEACHER_TOPK_IDS, B.TEACHER_TOPK_LOGPROBS)


def test_a_signal_without_its_keys_or_a_batch_without_a_signal_is_refused():
    td = _rollout()
    with pytest.raises(B.BatchError, match="batch has no 'teacher_hidden'"):
        B.scored(td, B.Signal.HIDDEN, "teacher.score")
    with pytest.raises(B.BatchError, match="a teacher must score it"):
        B.check_scored(_rollout(), "student.train_step")


def test_dataset_rollout_reads_the_responses_carried_on_the_prompts():
    examples = [
        Example(prompt_ids=[5, 6], response_ids=[7, 8, 9, 10, 2], prompt="a"),
        Example(prompt_ids=[5], response_ids=[11, 2], prompt="b"),
    ]
    prompts = collate_prompts(examples, pad_id=0, responses=True)
    batch = DatasetRollout(max_new_tokens=4).generate(prompts, seed=3)
    assert batch[B.RESPONSE_IDS].tolist() == [[7, 8, 9, 10], [11, 2, 0, 0]]
    assert batch[B.RESPONSE_MASK].sum(1).tolist() == [4, 2]
    assert all(batch[k].is_contiguous() for k in B.ROLLOUT)  # Ray sends them zero-copy
    assert not set(B.DATASET_RESPONSES) & set(batch.keys())  # the rollout alone goes on
    assert float(batch[B.ROLLOUT_LOGPROBS].abs().sum()) == 0.0
    with pytest.raises(B.BatchError, match="dataset_response_ids"):
        DatasetRollout(4).generate(collate_prompts(examples, pad_id=0))
