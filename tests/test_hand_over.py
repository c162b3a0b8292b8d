"""Teacher hidden states handed to the student on the GPU (CUDA IPC) give the same numbers as
the copy through host memory; without a shared GPU the hand-over falls back to that copy.

The GPU test builds its own random pair (no tokenizer needed), so it also runs on the lent GPU
machines, which have no model packages: `python -m pytest tests/test_hand_over.py`."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict

from ondistill import batch as B
from ondistill.config import LossConfig, Placement, StudentConfig, TeacherConfig
from tests.helpers import student_group, train_step
from workers.group import StudentGroup, TeacherGroup

VOCAB = 512


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[str, str]:
    """(teacher_dir, student_dir): random Llamas sharing a 512-token vocabulary."""
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("hand-over")
    dirs = []
    for name, layers in (("teacher", 3), ("student", 2)):
        torch.manual_seed(len(dirs))
        cfg = LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=layers,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=256,
            tie_word_embeddings=True,
            initializer_range=0.1,
        )
        LlamaForCausalLM(cfg).save_pretrained(root / name)
        dirs.append(str(root / name))
    return dirs[0], dirs[1]


def rollout_batch(rows: int = 4, prompt: int = 5, response: int = 7) -> TensorDict:
    g = torch.Generator().manual_seed(0)
    mask = torch.ones(rows, response, dtype=torch.bool)
    mask[1, 4:] = False  # one shorter response
    return B.check(
        TensorDict(
            {
                B.PROMPT_IDS: torch.randint(1, VOCAB, (rows, prompt), generator=g),
                B.PROMPT_MASK: torch.ones(rows, prompt, dtype=torch.bool),
                B.PROMPT_INDEX: torch.arange(rows),
                B.RESPONSE_IDS: torch.randint(1, VOCAB, (rows, response), generator=g),
                B.RESPONSE_MASK: mask,
                B.ROLLOUT_LOGPROBS: torch.zeros(rows, response),
            },
            batch_size=[rows],
        ),
        B.ROLLOUT,
        "test",
    )


def groups(pair, gpus: float) -> tuple[TeacherGroup, StudentGroup]:
    teacher_dir, student_dir = pair
    teacher = TeacherGroup("hf", teacher_dir, TeacherConfig(), Placement(gpus=gpus))
    student = student_group(
        StudentConfig(lr=1e-3, warmup_steps=0, threads=1),
        LossConfig(),
        student_dir,
        teacher_dir,
        4,
        Placement(gpus=gpus),
    )
    return teacher, student


@pytest.mark.skipif(torch.cuda.is_available(), reason="actors without GPUs still see it")
def test_without_a_shared_gpu_hidden_states_come_by_value(ray_local, pair):
    teacher, student = groups(pair, 0)
    assert not teacher.share_gpu_with(student)
    scored = teacher.score(rollout_batch(), hand_over=True)
    assert B.TEACHER_HIDDEN in scored.keys() and B.TEACHER_HIDDEN_IPC not in scored.keys()
    assert train_step(student, scored)["loss"] > 0
    teacher.kill(), student.kill()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_hand_over_on_one_gpu_equals_the_host_copy(ray_local, pair):
    teacher, student = groups(pair, 0.4)
    assert teacher.share_gpu_with(student)
    handed = teacher.score(rollout_batch(), hand_over=True)
    assert B.TEACHER_HIDDEN_IPC in handed.keys() and B.TEACHER_HIDDEN not in handed.keys()
    by_value = teacher.score(rollout_batch())  # evaluation's path: always a host copy
    assert B.TEACHER_HIDDEN in by_value.keys()
    # by_value's scoring released the teacher's handed-over tensor; score again so the
    # student maps live memory, as in a training step (score, then train at once)
    handed = teacher.score(rollout_batch(), hand_over=True)
    ipc, host = student.token_stats(handed), student.token_stats(by_value)
    for key in ("student_logprob", "teacher_logprob"):
        torch.testing.assert_close(ipc[key], host[key], rtol=1e-5, atol=1e-5)
    losses = [
        train_step(student, teacher.score(rollout_batch(), hand_over=True))["loss"]
        for _ in range(3)
    ]
    assert losses[-1] < losses[0]  # the student trains on handed-over hidden states
    teacher.kill(), student.kill()
