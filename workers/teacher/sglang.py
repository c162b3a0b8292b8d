"""Teacher scoring with SGLang's offline Engine: final hidden states (post final norm) for the
response positions, from token ids (never re-tokenized).

The Engine's scheduler (another process) hands the hidden states over as tensors, on GPU as
CUDA IPC handles (workers/teacher/sglang_scheduler.py): on a card shared with a one-rank
student they reach the student without a host copy. On CPU this needs SGLANG_USE_CPU_ENGINE=1
and the shims of ondistill/compat/sglang_cpu (put on the path by scripts/setup.sh); on GPU
SGLang's own CUDA kernels run.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from tensordict import TensorDict

from ondistill import batch as B
from ondistill.config import TeacherConfig
from ondistill.heads import load_output_head, topk_logprobs
from workers.weights import pack, unpack


def first_gpu(tp_size: int) -> int:
    """The card of SGLang's rank 0 (base_gpu_id); its ranks use that card and the next
    tp_size - 1. 0 where Ray made the actor's cards its only visible ones; else (a share of
    one card with the node's cards visible: workers/group.tp_engine_placement) a run of cards
    that holds the one Ray gave the actor."""
    cards = torch.cuda.device_count()
    if tp_size > cards:
        raise RuntimeError(
            f"teacher.tp_size={tp_size} needs {tp_size} cards on one node but the teacher's "
            f"actor sees {cards}; lower teacher.tp_size or place the teacher on a larger node."
        )
    if not os.environ.get("RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES"):
        return 0
    import ray

    return min(int(ray.get_gpu_ids()[0]), cards - tp_size)


class SGLangTeacher:
    shares_gpu: ClassVar[bool] = True  # score(share=True): see TeacherGroup.share_gpu_with
    owns_tp_ranks: ClassVar[bool] = True  # SGLang starts a scheduler process per rank

    def __init__(self, model_dir: str, cfg: TeacherConfig):
        self.on_gpu = torch.cuda.is_available()
        if not self.on_gpu and cfg.tp_size > 1:
            raise RuntimeError(
                f"teacher.tp_size={cfg.tp_size} with teacher.backend=sglang runs a rank per "
                "GPU and this actor has none; give the teacher GPUs (ray.teacher.gpus) or set "
                "teacher.backend=hf (tensor-parallel over gloo on CPU)."
            )
        if not self.on_gpu:
            os.environ.setdefault("SGLANG_USE_CPU_ENGINE", "1")  # else it wants vLLM's CUDA ops
        # SGLang >= 0.5.2x sends scheduler outputs through msgspec, typed as float lists,
        # unless told to pickle them: pickle carries the tensors of sglang_scheduler.py.
        os.environ.setdefault("SGLANG_USE_PICKLE_IPC", "1")
        try:
            from sglang.srt.entrypoints.engine import Engine as SGLangEngine
        except ImportError as e:
            raise RuntimeError(
                "teacher.backend=sglang needs SGLang: run scripts/setup.sh (CPU) "
                "or pip install sglang (GPU)."
            ) from e
        from workers.teacher.sglang_scheduler import run_scheduler

        class Engine(SGLangEngine):
            run_scheduler_process_func = staticmethod(run_scheduler)

        # A top-k teacher applies its own output head to the hidden states SGLang returns
        # (chunked: the [tokens, vocab] logits never exist whole).
        self.topk = cfg.topk
        self.dtype = getattr(torch, cfg.dtype)
        first = first_gpu(cfg.tp_size) if self.on_gpu else 0
        self.device = torch.device(f"cuda:{first}" if self.on_gpu else "cpu")
        if self.on_gpu:
            torch.cuda.set_device(self.device)  # rank 0's card: its hidden states arrive there
        self.head = load_output_head(model_dir).to(self.device) if cfg.topk else None
        torch.set_num_threads(max(1, cfg.threads))
        self.shared: torch.Tensor | None = None  # the last hidden states handed over (share)
        device_args: dict[str, Any] = (
            {"mem_fraction_static": cfg.gpu_memory_utilization, "base_gpu_id": first}
            if self.on_gpu
            else {
                "device": "cpu",
                "attention_backend": "torch_native",
                "disable_cuda_graph": True,
                "max_total_tokens": 16384,
                "mem_fraction_static": 0.15,
            }
        )
        self.engine = Engine(
            model_path=model_dir,
            dtype=cfg.dtype,
            enable_return_hidden_states=True,
            chunked_prefill_size=-1,  # chunked prefill drops the hidden states of early chunks
            disable_radix_cache=True,
            skip_server_warmup=True,
            log_level="warning",
            sleep_on_idle=True,  # an idle scheduler would otherwise spin a whole core
            tp_size=cfg.tp_size,
            **{**device_args, **cfg.engine_args},
        )

    @torch.no_grad()
    def score(self, batch: TensorDict, share: bool = False) -> TensorDict:
        """share: keep the hidden states on this GPU and send a CUDA IPC handle instead
        (B.TEACHER_HIDDEN_IPC), for a student on the same GPU, as the hf teacher does; they
        stay alive until the next call."""
        B.check(batch, B.ROLLOUT, "teacher.score")
        if self.shared is not None:
            self.shared = None
            torch.cuda.ipc_collect()  # free the previous step's handed-over blocks
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
        hidden, mapped = None, []
        for row, (seq, out, pm, rm) in enumerate(zip(seqs, outs, p_mask, r_mask, strict=True)):
            h = unpack(out["meta_info"]["hidden_states"][0])  # this GPU's memory, or CPU
            mapped.append(h)  # rows of one SGLang forward share a mapping: keep it open
            if not isinstance(h, torch.Tensor):
                raise RuntimeError(
                    "SGLang returned hidden states as lists: workers/teacher/sglang_scheduler.py "
                    "did not take over its result processor; check that this SGLang version "
                    "still has SchedulerBatchResultProcessor._append_prefill_hidden_states."
                )
            if h.shape[0] != len(seq):
                raise RuntimeError(
                    f"SGLang returned {h.shape[0]} hidden states for {len(seq)} "
                    "tokens; keep chunked prefill off (chunked_prefill_size=-1)."
                )
            if hidden is None:
                hidden = torch.zeros(
                    *r_ids.shape, h.shape[-1], dtype=self.dtype, device=self.device
                )
            start, n = int(pm.sum()) - 1, int(rm.sum())
            hidden[row, :n] = h[start : start + n]  # position t predicts token t+1
        del mapped  # closes the mappings: SGLang can free its copies
        if hidden is None:
            raise ValueError("teacher.score got a batch without rows")
        if self.head is not None:
            B.set_topk(batch, *topk_logprobs(self.head, hidden, self.topk))
            return B.scored(batch, B.Signal.TOPK, "teacher.score")
        if share:
            self.shared = hidden
            torch.cuda.synchronize()  # the student reads it on another process's stream
            batch.set_non_tensor(B.TEACHER_HIDDEN_IPC, pack(hidden, ipc=True))
            return B.scored(batch, B.Signal.HIDDEN_IPC, "teacher.score")
        batch.set(B.TEACHER_HIDDEN, hidden.cpu())
        return B.scored(batch, B.Signal.HIDDEN, "teacher.score")

    def update_weights(self, named_tensors: Iterable[tuple[str, Any]]) -> None:
        """Self-distillation: load new teacher weights (HF names, tensors or CUDA IPC handles
        as workers/weights.pack makes them) in place. On GPU they go to SGLang's scheduler on
        this card, so SGLang hands them over as CUDA IPC handles (its tensor serializer) rather
        than pickling the bytes through host memory; a tensor mapped from another process is
        copied first (one device-to-device copy), as SGLang can only share memory it owns."""
        named = [(name, unpack(t)) for name, t in named_tensors]
        if self.on_gpu:
            named = [(name, t.to(self.device, self.dtype, copy=True)) for name, t in named]
        # a session (SGLang >= 0.5.2x) re-lays weights out for its kernels at its end (CPU
        # packs them); 0.5.14, the GPU machines' version, loads in place without one
        session = hasattr(self.engine, "begin_weight_update")
        if session:
            self.engine.begin_weight_update()
        ok, message = self.engine.update_weights_from_tensor(named)
        if session:
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
