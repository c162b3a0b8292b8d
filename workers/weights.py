"""How student weights travel to the rollout engines, and teacher hidden states to the student.

Two ways, chosen per engine by the sender:
  - by value: CPU tensors through Ray's object store (any node, any device);
  - CUDA IPC: when the engine runs on the same GPU as the sending rank, only a handle to the
    sender's GPU memory crosses the process boundary and the engine copies device to device.
    This is what makes per-step syncs of a 1.7B student cheap on one card (no 3-7 GB trip
    through host memory and the object store).
The sender must keep IPC'd tensors alive until the engine has flushed them. The same handles
carry the teacher's hidden states to a one-rank student on its GPU (B.TEACHER_HIDDEN_IPC).
"""

from __future__ import annotations

from typing import Any

import torch
from tensordict import TensorDict

from ondistill import batch as B

Packed = Any  # a CPU tensor, or ("cuda_ipc", (rebuild_fn, args))


def gpu_identity() -> tuple[str, str] | None:
    """(node id, GPU uuid) of this process's current GPU, or None without one."""
    if not torch.cuda.is_available():
        return None
    import ray

    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    return ray.get_runtime_context().get_node_id(), str(props.uuid)


def actor_gpu(actor: object) -> tuple[str, str] | None:
    """gpu_identity() inside any actor, through `actor.__ray_call__.remote(actor_gpu)`."""
    return gpu_identity()


def pack(tensor: torch.Tensor, ipc: bool) -> Packed:
    if ipc:
        from torch.multiprocessing.reductions import reduce_tensor

        return ("cuda_ipc", reduce_tensor(tensor.detach()))
    return tensor.detach().cpu()


def unpack(item: Packed) -> torch.Tensor:
    if isinstance(item, tuple) and len(item) == 2 and item[0] == "cuda_ipc":
        rebuild, args = item[1]
        return rebuild(*args)
    return item


def receive(td: TensorDict) -> TensorDict:
    """Map a B.TEACHER_HIDDEN_IPC handle to B.TEACHER_HIDDEN on this process's GPU (in place)."""
    if B.SIGNAL in td.keys() and B.signal_of(td) is B.Signal.HIDDEN_IPC:
        td.set(B.TEACHER_HIDDEN, unpack(td.get_non_tensor(B.TEACHER_HIDDEN_IPC)))
        del td[B.TEACHER_HIDDEN_IPC]
        B.scored(td, B.Signal.HIDDEN, "receive teacher hidden states")
    return td
