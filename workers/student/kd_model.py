"""The student as FSDP2 sees it: the HF causal LM plus the KD loss in one forward.

The loss runs inside the root module's forward (and `stats` is registered as an FSDP forward
method) so FSDP2 has the output head unsharded exactly while it is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

from ondistill import batch as B
from ondistill.heads import HeadSpec, OutputHead
from ondistill.losses import (
    HiddenTeacher,
    ObjectiveSpec,
    TeacherSide,
    TopKTeacher,
    chunked_loss,
    discounted_advantages,
)
from ondistill.packing import forward_columns, forward_packed
from ondistill.token_stats import chunked_token_stats
from ondistill.xtok.losses import AlignedPair, aligned_stats, cross_tokenizer_loss
from ondistill.xtok.vocab import SharedVocab
from workers.compile import compile_blocks


@dataclass
class TeacherHead:
    """What the student side holds of one teacher: its output head and, for a teacher of
    another tokenizer, the cross-tokenizer method and the two vocabularies' shared tokens."""

    head: OutputHead
    cross_tokenizer: str = "none"
    shared: SharedVocab | None = None


class KDModel(nn.Module):
    def __init__(
        self,
        lm: Any,  # a transformers causal LM
        teachers: dict[str, TeacherHead],
        chunk_size: int,
        packing: bool = False,
        pad_to: int = 0,
    ):
        """teachers: by name (a one-teacher run's is named "teacher"). packing:
        training forwards run on packed rows (ondistill/packing.py), filled up to pad_to
        tokens (static shapes for the compiled blocks)."""
        super().__init__()
        self.packing, self.pad_to = packing, pad_to
        self.lm = lm
        self.teachers = teachers
        self.chunk_size = chunk_size
        self.student_spec = HeadSpec.from_config(lm.config.to_dict())

    def _hidden(self, ids, mask, pos, start: int, width: int) -> torch.Tensor:
        span, decoder = slice(start, start + width), self.lm.get_decoder()
        if self.packing and self.training:
            return forward_packed(decoder, ids, mask, span, self.pad_to)
        return forward_columns(decoder, ids, mask, pos, span)

    def _teacher(self, name: str | None) -> TeacherHead:
        """The head of the teacher called `name`; None: the run's one teacher."""
        if name is None and len(self.teachers) == 1:
            return next(iter(self.teachers.values()))
        if name not in self.teachers:
            raise RuntimeError(
                f"this student holds no output head of teacher {name!r} (it has "
                f"{sorted(self.teachers)})"
            )
        return self.teachers[name]

    def forward(
        self,
        ids,
        mask,
        pos,
        start: int,
        signal: B.Signal,
        teacher: dict[str, torch.Tensor],
        weights: torch.Tensor,
        extras: dict[str, torch.Tensor],
        spec: ObjectiveSpec,
        discount: float = 0.0,
        logprobs: bool = False,
        name: str | None = None,
    ) -> tuple[torch.Tensor, float, torch.Tensor | None]:
        """(weighted sum of the per-token objective, weighted sum of the divergence, and with
        `logprobs` the student's log-prob of each response token [n] where weights != 0) over
        the response positions. teacher: the tensors of `signal` under their batch keys
        (B.SCORED_KEYS), from the teacher called `name`; weights, extras (targets,
        rollout_logprobs): [b, R]."""
        hidden = self._hidden(ids, mask, pos, start, weights.shape[1])
        head_w = self.lm.get_output_embeddings().weight
        stats: dict = {}
        t = self._teacher(name)
        if signal is B.Signal.ALIGNED:
            pair = AlignedPair.of(
                hidden, head_w, self.student_spec, extras["targets"], teacher, t.head
            )
            loss = cross_tokenizer_loss(
                t.cross_tokenizer, pair, weights, spec, t.shared, self.chunk_size, stats
            )
            lp = None
            if logprobs:  # the loss walks aligned chunks, not these tokens: one more pass
                keep = weights != 0
                lp = chunked_token_stats(
                    hidden[keep].detach(), head_w, None, None, extras["targets"][keep],
                    chunk_size=self.chunk_size, student_spec=self.student_spec,
                )["student_logprob"]  # fmt: skip
            return loss, stats["divergence"], lp
        keep = weights != 0
        h = hidden[keep]
        ex = {k: v[keep] for k, v in extras.items()}
        side: TeacherSide
        if signal is B.Signal.HIDDEN:
            side = HiddenTeacher(teacher[B.TEACHER_HIDDEN][keep], t.head)
        else:
            side = TopKTeacher(
                teacher[B.TEACHER_TOPK_IDS][keep], teacher[B.TEACHER_TOPK_LOGPROBS][keep]
            )
        if spec.objective == "policy_gradient" and discount > 0:
            # MiniLLM's future reward needs every token's reward first: one extra no-grad pass.
            st = chunked_token_stats(
                h.detach(),
                head_w,
                teacher[B.TEACHER_HIDDEN][keep],
                t.head,
                ex["targets"],
                (),
                self.chunk_size,
                self.student_spec,
            )
            reward = torch.zeros_like(weights)
            reward[keep] = st["teacher_logprob"] - st["student_logprob"]
            ex["advantages"] = discounted_advantages(reward, keep.float(), discount)[keep]
        loss = chunked_loss(
            h, head_w, side, weights[keep], spec, ex, self.chunk_size, self.student_spec, stats,
            token_logprobs=logprobs,
        )  # fmt: skip
        return loss, stats["divergence"], stats.get("student_logprob")

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
        name: str | None = None,
    ):
        """Per-token stats (see chunked_token_stats) for the response tokens where keep [b, R],
        against the teacher called `name`."""
        hidden = self._hidden(ids, mask, pos, start, targets.shape[1])
        th = teacher_hidden[keep] if teacher_hidden is not None else None
        return chunked_token_stats(
            hidden[keep],
            self.lm.get_output_embeddings().weight,
            th,
            self._teacher(name).head if th is not None else None,
            targets[keep],
            divergences,
            self.chunk_size,
            self.student_spec,
        )

    def xtok_stats(
        self,
        ids,
        mask,
        pos,
        start: int,
        targets: torch.Tensor,
        teacher: dict[str, torch.Tensor],
        name: str | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per aligned chunk metrics (see ondistill.xtok.losses.aligned_stats) against the
        teacher called `name`."""
        hidden = self._hidden(ids, mask, pos, start, targets.shape[1])
        weight = self.lm.get_output_embeddings().weight
        t = self._teacher(name)
        pair = AlignedPair.of(hidden, weight, self.student_spec, targets, teacher, t.head)
        if t.shared is None:
            raise RuntimeError("aligned stats need the shared vocabulary (a cross_tokenizer)")
        return aligned_stats(pair, t.shared, self.chunk_size)


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
