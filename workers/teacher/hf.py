"""Teacher scoring with plain transformers: final hidden states of the response positions."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, ClassVar

import torch
from tensordict import TensorDict

from ondistill import batch as B
from ondistill.config import TeacherConfig
from ondistill.heads import HeadSpec, OutputHead, load_output_head, topk_logprobs
from ondistill.packing import (
    attention,
    forward_columns,
    forward_packed,
    micro_batches,
    row_lengths,
)
from workers.compile import compile_blocks, wants_compile
from workers.weights import pack, unpack


class HFTeacher:
    shares_gpu: ClassVar[bool] = True  # score(share=True): see TeacherGroup.share_gpu_with
    owns_tp_ranks: ClassVar[bool] = False  # a rank per actor, joined through `join`
    shared: torch.Tensor | None = None  # hidden states a student is mapping (IPC)

    def __init__(self, model_dir: str, cfg: TeacherConfig, tp_rank: int = 0):
        """With teacher.tp_size > 1 this is rank tp_rank of a tensor-parallel replica and
        loads nothing until `join` (its group's address comes from rank 0's `tp_address`)."""
        torch.set_num_threads(max(1, cfg.threads))
        self.model_dir, self.cfg, self.tp_rank = model_dir, cfg, tp_rank
        self.dtype = getattr(torch, cfg.dtype)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.topk = cfg.topk
        if cfg.tp_size == 1:
            self._load()

    def _load(self, tp: bool = False) -> None:
        from transformers import AutoModelForCausalLM

        lm = AutoModelForCausalLM.from_pretrained(
            self.model_dir,
            dtype=self.dtype,
            attn_implementation=attention(self.cfg.packing, self.device),
            **({"tp_plan": "auto"} if tp else {}),  # each rank holds its shard, on its device
        )
        lm = (lm if tp else lm.to(self.device)).eval()
        # Only the decoder: its last_hidden_state is post final norm, and the output head
        # (the [tokens, vocab] part) runs on the student side, chunked.
        self.lm, self.decoder = lm, lm.get_decoder()
        if wants_compile(self.cfg.compile, self.device):
            compile_blocks(self.decoder)
        if self.topk:  # a teacher that sends top-k must apply its own head
            if tp:  # the model holds a shard of it: the whole head from the checkpoint
                head = load_output_head(self.model_dir, self.dtype)
                self.head = OutputHead(head.weight.to(self.device), head.spec)
            else:  # the model's own tensor, which update_weights changes in place
                weight = lm.get_output_embeddings().weight.detach()
                self.head = OutputHead(weight, HeadSpec.from_config(lm.config.to_dict()))

    def tp_address(self) -> tuple[str, int]:
        """Where this replica's rank 0 listens for its tensor-parallel group."""
        from workers.ray_env import free_address

        return free_address()

    def join(self, master: tuple[str, int]) -> None:
        """Join this replica's tensor-parallel group (nccl on GPU, gloo on CPU) and load this
        rank's shard of the teacher."""
        import os

        import torch.distributed as dist

        os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = master[0], str(master[1])
        os.environ["LOCAL_RANK"] = "0"  # each rank's actor sees its own device as device 0
        dist.init_process_group(
            "nccl" if self.device.type == "cuda" else "gloo",
            rank=self.tp_rank,
            world_size=self.cfg.tp_size,
        )
        self._load(tp=True)

    @torch.no_grad()
    def follow(self, batch: TensorDict) -> None:
        """A tensor-parallel rank other than 0: the same forwards as rank 0's `score` (every
        layer all-reduces across the ranks), whose result only rank 0 sends."""
        self._hidden(batch)

    @torch.no_grad()
    def score(self, batch: TensorDict, share: bool = False) -> TensorDict:
        """share: keep the hidden states on this GPU and send a CUDA IPC handle instead
        (B.TEACHER_HIDDEN_IPC), for a student on the same GPU; they stay alive until the next
        call, by which time the student has trained on them."""
        B.check(batch, B.ROLLOUT, "teacher.score")
        if self.shared is not None:
            self.shared = None
            torch.cuda.ipc_collect()  # free the previous step's handed-over blocks
        hidden = self._hidden(batch)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()  # hand cached activation blocks back to the shared card
        signal = B.Signal.TOPK if self.topk else B.Signal.HIDDEN_IPC if share else B.Signal.HIDDEN
        if signal is B.Signal.TOPK:
            B.set_topk(batch, *topk_logprobs(self.head, hidden, self.topk))
        elif signal is B.Signal.HIDDEN_IPC:
            self.shared = hidden
            torch.cuda.synchronize()  # the student reads it on another process's stream
            batch.set_non_tensor(B.TEACHER_HIDDEN_IPC, pack(hidden, ipc=True))
        else:
            batch.set(B.TEACHER_HIDDEN, hidden.to(self.dtype).cpu())
        return B.scored(batch, signal, "teacher.score")

    def _hidden(self, batch: TensorDict) -> torch.Tensor:
        """Final hidden states [b, R, H] predicting the response tokens (after the teacher's
        own prompt where the batch has one), in micro-batches of teacher.micro_batch_size rows
        or of teacher.micro_batch_tokens tokens, each run packed (teacher.packing) or over the
        columns its rows use."""
        ids, mask, pos = B.full_sequence(batch, teacher=True)
        span = B.response_positions(batch, teacher=True)
        rows, cfg = ids.shape[0], self.cfg
        if cfg.micro_batch_tokens:
            bins = micro_batches(row_lengths(mask), cfg.micro_batch_tokens, cfg.packing)
        else:
            step = cfg.micro_batch_size or rows
            bins = [list(range(i, min(i + step, rows))) for i in range(0, rows, step)]
        pad_to = cfg.micro_batch_tokens if self.device.type == "cuda" else 0
        out = None
        for part in bins:
            pick = torch.tensor(part)
            i, m, p = (t[pick].to(self.device) for t in (ids, mask, pos))
            if cfg.packing:
                h = forward_packed(self.decoder, i, m, span, pad_to)
            else:
                h = forward_columns(self.decoder, i, m, p, span)
            if out is None:
                out = h.new_empty((rows, *h.shape[1:]))
            out[pick.to(self.device)] = h
        assert out is not None  # a batch has rows
        return out

    @torch.no_grad()
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load (HF parameter name, tensor) pairs in place: a teacher that follows a student."""
        if self.cfg.tp_size > 1:
            raise NotImplementedError("weight updates of a tensor-parallel teacher (tp_size > 1)")
        params = dict(self.lm.named_parameters())
        for name, tensor in named_tensors:
            if name not in params:
                raise KeyError(
                    f"the teacher has no parameter {name!r}; a weight update must "
                    "come from a model of the teacher's architecture."
                )
            params[name].copy_(unpack(tensor))

    def shutdown(self) -> None:
        pass  # nothing runs outside this process


if TYPE_CHECKING:
    from workers.engines import TeacherEngine

    _: type[TeacherEngine] = HFTeacher
