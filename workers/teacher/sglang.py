"""Teacher scoring with SGLang's offline Engine: final hidden states (post final norm) for the
response positions, from token ids (never re-tokenized).

On CPU this needs SGLANG_USE_CPU_ENGINE=1 and the shims of ondistill/compat/sglang_cpu (put on
the path by scripts/setup.sh); on GPU SGLang's own CUDA kernels run and no shim is involved.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, ClassVar

import torch
from tensordict import TensorDict

from ondistill import batch as B
from ondistill.config import DTYPES, TeacherConfig
from ondistill.heads import load_output_head, topk_logprobs


class SGLangTeacher:
    shares_gpu: ClassVar[bool] = (
        False  # its scheduler process owns the tensors (the SGLang-on-GPU issue)
    )

    def __init__(self, model_dir: str, cfg: TeacherConfig):
        self.on_gpu = torch.cuda.is_available()
        if not self.on_gpu:
            os.environ.setdefault("SGLANG_USE_CPU_ENGINE", "1")  # else it wants vLLM's CUDA ops
        # Hidden states cross from SGLang's scheduler process as tensors, not nested lists
        # (ondistill/compat/sglang_cpu/ondistill_sglang_hidden.py; pickle IPC carries tensors).
        os.environ.setdefault("ONDISTILL_SGLANG_HIDDEN_TENSORS", "1")
        os.environ.setdefault("SGLANG_USE_PICKLE_IPC", "1")
        try:
            import sglang as sgl
        except ImportError as e:
            raise RuntimeError(
                "teacher.backend=sglang needs SGLang: run scripts/setup.sh (CPU) "
                "or pip install sglang (GPU)."
            ) from e
        # A top-k teacher applies its own output head to the hidden states SGLang returns
        # (chunked: the [tokens, vocab] logits never exist whole).
        self.topk = cfg.topk
        self.head = load_output_head(model_dir) if cfg.topk else None
        torch.set_num_threads(max(1, cfg.threads))
        self.dtype = DTYPES[cfg.dtype]
        device_args = (
            {}
            if self.on_gpu
            else {
                "device": "cpu",
                "attention_backend": "torch_native",
                "disable_cuda_graph": True,
                "max_total_tokens": 16384,
            }
        )
        self.engine = sgl.Engine(
            model_path=model_dir,
            dtype=cfg.dtype,
            mem_fraction_static=0.15 if not self.on_gpu else 0.3,
            enable_return_hidden_states=True,
            chunked_prefill_size=-1,  # chunked prefill drops the hidden states of early chunks
            disable_radix_cache=True,
            skip_server_warmup=True,
            log_level="warning",
            sleep_on_idle=True,  # an idle scheduler would otherwise spin a whole core
            **device_args,
        )

    @torch.no_grad()
    def score(self, batch: TensorDict, share: bool = False) -> TensorDict:
        B.check(batch, B.ROLLOUT, "teacher.score")
        p_ids, p_mask = B.teacher_prompt(batch)
        r_ids, r_mask = batch[B.RESPONSE_IDS], batch[B.RESPONSE_MASK]
        seqs = [
            torch.cat([p[pm], r[rm]]).tolist()
            for p, pm, r, rm in zip(p_ids, p_mask, r_ids, r_mask, strict=True)
        ]
        # max_new_tokens=1: one forward pass whose hidden states cover every given position
        outs = self.engine.generate(
            input_ids=seqs, sampling_params={"max_new_tokens": 1}, return_hidden_states=True
        )
        hidden = None
        for row, (seq, out, pm, rm) in enumerate(zip(seqs, outs, p_mask, r_mask, strict=True)):
            h = out["meta_info"]["hidden_states"][0]
            h = h if isinstance(h, torch.Tensor) else torch.tensor(h)
            if h.shape[0] != len(seq):
                raise RuntimeError(
                    f"SGLang returned {h.shape[0]} hidden states for {len(seq)} "
                    "tokens; keep chunked prefill off (chunked_prefill_size=-1)."
                )
            if hidden is None:
                hidden = torch.zeros(*r_ids.shape, h.shape[-1], dtype=self.dtype)
            start, n = int(pm.sum()) - 1, int(rm.sum())
            hidden[row, :n] = h[start : start + n].to(self.dtype)  # position t predicts token t+1
        if hidden is None:
            raise ValueError("teacher.score got a batch without rows")
        if self.head is not None:
            B.set_topk(batch, *topk_logprobs(self.head, hidden, self.topk))
            return B.scored(batch, B.Signal.TOPK, "teacher.score")
        batch.set(B.TEACHER_HIDDEN, hidden)
        return B.scored(batch, B.Signal.HIDDEN, "teacher.score")

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Self-distillation: load new teacher weights (HF names) in place."""
        self.engine.begin_weight_update()
        ok, message = self.engine.update_weights_from_tensor(list(named_tensors))
        self.engine.end_weight_update()
        if not ok:
            raise RuntimeError(f"SGLang rejected the teacher weight update: {message}")

    def shutdown(self) -> None:
        # SGLang's shutdown kills every child process of its host process: host this class in
        # a process of its own (a Ray actor, as TeacherGroup does), never in a Ray driver.
        self.engine.shutdown()


if TYPE_CHECKING:
    from workers.engines import TeacherEngine

    _: type[TeacherEngine] = SGLangTeacher
