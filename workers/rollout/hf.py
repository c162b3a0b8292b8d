"""Rollout with plain transformers `generate`: the fallback engine that runs anywhere."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch
from tensordict import TensorDict

from ondistill import batch as B
from ondistill.config import RolloutConfig, sampling_seed


def response_mask(ids: torch.Tensor, eos_ids: set[int]) -> torch.Tensor:
    """True up to and including the first EOS of each row; False after it."""
    is_eos = torch.zeros_like(ids, dtype=torch.bool)
    for e in eos_ids:
        is_eos |= ids == e
    after_eos = (is_eos.long().cumsum(1) - is_eos.long()) > 0
    return ~after_eos


class HFRollout:
    """Samples from an HF causal LM; returns raw (untempered) sampled-token logprobs."""

    def __init__(self, model_dir: str, cfg: RolloutConfig):
        from transformers import AutoModelForCausalLM, GenerationConfig

        torch.set_num_threads(max(1, cfg.threads))
        self.cfg = cfg
        # Ray hides GPUs from actors that did not ask for one, so this is the placement's choice.
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = (
            AutoModelForCausalLM.from_pretrained(
                model_dir, dtype=torch.bfloat16 if self.device.type == "cuda" else torch.float32
            )
            .to(self.device)
            .eval()
        )
        gen = self.model.generation_config
        eos = gen.eos_token_id if gen.eos_token_id is not None else self.model.config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) | set(cfg.stop_token_ids)
        self.pad_id = gen.pad_token_id if gen.pad_token_id is not None else min(self.eos_ids)
        # A fresh config: a checkpoint's own generation defaults (top_k=50, ...) must not leak in.
        self.gen_cfg = GenerationConfig(
            do_sample=True,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            top_k=0,
            max_new_tokens=cfg.max_new_tokens,
            eos_token_id=sorted(self.eos_ids),
            min_new_tokens=cfg.max_new_tokens if cfg.ignore_eos else 0,
            pad_token_id=self.pad_id,
            output_logits=True,
            return_dict_in_generate=True,
        )
        self.greedy_cfg = GenerationConfig(
            do_sample=False,
            max_new_tokens=cfg.max_new_tokens,
            eos_token_id=sorted(self.eos_ids),
            min_new_tokens=self.gen_cfg.min_new_tokens,
            pad_token_id=self.pad_id,
            output_logits=True,
            return_dict_in_generate=True,
        )
        self.calls = 0

    @torch.no_grad()
    def generate(
        self, prompts: TensorDict, seed: int | None = None, greedy: bool = False
    ) -> TensorDict:
        """seed=None draws the next seed of this engine's own sequence (cfg.seed, call count);
        greedy: one temperature-0 answer per prompt."""
        B.check(prompts, B.PROMPTS, "rollout.generate")
        td = prompts.repeat_interleave(1 if greedy else self.cfg.n_samples, dim=0)  # by prompt
        if seed is None:
            seed, self.calls = sampling_seed(self.cfg.seed, self.calls), self.calls + 1
        torch.manual_seed(seed)
        out = self.model.generate(
            input_ids=td[B.PROMPT_IDS].to(self.device),
            attention_mask=td[B.PROMPT_MASK].long().to(self.device),
            generation_config=self.greedy_cfg if greedy else self.gen_cfg,
        )
        resp = out.sequences[:, td[B.PROMPT_IDS].shape[1] :].cpu()
        logits = torch.stack(out.logits, dim=1).float().cpu()  # [B, R, V], before any warping
        logprobs = torch.log_softmax(logits, -1).gather(-1, resp.unsqueeze(-1)).squeeze(-1)
        mask = response_mask(resp, set() if self.cfg.ignore_eos else self.eos_ids)
        td.set(B.RESPONSE_IDS, resp.masked_fill(~mask, self.pad_id))
        td.set(B.RESPONSE_MASK, mask)
        td.set(B.ROLLOUT_LOGPROBS, logprobs.masked_fill(~mask, 0.0))
        return B.check(td, B.ROLLOUT, "rollout.generate")

    @torch.no_grad()
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        from workers.weights import unpack

        params = dict(self.model.named_parameters())
        for name, tensor in named_tensors:
            if name in params:
                params[name].copy_(unpack(tensor))

    def flush(self) -> None:
        pass  # HF generate keeps no cache across calls

    def sleep(self, drop_weights: bool = False) -> None:
        pass  # holds no memory beyond its weights, which it keeps


if TYPE_CHECKING:
    from workers.engines import RolloutEngine

    _: type[RolloutEngine] = HFRollout
