"""The SGLang teacher on a CUDA GPU (skipped elsewhere): its hidden states equal the hf
teacher's within bf16 tolerance, and handing them to a student on the same card (CUDA IPC out
of SGLang's scheduler, then to the student) gives what the copy through host memory gives;
tensor-parallel over two cards it scores as on one; a student's weights reach it by CUDA IPC.

SGLang pins its own transformers; where it is installed apart from the rest, point
ONDISTILL_SGLANG_PATH at that install: only the teacher's actor imports from there (the GPU
machines: see docs/benchmarks.md). Builds its own random Qwen3 pair and word-level tokenizer."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch
from tensordict import TensorDict

from ondistill import batch as B
from ondistill.config import LossConfig, Placement, StudentConfig, TeacherConfig
from tests.helpers import student_group, train_step
from workers.group import TeacherGroup

SGLANG_PATH = os.environ.get("ONDISTILL_SGLANG_PATH", "")
VOCAB = 1024
pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(
        importlib.util.find_spec("sglang") is None
        and not (SGLANG_PATH and (Path(SGLANG_PATH) / "sglang").is_dir()),
        reason="needs SGLang (installed, or at ONDISTILL_SGLANG_PATH)",
    ),
]
# FA3 and flashinfer's JIT may be absent: SGLang's triton attention and torch sampling run on
# any CUDA card
ENGINE = {"attention_backend": "triton", "sampling_backend": "pytorch", "grammar_backend": "none"}


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[str, str]:
    """(teacher_dir, student_dir): random bf16 Qwen3s (head_dim 128) sharing a tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, Qwen3Config

    root = tmp_path_factory.mktemp("sglang-gpu")
    vocab = {"<|endoftext|>": 0, **{f"t{i}": i for i in range(1, VOCAB)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )
    dirs = []
    for name, layers in (("teacher", 4), ("student", 2)):
        torch.manual_seed(len(dirs))
        cfg = Qwen3Config(
            vocab_size=VOCAB,
            hidden_size=512,
            intermediate_size=1024,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=128,
            max_position_embeddings=1024,
            tie_word_embeddings=False,
        )
        AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
        dirs.append(str(root / name))
    return dirs[0], dirs[1]


def rollout_batch(rows: int = 6) -> TensorDict:
    """Left-padded prompts of 3..9 tokens, right-padded responses of 1..40 tokens."""
    g = torch.Generator().manual_seed(0)
    prompt_lens, response_lens = [3, 9, 5, 7, 4, 9], [40, 1, 17, 33, 8, 25]
    p_mask = torch.zeros(rows, 9, dtype=torch.bool)
    r_mask = torch.zeros(rows, 40, dtype=torch.bool)
    for i in range(rows):
        p_mask[i, 9 - prompt_lens[i] :] = True
        r_mask[i, : response_lens[i]] = True
    return B.check(
        TensorDict(
            {
                B.PROMPT_IDS: torch.randint(1, VOCAB, (rows, 9), generator=g) * p_mask,
                B.PROMPT_MASK: p_mask,
                B.PROMPT_INDEX: torch.arange(rows),
                B.RESPONSE_IDS: torch.randint(1, VOCAB, (rows, 40), generator=g) * r_mask,
                B.RESPONSE_MASK: r_mask,
                B.ROLLOUT_LOGPROBS: torch.zeros(rows, 40),
            },
            batch_size=[rows],
        ),
        B.ROLLOUT,
        "test",
    )


def sglang_teacher(teacher_dir: str, tp_size: int = 1, gpus: float = 0.3) -> TeacherGroup:
    env = {"PYTHONPATH": f"{SGLANG_PATH}:{os.environ.get('PYTHONPATH', '')}"}
    cfg = TeacherConfig(
        dtype="bfloat16", gpu_memory_utilization=0.15, engine_args=ENGINE, tp_size=tp_size
    )
    return TeacherGroup(
        "sglang", teacher_dir, cfg, Placement(gpus=gpus, env=env if SGLANG_PATH else {})
    )


def test_hidden_states_equal_hf_within_bf16(ray_local, pair):
    sgl = sglang_teacher(pair[0])
    hf = TeacherGroup("hf", pair[0], TeacherConfig(dtype="bfloat16"), Placement(gpus=0.3))
    batch = rollout_batch()
    a, b = sgl.score(batch.clone()), hf.score(batch.clone())
    sgl.kill(), hf.kill()
    m = batch[B.RESPONSE_MASK]
    x, y = a[B.TEACHER_HIDDEN][m].float(), b[B.TEACHER_HIDDEN][m].float()
    assert x.shape == y.shape and y.abs().mean() > 0.1  # real activations, not padding
    # two bf16 engines (different kernels, reduction orders): seen 1.1% on an 8B shape
    assert (x - y).norm() / y.norm() < 0.03
    assert (a[B.TEACHER_HIDDEN][~m] == 0).all()  # padding positions stay empty


def test_hand_over_on_one_gpu_equals_the_host_copy(ray_local, pair):
    teacher = sglang_teacher(pair[0])
    student = student_group(
        StudentConfig(lr=1e-3, warmup_steps=0, threads=1, param_dtype="bfloat16"),
        LossConfig(),
        pair[1],
        pair[0],
        4,
        Placement(gpus=0.3),
    )
    assert teacher.share_gpu_with(student)
    by_value = teacher.score(rollout_batch())  # evaluation's path: always a host copy
    handed = teacher.score(rollout_batch(), hand_over=True)
    assert B.TEACHER_HIDDEN_IPC in handed.keys() and B.TEACHER_HIDDEN not in handed.keys()
    ipc, host = student.token_stats(handed), student.token_stats(by_value)
    # the same engine on the same batch: equal up to SGLang's run-to-run nondeterminism
    torch.testing.assert_close(
        ipc["teacher_logprob"], host["teacher_logprob"], rtol=1e-3, atol=1e-3
    )
    losses = [
        train_step(student, teacher.score(rollout_batch(), hand_over=True))["loss"]
        for _ in range(3)
    ]
    assert losses[-1] < losses[0]  # the student trains on handed-over hidden states
    teacher.kill(), student.kill()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_tensor_parallel_teacher_equals_one_card(ray_local, pair):
    """teacher.tp_size=2: one actor runs both SGLang ranks, on two whole cards or (shared
    cards, as beside a colocated student) on its share of one card and the next."""
    batch = rollout_batch()
    hidden = {}
    for name, tp, gpus in (("tp1", 1, 0.3), ("tp2 cards", 2, 1.0), ("tp2 shared", 2, 0.3)):
        teacher = sglang_teacher(pair[0], tp, gpus)
        hidden[name] = teacher.score(batch.clone())[B.TEACHER_HIDDEN].float()
        teacher.kill()
    m = batch[B.RESPONSE_MASK]
    one = hidden["tp1"][m]
    for name in ("tp2 cards", "tp2 shared"):
        # all-reduces in another order: bf16 rounding, as between two engines
        assert (hidden[name][m] - one).norm() / one.norm() < 0.03, name
        assert (hidden[name][~m] == 0).all()


def test_weight_update_through_cuda_ipc(ray_local, pair, tmp_path):
    """Self-distillation on one card: a student of the teacher's architecture pushes its
    weights into the SGLang teacher by CUDA IPC (student rank -> teacher actor -> SGLang's
    scheduler); the teacher then scores as an hf teacher loaded from those weights does."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(7)  # other weights, same architecture as the teacher
    other = AutoModelForCausalLM.from_pretrained(pair[0], dtype=torch.bfloat16)
    for p in other.parameters():
        if p.dim() > 1:  # matrices; the norms keep their ones
            p.data.normal_(0, 0.02)
    other.save_pretrained(tmp_path / "other")
    for f in Path(pair[0]).glob("tokenizer*"):
        (tmp_path / "other" / f.name).write_bytes(f.read_bytes())
    teacher = sglang_teacher(pair[0])
    student = student_group(
        StudentConfig(lr=1e-3, warmup_steps=0, threads=1, param_dtype="bfloat16"),
        LossConfig(),
        str(tmp_path / "other"),
        pair[0],
        4,
        Placement(gpus=0.3),
    )
    assert teacher.share_gpu_with(student)  # one card: the push goes by CUDA IPC
    batch = rollout_batch()
    before = teacher.score(batch.clone())[B.TEACHER_HIDDEN].float()
    assert student.push_teacher(teacher, ema=False) > 0
    after = teacher.score(batch.clone())[B.TEACHER_HIDDEN].float()
    teacher.kill(), student.kill()
    hf = TeacherGroup("hf", str(tmp_path / "other"), TeacherConfig(dtype="bfloat16"))
    want = hf.score(batch.clone())[B.TEACHER_HIDDEN].float()
    hf.kill()
    m = batch[B.RESPONSE_MASK]
    assert (after[m] - want[m]).norm() / want[m].norm() < 0.03
    assert (before[m] - want[m]).norm() / want[m].norm() > 0.5  # the update changed it
