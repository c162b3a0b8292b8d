"""Ragged batches: packed and column-trimmed forwards equal the padded one (hidden states and
gradients), token-budget micro-batches give the update of one big batch, and rows spread over
ranks by token count."""

from __future__ import annotations

import random

import pytest
import torch
from tensordict import TensorDict

from ondistill import batch as B
from ondistill.config import LossConfig, StudentConfig, TeacherConfig
from ondistill.packing import balance, even_out, forward_columns, forward_packed, micro_batches
from tests.helpers import student_group, train_parts
from workers.group import TeacherGroup

# prompts of 1-9 tokens, responses of 1-40: rows of very different lengths
PROMPT_LENS = [9, 1, 4, 7, 2, 9, 3, 5]
RESPONSE_LENS = [40, 3, 17, 1, 28, 9, 36, 2]


def ragged_batch(vocab: int, seed: int = 0) -> TensorDict:
    """Left-padded prompts and right-padded responses of PROMPT_LENS / RESPONSE_LENS."""
    g = torch.Generator().manual_seed(seed)
    rows, p, r = len(PROMPT_LENS), max(PROMPT_LENS), max(RESPONSE_LENS)
    prompt_mask = torch.arange(p)[None] >= p - torch.tensor(PROMPT_LENS)[:, None]
    response_mask = torch.arange(r)[None] < torch.tensor(RESPONSE_LENS)[:, None]
    return TensorDict(
        {
            B.PROMPT_IDS: torch.randint(1, vocab, (rows, p), generator=g) * prompt_mask,
            B.PROMPT_MASK: prompt_mask,
            B.RESPONSE_IDS: torch.randint(1, vocab, (rows, r), generator=g) * response_mask,
            B.RESPONSE_MASK: response_mask,
            B.ROLLOUT_LOGPROBS: torch.zeros(rows, r),
            B.PROMPT_INDEX: torch.arange(rows),
        },
        batch_size=[rows],
    )


def test_micro_batches_stay_within_the_budget_and_ranks_within_a_row_of_the_mean():
    rng = random.Random(0)
    lengths = [rng.randint(5, 300) for _ in range(57)]
    for packed in (True, False):
        bins = micro_batches(lengths, 600, packed)
        assert sorted(i for b in bins for i in b) == list(range(57))
        for b in bins:
            cost = sum(lengths[i] for i in b) if packed else len(b) * max(lengths[i] for i in b)
            assert cost <= 600
        assert len(bins) < 57  # rows were grouped
    assert micro_batches([700, 10], 600, True) == [[0], [1]]  # too long: a bin of its own
    parts = balance(lengths, 4)
    loads = [sum(lengths[i] for i in p) for p in parts]
    assert sorted(i for p in parts for i in p) == list(range(57))
    assert max(abs(x - sum(lengths) / 4) for x in loads) <= max(lengths)
    evened = even_out([[0, 1, 2], [3]], 4)
    assert len(evened) == 4 and sorted(i for b in evened for i in b) == [0, 1, 2, 3]
    assert even_out([[0]], 2) == [[0], []]  # too few rows: an empty micro-batch


def test_packed_and_trimmed_forwards_equal_the_padded_one(tiny_dirs):
    from transformers import AutoModelForCausalLM

    _, student_dir = tiny_dirs
    lm = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32)
    td = ragged_batch(lm.config.vocab_size)
    ids, mask, pos = B.full_sequence(td)
    span, keep = B.response_positions(td), td[B.RESPONSE_MASK]
    g = torch.Generator().manual_seed(1)
    probe = torch.randn(int(keep.sum()), lm.config.hidden_size, generator=g)

    def run(forward):
        lm.zero_grad()
        hidden = forward()[keep]
        (hidden * probe).sum().backward()
        return hidden.detach(), {n: p.grad.clone() for n, p in lm.named_parameters()}

    decoder = lm.get_decoder()
    padded = run(lambda: decoder(input_ids=ids, attention_mask=mask, position_ids=pos)[0][:, span])
    packed = run(lambda: forward_packed(decoder, ids, mask, span, pad_to=ids.numel()))
    torch.testing.assert_close(packed[0], padded[0], rtol=1e-4, atol=1e-5)
    for name, grad in padded[1].items():
        scale = float(grad.abs().max())  # float32 sums in another order: noise ~1e-6 of it
        torch.testing.assert_close(packed[1][name], grad, rtol=1e-4, atol=2e-6 * scale, msg=name)
    # rows with shorter prompts and answers than the batch's widest: fewer columns, same states
    rows = torch.tensor([1, 3, 7])
    with torch.no_grad():
        full = decoder(input_ids=ids, attention_mask=mask, position_ids=pos)[0][:, span]
        trimmed = forward_columns(decoder, ids[rows], mask[rows], pos[rows], span)
    assert trimmed.shape == full[rows].shape
    torch.testing.assert_close(trimmed[keep[rows]], full[rows][keep[rows]], rtol=1e-4, atol=1e-5)


def test_token_budget_packed_training_gives_the_big_batch_update(ray_local, tiny_dirs):
    teacher_dir, student_dir = tiny_dirs
    td = ragged_batch(49152)
    plain = TeacherGroup("hf", str(teacher_dir), TeacherConfig(threads=1))
    packed_teacher = TeacherGroup(
        "hf", str(teacher_dir), TeacherConfig(threads=1, micro_batch_tokens=64, packing=True)
    )
    scored = plain.score(td.clone())
    keep = td[B.RESPONSE_MASK]
    torch.testing.assert_close(
        packed_teacher.score(td.clone())[B.TEACHER_HIDDEN][keep],
        scored[B.TEACHER_HIDDEN][keep],
        rtol=1e-4,
        atol=1e-5,
    )
    tokens, rows = int(keep.sum()), td.batch_size[0]
    results = {}
    for name, cfg in {
        "one batch": StudentConfig(micro_batch_size=rows, lr=1e-2, warmup_steps=0, threads=1),
        "budget, packed, 2 ranks": StudentConfig(
            world_size=2, micro_batch_tokens=48, packing=True, lr=1e-2, warmup_steps=0, threads=1
        ),
        "budget, padded": StudentConfig(micro_batch_tokens=96, lr=1e-2, warmup_steps=0, threads=1),
    }.items():
        student = student_group(cfg, LossConfig(), str(student_dir), str(teacher_dir), 2)
        steps = []
        for _ in range(2):
            parts = packed_teacher.score_parts(td.clone(), cfg.world_size, by_tokens=True)
            steps.append(train_parts(student, parts, tokens, rows))
        results[name] = steps
        student.kill()
    base = results["one batch"]
    assert base[1]["loss"] < base[0]["loss"]
    for name, steps in results.items():
        for step, ref in zip(steps, base, strict=True):
            assert step["loss"] == pytest.approx(ref["loss"], rel=1e-4), name
            assert step["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-3), name
    plain.kill(), packed_teacher.kill()


def test_balanced_pieces_keep_every_row_once():
    td = ragged_batch(100)
    pieces = B.balance_rows(td, 3)
    seen = sorted(i for p in pieces for i in p[B.PROMPT_INDEX].tolist())
    assert seen == list(range(td.batch_size[0]))
    loads = [int(p[B.PROMPT_MASK].sum() + p[B.RESPONSE_MASK].sum()) for p in pieces]
    longest = max(a + b for a, b in zip(PROMPT_LENS, RESPONSE_LENS, strict=True))
    assert max(loads) - min(loads) <= longest
