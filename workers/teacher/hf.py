"""Teacher scoring with plain transformers: final hidden states of the response positions."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, ClassVar

import torch
from tensordict import TensorDict

from ondistill import batch as B
from ondistill.config import DTYPES, TeacherConfig
from ondistill.heads import HeadSpec, OutputHead, topk_logprobs
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
    shared: torch.Tensor | None = None  # hidden states a student is mapping (IPC)

    def __init__(self, model_dir: str, cfg: TeacherConfig):
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(max(1, cfg.threads))
        self.dtype = DTYPES[cfg.dtype]
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        lm = (
            AutoModelForCausalLM.from_pretrained(
                model_dir, dtype=self.dtype, attn_implementation=attention(cfg.packing, self.device)
            )
            .to(self.device)
            .eval()
        )
        # Only the decoder: its last_hidden_state is post final norm, and the output head
        # (the [tokens, vocab] part) runs on the student side, chunked.
        self.lm, self.decoder = lm, lm.get_decoder()
        if wants_compile(cfg.compile, self.device):
            compile_blocks(self.decoder)
        self.topk, self.micro, self.cfg = cfg.topk, cfg.micro_batch_size, cfg
        if self.topk:  # a teacher that sends top-k must apply its own head
            self.head = OutputHead(
                lm.get_output_embeddings().weight.detach(),
                HeadSpec.from_config(lm.config.to_dict()),
            )

    @torch.no_grad()
    def score(self, batch: TensorDict, share: bool = False) -> TensorDict:
        """share: keep the hidden states on this GPU and send a CUDA IPC handle instead
        (B.TEACHER_HIDDEN_IPC), for a student on the same GPU; they stay alive until the next
        call, by which time the student has trained on them."""
        B.check(batch, B.ROLLOUT, "teacher.score")
        if self.shared is not None:
            self.shared = None
            torch.cuda.ipc_collect()  # free the previous step's handed-over blocks
        hidden = self._hidden(*B.full_sequence(batch), B.response_positions(batch))
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

    def _hidden(self, ids, mask, pos, span: slice) -> torch.Tensor:
        """Final hidden states [b, width, H] of columns `span`, in micro-batches of
        teacher.micro_batch_size rows or of teacher.micro_batch_tokens tokens, each run
        packed (teacher.packing) or over the columns its rows use."""
        rows, cfg = ids.shape[0], self.cfg
        if cfg.micro_batch_tokens:
            bins = micro_batches(row_lengths(mask), cfg.micro_batch_tokens, cfg.packing)
        else:
            step = self.micro or rows
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
