"""What the benchmarks of ondistill's own vLLM rollout engine share (bench_sleep,
bench_vllm_settings): the engine on a random Qwen3 shape, random prompts, JSON results."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from gpu_models import build_model
from tensordict import TensorDict

from ondistill.config import RolloutConfig
from ondistill.data import Example, collate_prompts
from workers.rollout.vllm import VLLMRollout


class Results:
    """A benchmark's JSON, rewritten after every measurement so a cut-off run keeps what it
    has; each measurement is also printed as one JSON line."""

    def __init__(self, args: object, out: str):
        self.out = Path(out)
        gpu = torch.cuda.is_available()
        self.data: dict = {
            "args": vars(args),
            "device": torch.cuda.get_device_name(0) if gpu else "cpu",
        }

    def save(self, **kw: object) -> None:
        self.data.update(kw)
        self.out.write_text(json.dumps(self.data, indent=2))
        print(json.dumps(kw), flush=True)


def start_engine(
    shape: str,
    workdir: str,
    max_len: int,
    new_tokens: int,
    memory: float,
    results: Results,
    compile: bool | None = None,
) -> tuple[VLLMRollout, Path]:
    """A VLLMRollout (one sample per prompt, EOS ignored) on a random model of `shape`, saved
    under `workdir`; its start time goes into `results`."""
    model = build_model(shape, Path(workdir) / f"qwen3-{shape}")
    cfg = RolloutConfig(
        n_samples=1,
        max_new_tokens=new_tokens,
        ignore_eos=True,
        max_model_len=max_len,
        gpu_memory_utilization=memory,
        compile=compile,
    )
    start = time.perf_counter()
    engine = VLLMRollout(str(model), cfg)
    results.save(engine_start_s=time.perf_counter() - start)
    return engine, model


def random_prompts(engine: VLLMRollout, rows: int, length: int, seed: int) -> TensorDict:
    """`rows` prompts of `length` random token ids (below 100k: ordinary tokens)."""
    vocab = min(100_000, engine.llm.get_tokenizer().vocab_size)
    ids = torch.randint(10, vocab, (rows, length), generator=torch.Generator().manual_seed(seed))
    return collate_prompts([Example(r.tolist(), None) for r in ids], 0)
