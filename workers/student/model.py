"""The student as FSDP2 sees it: the HF causal LM plus the KD loss in one forward.

The loss runs inside the root module's forward (and `stats` is registered as an FSDP forward
method) so FSDP2 has the output head unsharded exactly while it is used.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

from ondistill.heads import HeadSpec, OutputHead
from ondistill.losses import chunked_kd_loss, chunked_token_stats


class KDModel(nn.Module):
    def __init__(self, lm: nn.Module, teacher_head: OutputHead | None, chunk_size: int):
        super().__init__()
        self.lm = lm
        self.teacher_head = teacher_head
        self.chunk_size = chunk_size
        self.student_spec = HeadSpec.from_config(lm.config.to_dict())

    def _hidden(self, ids, mask, pos, start: int, width: int) -> torch.Tensor:
        out = self.lm.get_decoder()(input_ids=ids, attention_mask=mask, position_ids=pos)
        return out.last_hidden_state[:, start:start + width]

    def forward(self, ids, mask, pos, start: int, teacher_hidden: torch.Tensor,
                weights: torch.Tensor, divergence: str, temperature: float) -> torch.Tensor:
        """Weighted sum of per-token divergences over the response positions (weights [b, R])."""
        hidden = self._hidden(ids, mask, pos, start, weights.shape[1])
        keep = weights != 0
        return chunked_kd_loss(hidden[keep], self.lm.get_output_embeddings().weight,
                               teacher_hidden[keep], self.teacher_head, weights[keep],
                               divergence, temperature, self.chunk_size, self.student_spec)

    def stats(self, ids, mask, pos, start: int, targets: torch.Tensor, keep: torch.Tensor,
              teacher_hidden: torch.Tensor | None, divergences: tuple[str, ...]):
        """Per-token stats (see chunked_token_stats) for the response tokens where keep [b, R]."""
        hidden = self._hidden(ids, mask, pos, start, targets.shape[1])
        th = teacher_hidden[keep] if teacher_hidden is not None else None
        return chunked_token_stats(hidden[keep], self.lm.get_output_embeddings().weight, th,
                                   self.teacher_head if th is not None else None, targets[keep],
                                   divergences, self.chunk_size, self.student_spec)


def parallelize(model: KDModel, mesh: DeviceMesh, param_dtype: torch.dtype) -> KDModel:
    """FSDP2 as torchtitan applies it: each decoder block, then the root."""
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for block in model.lm.get_decoder().layers:
        fully_shard(block, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    register_fsdp_forward_method(model, "stats")
    return model
