"""What the GPU benchmarks share: Qwen3-shaped random models and their pairs, prompt files,
the card's matmul rate, a training step's FLOPs and a whole-card memory poller."""

from __future__ import annotations

import json
import math
import os
import random
import statistics
import subprocess
import threading
from pathlib import Path

VOCAB = 151_936
# Qwen3 shapes (head_dim 128 throughout); the small ones tie input and output embeddings.
QWEN3 = {
    "0.6b": dict(
        hidden_size=1024,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        intermediate_size=3072,
        tie_word_embeddings=True,
    ),
    "1.7b": dict(
        hidden_size=2048,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        intermediate_size=6144,
        tie_word_embeddings=True,
    ),
    "4b": dict(
        hidden_size=2560,
        num_hidden_layers=36,
        num_attention_heads=32,
        num_key_value_heads=8,
        intermediate_size=9728,
        tie_word_embeddings=True,
    ),
    "8b": dict(
        hidden_size=4096,
        num_hidden_layers=36,
        num_attention_heads=32,
        num_key_value_heads=8,
        intermediate_size=12288,
        tie_word_embeddings=False,
    ),
    "14b": dict(
        hidden_size=5120,
        num_hidden_layers=40,
        num_attention_heads=40,
        num_key_value_heads=8,
        intermediate_size=17408,
        tie_word_embeddings=False,
    ),
    "32b": dict(
        hidden_size=5120,
        num_hidden_layers=64,
        num_attention_heads=64,
        num_key_value_heads=8,
        intermediate_size=25600,
        tie_word_embeddings=False,
    ),
    # mixture of experts: 128 experts of width 768, 8 routed per token (~3B of ~30B active)
    "30b-a3b": dict(
        hidden_size=2048,
        num_hidden_layers=48,
        num_attention_heads=32,
        num_key_value_heads=4,
        intermediate_size=6144,
        moe_intermediate_size=768,
        num_experts=128,
        num_experts_per_tok=8,
        norm_topk_prob=True,
        tie_word_embeddings=False,
    ),
    # a toy shape to check this script end to end on a CPU
    "tiny": dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=128,
        tie_word_embeddings=True,
    ),
}
PAIRS = {
    "1.7b-8b": ("1.7b", "8b"),
    "1.7b-14b": ("1.7b", "14b"),
    "0.6b-4b": ("0.6b", "4b"),
    # the seed paper's pairs (KDFlow, 8 GPUs)
    "4b-14b": ("4b", "14b"),
    "4b-32b": ("4b", "32b"),
    "1.7b-32b": ("1.7b", "32b"),
    "tiny-tiny": ("tiny", "tiny"),
}


def save_tokenizer(path: Path) -> None:
    """Word-level tokenizer over the whole vocabulary: 'tN' is token N, so a prompt of k words
    is exactly k tokens and any sampled id decodes."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<|endoftext|>": 0, **{f"t{i}": i for i in range(1, VOCAB)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    ).save_pretrained(path)


def build_model(shape: str, path: Path, weights: bool = True) -> Path:
    """A random bf16 model of `shape` saved in HF format; weights=False saves only its config
    and tokenizer (engines then make random weights themselves: SGLang's load_format=dummy,
    transformers' from_config), for shapes whose weights would not fit the machine's disk."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen3Config, Qwen3MoeConfig

    if (path / "config.json").exists():
        return path
    config_cls = Qwen3MoeConfig if "num_experts" in QWEN3[shape] else Qwen3Config
    cfg = config_cls(
        vocab_size=VOCAB,
        head_dim=128,
        max_position_embeddings=40_960,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        **QWEN3[shape],
    )
    if not weights:
        cfg.architectures = [config_cls.__name__.replace("Config", "ForCausalLM")]
        tmp = path.with_name(path.name + ".tmp")
        cfg.save_pretrained(tmp)
        save_tokenizer(tmp)
        os.replace(tmp, path)
        return path
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    with torch.device(device):  # random init on the GPU: seconds instead of minutes
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    tmp = path.with_name(path.name + ".tmp")
    model.save_pretrained(tmp)
    save_tokenizer(tmp)
    os.replace(tmp, path)
    del model
    torch.cuda.empty_cache()  # this process stays up while the systems run: hand the card back
    return path


def natural_length(rng: random.Random, limit: int) -> int:
    """A response length as chat answers have them: log-normal with median limit / 4 and
    sigma 0.8 (a long right tail; ~6% reach the limit), clipped to [8, limit]."""
    return max(8, min(limit, round(rng.lognormvariate(math.log(limit / 4), 0.8))))


def write_prompts(
    path: Path, n: int, prompt_len: int, response_len: int, natural: bool = False
) -> Path:
    """n rows of prompt_len-token prompts with dataset responses of response_len tokens, or
    of natural lengths up to it."""
    rng = random.Random(0)
    words = lambda k: " ".join(f"t{rng.randrange(1, VOCAB)}" for _ in range(k))  # noqa: E731
    with path.open("w") as f:
        for _ in range(n):
            k = natural_length(rng, response_len) if natural else response_len
            f.write(json.dumps({"prompt": words(prompt_len), "response": words(k)}) + "\n")
    return path


def matmul_rate() -> float | None:
    """Measured bf16 dense matmul rate of this card (FLOP/s), 8192^3, median of 20."""
    import torch

    if not torch.cuda.is_available():
        return None
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(5):
        a @ b
    times = []
    for _ in range(20):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        a @ b
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e) / 1e3)
    return 2 * 8192**3 / statistics.median(times)


def train_flops(student: dict, teacher: dict, rows: int, prompt_len: int, new: int) -> float:
    """Matmul FLOPs of one training step: student forward+backward over every position
    (dense layers and causal attention), the student head (fwd+bwd) and the teacher head
    (fwd, recomputed from hidden states) over the response positions."""
    h, L, ffn = student["hidden_size"], student["num_hidden_layers"], student["intermediate_size"]
    q, kv = student["num_attention_heads"] * 128, student["num_key_value_heads"] * 128
    dense = L * (h * (q + 2 * kv) + q * h + 3 * h * ffn)  # weights touched per token
    seq = prompt_len + new
    attn = L * 2 * seq * seq * q  # QK^T and AV, causal half, per sequence, forward
    fwd = 2 * dense * rows * seq + attn * rows
    heads = (6 * h + 2 * teacher["hidden_size"]) * VOCAB * rows * new
    return 3 * fwd + heads


def gpu_used_gib() -> float:
    """Used memory of the busiest GPU now, from nvidia-smi (every process's, which a system of
    several processes needs)."""
    query = ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"]
    out = subprocess.run(query, capture_output=True, text=True, timeout=10).stdout
    return max(float(x) / 1024 for x in out.split())


class GpuMemory:
    """Peak of gpu_used_gib() over an interval, polled twice a second."""

    def __init__(self) -> None:
        self.peak, self._stop = 0.0, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.wait(0.5):
            try:
                self.peak = max(self.peak, gpu_used_gib())
            except (OSError, ValueError, subprocess.TimeoutExpired):
                return

    def __enter__(self) -> GpuMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
