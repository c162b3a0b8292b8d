"""How a student rank's weights leave it: to the rollout engines after each update, and to a
self-distilling teacher. All ranks call these (the gathers are collective); which rank sends to
which engine, and whether by CUDA IPC or by value, follows workers/weights.py."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import torch
import torch.distributed as dist

from workers.weights import actor_gpu, gpu_identity, pack


class Rank(Protocol):
    """What these functions read of a student rank (workers/student/actor.py's worker)."""

    rank: int
    world_size: int
    device: torch.device
    model: Any  # the FSDP2-sharded KDModel; .lm is the HF model
    ema: dict[str, torch.Tensor] | None  # self-distillation's moving average, if tracked


def buckets(
    state: dict[str, torch.Tensor], bucket_mb: int, cast: torch.dtype | None = None
) -> Iterator[tuple[list[tuple[str, torch.Tensor]], int]]:
    """(named tensors, bytes) buckets of ~bucket_mb, emptying `state` as it goes (each fp32
    tensor is freed once cast); floating tensors cast to `cast` when given."""
    bucket: list[tuple[str, torch.Tensor]] = []
    size = 0
    for name in list(state):
        tensor = state.pop(name)
        if cast is not None and tensor.is_floating_point():
            tensor = tensor.to(cast)
        bucket.append((name, tensor))
        size += tensor.numel() * tensor.element_size()
        if size >= bucket_mb << 20 or not state:
            yield bucket, size
            bucket, size = [], 0


def model_state(worker: Rank, on_gpu: bool = False) -> dict[str, torch.Tensor]:
    """The model's full state under HF names on rank 0 (on CPU, or on this rank's GPU with
    on_gpu); all ranks must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=not on_gpu)
    state = get_model_state_dict(worker.model.lm, options=opts)
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


@torch.no_grad()
def full_params(worker: Rank, ema: bool = False, on_gpu: bool = False) -> dict[str, torch.Tensor]:
    """The parameters (or their EMA) as full tensors under HF names, on rank 0 ({} on the
    others), in host memory or (on_gpu) on its card; all ranks must call it (each tensor is
    all-gathered)."""
    if not ema:
        source = dict(worker.model.lm.named_parameters())
    elif worker.ema is None:
        raise RuntimeError("no EMA is tracked (self_distill.mode=ema starts it)")
    else:
        source = worker.ema
    out = {}
    for name, t in source.items():
        full = t.full_tensor() if hasattr(t, "full_tensor") else t
        if worker.rank == 0:
            out[name] = full.detach() if on_gpu else full.detach().cpu()
    return out


def push_to_teachers(worker: Rank, teachers: list, ema: bool, bucket_mb: int) -> int:
    """Self-distillation: the weights (or their EMA) into the teacher engine actors, in
    buckets, from rank 0. A teacher on rank 0's card gets CUDA IPC handles to them, any other
    CPU tensors through Ray. Returns bytes."""
    import ray

    me = gpu_identity() if worker.device.type == "cuda" and worker.rank == 0 else None
    ipc = [me is not None and ray.get(t.__ray_call__.remote(actor_gpu)) == me for t in teachers]
    sent = 0
    state = full_params(worker, ema, on_gpu=any(ipc))  # teachers copy a bucket before returning
    for bucket, size in buckets(state, bucket_mb):
        ray.get(
            [
                t.update_weights.remote([(n, pack(x, i)) for n, x in bucket])
                for t, i in zip(teachers, ipc, strict=True)
            ]
        )
        sent += size
    return sent


def push_to_engines(worker: Rank, engines: list, bucket_mb: int) -> int:
    """Stream the weights to rollout engine actors in buckets of ~bucket_mb.

    An engine on a rank's GPU gets CUDA IPC handles from that rank (colocated replicas: each
    rank feeds its own); every other engine gets CPU tensors from rank 0. Each engine has the
    new weights and flushed caches when this returns. Returns bytes sent per engine.
    """
    import ray

    me = gpu_identity() if worker.device.type == "cuda" else None
    rank_gpus: list = [None] * worker.world_size
    dist.all_gather_object(rank_gpus, me)
    where = [ray.get(e.__ray_call__.remote(actor_gpu)) for e in engines]
    sender = [rank_gpus.index(g) if g is not None and g in rank_gpus else 0 for g in where]
    same_gpu = [g is not None and g == rank_gpus[s] for g, s in zip(where, sender, strict=True)]
    # on GPU with an engine to feed by IPC, every rank holds the full weights on its card;
    # otherwise rank 0 alone, in host memory
    state = model_state(worker, on_gpu=any(same_gpu))
    mine = [i for i, s in enumerate(sender) if s == worker.rank]
    engines, same_gpu = [engines[i] for i in mine], [same_gpu[i] for i in mine]
    if not engines:
        return 0
    # On GPU the engines compute in bf16: sending fp32 master weights would double the bytes.
    cast = torch.bfloat16 if worker.device.type == "cuda" else None
    keep_alive: list[torch.Tensor] = []  # IPC'd tensors must outlive the engines' flush
    sent = 0
    # Every name goes, a tied lm_head too: without "lm_head.weight" vLLM CPU's layer-wise
    # reload keeps the old head (its log-probs then miss the student's by up to 0.4).
    for bucket, size in buckets(state, bucket_mb, cast):
        keep_alive.extend(t for _, t in bucket)
        ray.get(
            [
                e.update_weights.remote([(n, pack(t, ipc)) for n, t in bucket])
                for e, ipc in zip(engines, same_gpu, strict=True)
            ]
        )
        sent += size
    ray.get([e.flush.remote() for e in engines])
    keep_alive.clear()
    return sent
