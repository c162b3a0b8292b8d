"""Worker groups: Ray actors behind ordinary typed methods.

Each method scatters a batch over its actors, gathers the results and combines them; nothing
is attached at runtime. Ray is imported here (and in the actors), nowhere in ondistill core.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ray
import torch
from tensordict import TensorDict

from ondistill import batch as B
from ondistill.config import (
    ConfigError,
    LossConfig,
    Placement,
    RolloutConfig,
    StudentConfig,
    TeacherConfig,
)
from workers.engines import ROLLOUT_BACKENDS, TEACHER_BACKENDS, load_class


def _remote(cls: type, place: Placement):
    return ray.remote(
        num_cpus=place.cpus, num_gpus=place.gpus, resources=dict(place.resources) or None
    )(cls)


def node_of(actor) -> str:
    """The Ray node an actor runs on (any actor class): the first 12 hex digits of its id,
    enough to tell nodes apart in a log line."""
    return ray.get(actor.__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id()))[
        :12
    ]


def check_resources(requests: dict[str, tuple[Placement, int]]) -> None:
    """Fail before any actor starts if the cluster cannot hold what the roles ask for.
    requests: role -> (placement per actor, number of actors)."""
    have = ray.cluster_resources()
    need: dict[str, float] = {}
    for place, count in requests.values():
        for key, amount in (("CPU", place.cpus), ("GPU", place.gpus), *place.resources.items()):
            need[key] = need.get(key, 0.0) + amount * count
    for key, amount in need.items():
        if amount > have.get(key, 0.0) + 1e-9:
            roles = ", ".join(
                f"{r} x{n}"
                for r, (p, n) in requests.items()
                if key in ("CPU", "GPU") or key in p.resources
            )
            raise ConfigError(
                f"the roles ({roles}) ask Ray for {amount:g} {key} but the cluster "
                f"has {have.get(key, 0.0):g}; lower student.world_size or the "
                f"ray.<role> placement, or add nodes with that resource."
            )


class RolloutGroup:
    """One rollout engine actor (replicas are a later extension of the same interface)."""

    def __init__(
        self, backend: str, model_dir: str, cfg: RolloutConfig, place: Placement | None = None
    ):
        cls = load_class(ROLLOUT_BACKENDS, backend)
        place = place or Placement()
        self.actor = _remote(cls, place).remote(model_dir, cfg)
        self.backend = backend
        if place.gpus:
            # vLLM sizes its KV cache from the GPU memory it sees free while it starts: let it
            # finish before the teacher and student allocate on a shared card.
            ray.get(self.actor.__ray_call__.remote(lambda actor: None))

    def generate(
        self, prompts: TensorDict, seed: int | None = None, greedy: bool = False
    ) -> TensorDict:
        """greedy: one temperature-0 answer per prompt instead of rollout.n_samples samples."""
        return self.submit(prompts, seed, greedy)()

    def submit(
        self, prompts: TensorDict, seed: int | None = None, greedy: bool = False
    ) -> Callable[[], TensorDict]:
        """Start generating and return at once; calling the result waits for the batch.
        Calls to the engine run in the order they are made (weight pushes included)."""
        ref = self.actor.generate.remote(prompts, seed, greedy)
        return lambda: ray.get(ref)

    def sleep(self) -> None:
        """Let the engine free its accelerator memory until it is next used (no-op on CPU)."""
        ray.get(self.actor.sleep.remote())

    @property
    def handles(self) -> list:
        return [self.actor]

    def kill(self) -> None:
        ray.kill(self.actor)  # also fine if it already died


class TeacherGroup:
    def __init__(
        self, backend: str, model_dir: str, cfg: TeacherConfig, place: Placement | None = None
    ):
        cls = load_class(TEACHER_BACKENDS, backend)
        self.actor = _remote(cls, place or Placement()).remote(model_dir, cfg)
        self.cfg, self.can_share = cfg, getattr(cls, "shares_gpu", False)
        self.share = False

    def share_gpu_with(self, student: StudentGroup) -> bool:
        """Hand hidden states over on the GPU when the student is one rank on the teacher's
        card: the student maps the teacher's tensor through CUDA IPC instead of receiving
        ~2 GB per step (512 x 512 tokens x 4096 x bf16) through host memory and Ray's store."""
        from workers.weights import actor_gpu

        if self.can_share and self.cfg.share_gpu and not self.cfg.topk and student.world_size == 1:
            mine = ray.get(self.actor.__ray_call__.remote(actor_gpu))
            self.share = mine is not None and mine == ray.get(
                student.actors[0].__ray_call__.remote(actor_gpu)
            )
        return self.share

    def score(self, batch: TensorDict, hand_over: bool = False) -> TensorDict:
        """hand_over: the batch goes straight into one train step, so its hidden states may stay
        on the GPU (share_gpu_with); they live only until the next call. Batches kept for
        later (evaluation) always come back by value."""
        if hand_over and self.share:
            return ray.get(self.actor.score.remote(batch, share=True))
        return ray.get(self.actor.score.remote(batch))

    def update_weights(self, named_tensors: list[tuple[str, torch.Tensor]]) -> None:
        ray.get(self.actor.update_weights.remote(named_tensors))

    def kill(self) -> None:
        try:  # engines with server processes of their own stop them first
            ray.get(self.actor.shutdown.remote(), timeout=30)
        except Exception:
            pass  # already dead, or hung: the kill below ends the actor either way
        ray.kill(self.actor)


