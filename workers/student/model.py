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
from ondistill.losses import (
    HiddenTeacher,
    ObjectiveSpec,
    TopKTeacher,
    chunked_loss,
    chunked_token_stats,
    discounted_advantages,
)
from ondistill.xtok.losses import aligned_stats, cross_tokenizer_loss
from ondistill.xtok.vocab import SharedVocab
from workers.compile import compile_blocks


class KDModel(nn.Module):
    def __init__(
        self,
        lm: nn.Module,
        teacher_head: OutputHead | None,
        chunk_size: int,
        cross_tokenizer: str = "none",
        shared: SharedVocab | None = None,
    ):
        super().__init__()
        self.lm = lm
        self.teacher_head = teacher_head
        self.chunk_size = chunk_size
        self.student_spec = HeadSpec.from_config(lm.config.to_dict())
        self.cross_tokenizer, self.shared = cross_tokenizer, shared

    def _hidden(self, ids, mask, pos, start: int, width: int) -> torch.Tensor:
        out = self.lm.get_decoder()(input_ids=ids, attention_mask=mask, position_ids=pos)
        return out.last_hidden_state[:, start : start + width]

    def forward(
        self,
        ids,
        mask,
        pos,
        start: int,
        teacher: dict[str, torch.Tensor],
        weights: torch.Tensor,
        extras: dict[str, torch.Tensor],
        spec: ObjectiveSpec,
        discount: float = 0.0,
    ) -> tuple[torch.Tensor, float]:
        """(weighted sum of the per-token objective, weighted sum of the divergence) over the
        response positions. teacher: {"hidden": [b, R, H]} or {"topk_ids", "topk_logprobs":
        [b, R, k]} or cross-tokenizer {"xt_hidden" [b, R_t, H_t], "xt_targets", "teacher_chunk"
        [b, R_t], "student_chunk" [b, R]}; weights, extras (targets, rollout_logprobs): [b, R]."""
        hidden = self._hidden(ids, mask, pos, start, weights.shape[1])
        head_w = self.lm.get_output_embeddings().weight
        if "xt_hidden" in teacher:
            stats: dict = {}
            loss = cross_tokenizer_loss(
                self.cross_tokenizer,
                hidden,
                head_w,
                self.student_spec,
                extras["targets"],
                teacher["student_chunk"],
                teacher["xt_hidden"],
                self.teacher_head,
                teacher["xt_targets"],
                teacher["teacher_chunk"],
                weights,
                spec,
                self.shared,
                self.chunk_size,
                stats,
            )
            return loss, stats["divergence"]
        keep = weights != 0
        h = hidden[keep]
        ex = {k: v[keep] for k, v in extras.items()}
        if "hidden" in teacher:
            side = HiddenTeacher(teacher["hidden"][keep], self.teacher_head)
        else:
            side = TopKTeacher(teacher["topk_ids"][keep], teacher["topk_logprobs"][keep])
        if spec.objective == "policy_gradient" and discount > 0:
            # MiniLLM's future reward needs every token's reward first: one extra no-grad pass.
            st = chunked_token_stats(
                h.detach(),
                head_w,
                side.hidden,
                self.teacher_head,
                ex["targets"],
                (),
                self.chunk_size,
                self.student_spec,
            )
            reward = torch.zeros_like(weights)
            reward[keep] = st["teacher_logprob"] - st["student_logprob"]
            ex["advantages"] = discounted_advantages(reward, keep.float(), discount)[keep]
        stats: dict = {}
        loss = chunked_loss(
            h, head_w, side, weights[keep], spec, ex, self.chunk_size, self.student_spec, stats
        )
        return loss, stats["divergence"]

    def stats(
        self,
        ids,
        mask,
        pos,
        start: int,
        targets: torch.Tensor,
        keep: torch.Tensor,
        teacher_hidden: torch.Tensor | None,
        divergences: tuple[str, ...],
    ):
        """Per-token stats (see chunked_token_stats) for the response tokens where keep [b, R]."""
        hidden = self._hidden(ids, mask, pos, start, targets.shape[1])
        th = teacher_hidden[keep] if teacher_hidden is not None else None
        return chunked_token_stats(
            hidden[keep],
            self.lm.get_output_embeddings().weight,
            th,
            self.teacher_head if th is not None else None,
            targets[keep],
            divergences,
            self.chunk_size,
            self.student_spec,
        )

    def xtok_stats(
        self, ids, mask, pos, start: int, targets: torch.Tensor, teacher: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Per aligned chunk metrics (see ondistill.xtok.losses.aligned_stats)."""
        hidden = self._hidden(ids, mask, pos, start, targets.shape[1])
        return aligned_stats(
            hidden,
            self.lm.get_output_embeddings().weight,
            self.student_spec,
            targets,
            teacher["student_chunk"],
            teacher["xt_hidden"],
            self.teacher_head,
            teacher["xt_targets"],
            teacher["teacher_chunk"],
            self.shared,
            self.chunk_size,
        )


def parallelize(
    model: KDModel, mesh: DeviceMesh, param_dtype: torch.dtype, compile: bool = False
) -> KDModel:
    """FSDP2 as torchtitan applies it: (compile each decoder block,) each block, then the root."""
    if compile:
        compile_blocks(model.lm.get_decoder())
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for block in model.lm.get_decoder().layers:
        fully_shard(block, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    register_fsdp_forward_method(model, "stats")
    register_fsdp_forward_method(model, "xtok_stats")
    return model
