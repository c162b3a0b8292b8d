"""Shared fixtures: real Ray, the real SmolLM2 tokenizer, and tiny random Llama models built
once per test run (a 4-layer 'teacher' and a 2-layer student derived from it)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CACHE = os.environ.get("ONDISTILL_CACHE", "~/.cache/ondistill")


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    from ondistill.models import resolve

    return resolve("builtin:smollm2-135m-instruct", CACHE)


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory, smollm2_dir) -> tuple[Path, Path]:
    """(teacher_dir, student_dir): random Llama models with SmolLM2's tokenizer. The teacher's
    weights are scaled up so its next-token distributions are far from uniform."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from ondistill.models import derive_student

    root = tmp_path_factory.mktemp("tiny")
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    # head_dim 64: vLLM's CPU attention supports only common head sizes.
    config = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=256,
                         num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=512, tie_word_embeddings=True,
                         initializer_range=0.1, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    teacher = LlamaForCausalLM(config)
    teacher.generation_config.eos_token_id = tok.eos_token_id
    teacher.generation_config.pad_token_id = tok.pad_token_id
    teacher_dir = root / "teacher"
    teacher.save_pretrained(teacher_dir)
    tok.save_pretrained(teacher_dir)
    student_dir = derive_student(teacher_dir, [0, 3], str(root / "cache"))
    return teacher_dir, student_dir


@pytest.fixture(scope="session")
def prompts_file(tmp_path_factory) -> Path:
    """40 prompts with short responses (responses make off-policy batches possible)."""
    path = tmp_path_factory.mktemp("data") / "prompts.jsonl"
    rows = [{"prompt": f"Say something about the number {i}.",
             "response": f"The number {i} comes after {i - 1}."} for i in range(40)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def ray_local():
    import ray

    from workers.group import init_ray

    init_ray(num_cpus=8)
    yield
    ray.shutdown()