class CrossTokenizerTeacher:
    """A TeacherGroup behind a tokenizer translation (ondistill/xtok/translate.py): scores
    student batches by re-tokenizing their text for the teacher, and returns the teacher's
    hidden states in its own positions plus the alignment (B.SCORED_XT keys)."""

    def __init__(self, group: TeacherGroup, translator):
        self.group, self.translator = group, translator
        self.actor = group.actor

    def score(self, batch: TensorDict, hand_over: bool = False) -> TensorDict:
        teacher_batch, s_chunk, t_chunk = self.translator.to_teacher(batch)
        return self.translator.merge(batch, self.group.score(teacher_batch), s_chunk, t_chunk)

    def kill(self) -> None:
        self.group.kill()


class StudentGroup:
    """world_size FSDP2 ranks. Rows of a batch are split evenly over ranks."""

    def __init__(
        self,
        cfg: StudentConfig,
        loss: LossConfig,
        student_dir: str,
        teacher_dir: str | None,
        total_steps: int,
        place: Placement | None = None,
    ):
        from workers.student.fsdp import StudentWorker

        self.world_size, self.student_dir = cfg.world_size, student_dir
        cls = _remote(StudentWorker, place or Placement())
        self.actors = [cls.remote(r, cfg.world_size, cfg, loss) for r in range(cfg.world_size)]
        master = ray.get(self.actors[0].address.remote())
        counts = ray.get(
            [a.setup.remote(master, student_dir, teacher_dir, total_steps) for a in self.actors]
        )
        self.num_params = counts[0]

    def _split(self, td: TensorDict) -> list[TensorDict]:
        if td.batch_size[0] % self.world_size:
            raise ValueError(
                f"batch of {td.batch_size[0]} rows does not split over "
                f"{self.world_size} student ranks; make it a multiple."
            )
        return list(td.chunk(self.world_size))

    def train_step(
        self, batch: TensorDict, objective: str | None = None, divergence: str | None = None
    ) -> dict[str, float]:
        """objective, divergence: this step's, when the schedule's stage sets them (else the
        loss config's)."""
        B.check(batch, B.scored_keys(batch), "student.train_step")
        mask = batch[B.RESPONSE_MASK]
        tokens, rows = int(mask.sum()), batch.batch_size[0]
        results = ray.get(
            [
                a.train_step.remote(s, tokens, rows, objective, divergence)
                for a, s in zip(self.actors, self._split(batch), strict=True)
            ]
        )
        metrics = {
            "loss": sum(r["loss"] for r in results),
            "kl": sum(r["kl"] for r in results),
            "grad_norm": results[0]["grad_norm"],
            "lr": results[0]["lr"],
            **(
                {"alloc_retries": results[0]["alloc_retries"]}
                if "alloc_retries" in results[0]
                else {}
            ),
            "response_tokens": tokens,
        }
        if B.STUDENT_CHUNK in batch.keys():
            from ondistill.xtok.translate import aligned_fraction

            metrics["aligned_fraction"] = aligned_fraction(batch)
        if B.TEACHER_TOPK_LOGPROBS in batch.keys():
            mass = batch[B.TEACHER_TOPK_LOGPROBS].exp().sum(-1)[mask]
            metrics["teacher_topk_mass"] = float(mass.mean())
        return metrics

    def token_stats(
        self, batch: TensorDict, divergences: tuple[str, ...] = ()
    ) -> dict[str, torch.Tensor]:
        """Per-token stats over all response tokens of the batch, in row order."""
        parts = ray.get(
            [
                a.token_stats.remote(s, divergences)
                for a, s in zip(self.actors, self._split(batch), strict=True)
            ]
        )
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def xtok_stats(self, batch: TensorDict) -> dict[str, torch.Tensor]:
        """Per aligned chunk held-out metrics (ondistill.xtok.losses.aligned_stats), in row
        order."""
        parts = ray.get(
            [a.xtok_stats.remote(s) for a, s in zip(self.actors, self._split(batch), strict=True)]
        )
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def push_weights(self, rollout: RolloutGroup) -> int:
        return ray.get([a.push_weights.remote(rollout.handles) for a in self.actors])[0]

    def save_hf(self, path: str) -> None:
        ray.get([a.save_hf.remote(path, self.student_dir) for a in self.actors])

    def save(self, path: str) -> None:
        ray.get([a.save.remote(path) for a in self.actors])

    def load(self, path: str) -> None:
        ray.get([a.load.remote(path) for a in self.actors])

    def kill(self) -> None:
        """Stop every rank; tolerant of ranks that already died."""
        for a in self.actors:
            ray.kill(a)


