"""Output heads: turn final hidden states into logits, including the teacher architecture's
logit scaling and soft-capping, so the student side can recompute teacher logits exactly."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class HeadSpec:
    """How an architecture maps `h @ W.T` to logits: `softcap * tanh(scale * z / softcap)`."""

    scale: float = 1.0
    softcap: float | None = None

    def apply(self, z: torch.Tensor) -> torch.Tensor:
        if self.scale != 1.0:
            z = z * self.scale
        if self.softcap:
            z = self.softcap * torch.tanh(z / self.softcap)
        return z

    @staticmethod
    def from_config(config: dict) -> HeadSpec:
        text = config.get("text_config") or config  # multimodal configs nest the LM's
        return HeadSpec(
            scale=float(text.get("logit_scale") or 1.0),
            softcap=text.get("final_logit_softcapping") or None,
        )


@dataclass
class OutputHead:
    """A frozen output head: weight [V, H] plus the architecture's HeadSpec."""

    weight: torch.Tensor
    spec: HeadSpec

    def to(self, device: torch.device | str) -> OutputHead:
        return OutputHead(self.weight.to(device), self.spec)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [N, H] -> logits [N, V] in float32 (the matmul in the head's dtype)."""
        return self.spec.apply((hidden.to(self.weight.dtype) @ self.weight.T).float())


def topk_logprobs(
    head: OutputHead, hidden: torch.Tensor, k: int, chunk: int = 4096
) -> tuple[torch.Tensor, torch.Tensor]:
    """hidden [..., H] -> the head's top-k (ids int64, log-probs float32), both [..., k],
    computed `chunk` positions at a time so the whole [positions, vocab] never exists."""
    flat = hidden.reshape(-1, hidden.shape[-1])
    ids, logprobs = [], []
    for i in range(0, flat.shape[0], chunk):
        top = torch.log_softmax(head.logits(flat[i : i + chunk]), -1).topk(k, -1)
        ids.append(top.indices)
        logprobs.append(top.values)
    shape = (*hidden.shape[:-1], k)
    return torch.cat(ids).view(shape), torch.cat(logprobs).view(shape)


def load_output_head(model_dir: str | Path, dtype: torch.dtype = torch.float32) -> OutputHead:
    """Read only the output head of a safetensors checkpoint (not the whole model)."""
    from safetensors import safe_open

    model_dir = Path(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    tied = config.get(
        "tie_word_embeddings", (config.get("text_config") or {}).get("tie_word_embeddings", False)
    )
    wanted: tuple[str, ...] = ("lm_head.weight",) if not tied else ()
    wanted += (
        "model.embed_tokens.weight",
        "model.language_model.embed_tokens.weight",
        "embed_tokens.weight",
    )
    for file in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for name in wanted:
                if name in f.keys():
                    return OutputHead(f.get_tensor(name).to(dtype), HeadSpec.from_config(config))
    raise FileNotFoundError(
        f"no output head ({' or '.join(wanted)}) in {model_dir}/*.safetensors; "
        "save the teacher with save_pretrained(safe_serialization=True)."
    )
