"""What runs inside SGLang's scheduler process (imported there; torch only).

SGLang hands a request's prefill hidden states back as nested Python lists (`.cpu().tolist()`
per position): on an H200 that cut an 8B-shape teacher from 42k to 2.6k tokens/s. The
scheduler process here keeps them as tensors instead:
  - CUDA: a clone stays on the GPU and only a CUDA IPC handle crosses the process boundary
    (`Shared`, unpickled as `("cuda_ipc", (rebuild_fn, args))`, the form workers/weights.py
    unpacks); torch keeps the block alive until the teacher's process has released its
    mapping of it;
  - CPU: a CPU tensor (SGLang pickles what the scheduler sends when SGLANG_USE_PICKLE_IPC=1;
    its default msgspec channel is typed as float lists).
`run_scheduler` is what the teacher's Engine starts instead of SGLang's own entry point, so the
patch is in place in every scheduler process (one per tensor-parallel rank) before any request.
"""

from __future__ import annotations

from typing import Any

_copy: Any = None  # the current forward's hidden states, copied (see hand_over)


def hand_over(batch_hidden: Any, start: int, end: int) -> Any:
    """Rows start:end of a forward's [tokens, H] hidden states (one request's) as something
    the teacher's process can rebuild: a CUDA IPC handle on CUDA, a tensor on CPU.

    On CUDA every request of a forward gets a view of one copy of the whole batch (the
    forward's own buffer is reused by the next one): one IPC handle per forward, which the
    teacher opens once, instead of one per request (an H200, 512 requests of 640 tokens of an
    8B shape: 10.7 s per score call with a copy and handle per request, 8.0 s without hidden
    states)."""
    global _copy
    if not batch_hidden.is_cuda:
        return batch_hidden[start:end].detach().to("cpu", copy=True)
    if _copy is None:  # the first request of this forward's results
        _copy = batch_hidden.detach().clone()
    return Shared(_copy[start:end])


class Shared:
    """A CUDA tensor that pickles as a CUDA IPC handle, made when (and only if) the result is
    sent: with tensor parallelism every rank's scheduler builds results but only rank 0 sends
    them, and a handle made and never opened would keep its block alive for good."""

    __slots__ = ("tensor",)

    def __init__(self, tensor: Any):
        self.tensor = tensor

    def __reduce__(self) -> tuple:
        from torch.multiprocessing.reductions import reduce_tensor

        return (ipc_item, (reduce_tensor(self.tensor),))


def ipc_item(reduced: tuple) -> tuple:
    """What a Shared unpickles to: the form workers/weights.unpack maps."""
    return ("cuda_ipc", reduced)


def patch_result_processor() -> None:
    """Replace `.tolist()` in the prefill hidden-states path (SGLang 0.5.14 and 0.5.23 name
    their arguments differently; only full-sequence capture of `return_hidden_states=True`
    requests is taken over, everything else goes to SGLang's own code), and mark where one
    forward's results begin and end (hand_over copies each forward once)."""
    from sglang.srt.managers.scheduler_components import batch_result_processor as mod

    cls = mod.SchedulerBatchResultProcessor
    original = cls._append_prefill_hidden_states

    def append(self, *, req, logits_output, hidden_state_offset, **kw):
        mode = kw.get("capture_hidden_mode")
        if req.return_hidden_states is not True or (mode is not None and not mode.is_full()):
            return original(
                self,
                req=req,
                logits_output=logits_output,
                hidden_state_offset=hidden_state_offset,
                **kw,
            )
        # 0.5.23 passes the chunk's length; 0.5.14 prefills whole prompts (no chunking here)
        end = hidden_state_offset + kw.get("extend_input_len", len(req.origin_input_ids))
        if kw.get("store", True):
            req.hidden_states.append(
                hand_over(logits_output.hidden_states, hidden_state_offset, end)
            )
        return end

    prefill = cls.process_batch_result_prefill

    def process_prefill(self, *args, **kwargs):
        global _copy
        try:
            return prefill(self, *args, **kwargs)
        finally:  # the next forward's results get a copy of their own; the requests' views
            _copy = None  # keep this one alive until the teacher is done

    cls._append_prefill_hidden_states = append
    cls.process_batch_result_prefill = process_prefill


def run_scheduler(*args: Any, **kwargs: Any) -> None:
    """SGLang's scheduler entry point, with the patch above applied first."""
    from sglang.srt.managers.scheduler import run_scheduler_process

    patch_result_processor()
    run_scheduler_process(*args, **kwargs)