# glibc hands every allocation over 128 KiB-32 MiB straight back to the kernel when it is
# freed, so each [chunk, vocab] temporary of the loss, and every activation, is page-faulted in
# afresh on the next step. On the 2-core VMs here the faults cost more than the arithmetic
# (scripts/profile_train.py: KD loss of 512 tokens x 49k vocab 2.1 s -> 1.3 s, page faults
# 1.87M -> 0.69M). Keep freed memory in the process instead; RSS stays at the step's peak.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(4 << 30), "MALLOC_TRIM_THRESHOLD_": str(8 << 30)}

# By default a torch tensor crosses Ray pickled through torch.save: a serialize copy, a copy
# into the object store, a deserialize copy, at ~200 MB/s per hop on the 2-core VMs (0.54 GB of
# teacher hidden states: 2.6 s teacher -> driver, 2.6 s driver -> student). Ray's zero-copy
# reducer sends the tensor's bytes as an out-of-band buffer and the receiver maps them from the
# store (0.06-0.4 s for the same hop). The price: a received CPU tensor views the shared store,
# so no stage may write into a tensor it received (none does; they copy or build new ones).
ZERO_COPY_ENV = {"RAY_ENABLE_ZERO_COPY_TORCH_TENSORS": "1"}


def quiet_transport_warnings() -> None:
    """Every process warns once that zero-copy tensors are read-only and once that torch got a
    non-writable array; both describe the contract above, not a fault."""
    import warnings

    warnings.filterwarnings("ignore", message="Zero-copy tensor serialization is enabled")
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    # vLLM's CPU build touches a deprecated torch alias at import; nothing for a user to do.
    warnings.filterwarnings("ignore", message=".*torch.distributed.reduce_op.*is deprecated")


def check_reachable(address: str, timeout: float = 10.0) -> None:
    """Ray retries an unreachable head for minutes, warning all the while; ask the port first
    and say what is wrong in one sentence."""
    import socket

    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(
            f"ray.address={address} is not host:port (or auto); e.g. "
            "ray.address=10.0.0.5:6379, or leave it empty for a local Ray."
        )
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise ConfigError(
            f"ray.address={address}: no Ray cluster answers there ({e.strerror or e}"
            "); start its head with scripts/cluster.sh head, or leave ray.address "
            "empty for a local Ray."
        ) from None


def init_ray(address: str = "", num_cpus: int = 0, **kwargs: Any) -> None:
    """Start a local Ray (default) or join a cluster (address='auto' or 'host:port')."""
    import os

    if ray.is_initialized():
        return
    # Engine logs and model-loading bars from actors would bury the driver's step bar.
    env = {
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "TRANSFORMERS_VERBOSITY": "error",
        "VLLM_LOGGING_LEVEL": "ERROR",
        "VLLM_CONFIGURE_LOGGING": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "TORCH_CPP_LOG_LEVEL": "ERROR",
        **MALLOC_ENV,
        **ZERO_COPY_ENV,
    }
    kwargs.setdefault(
        "runtime_env", {"env_vars": env, "worker_process_setup_hook": quiet_transport_warnings}
    )
    # The driver's serializer reads the switch when it connects; ray was imported before it.
    from ray._private import ray_constants

    ray_constants.RAY_ENABLE_ZERO_COPY_TORCH_TENSORS = True
    quiet_transport_warnings()
    if address:
        if address != "auto":
            check_reachable(address)
        ray.init(address=address, **kwargs)
    else:
        # Actors ask for 1 CPU each as a placement token; locally that must not exceed the
        # count Ray believes in, so give it at least 8 (threads are set per actor).
        # address="local": a new instance of our own, even where a `ray start` cluster (or the
        # stale file of one) is on the machine, which ray.init() would otherwise join. Its
        # token authentication is on (Ray generates the token); the banner saying so, and
        # "Started a local Ray instance", are not for the user of a local run.
        import logging

        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
            logging.ERROR
        )
        ray.init(
            address="local",
            num_cpus=num_cpus or max(8, os.cpu_count() or 1),
            include_dashboard=False,
            logging_level=logging.WARNING,
            **kwargs,
        )
