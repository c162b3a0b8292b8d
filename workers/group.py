"""Worker groups: Ray actors behind ordinary typed methods.

Each method scatters a batch over its actors, gathers the results and combines them; nothing
is attached at runtime. Ray is imported here (and in the actors), nowhere in ondistill core.
"""

from __future__ import annotations

from collections.abc import Callable

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
from workers.engines import ROLLOUT_BACKENDS, TEACHER_BACKENDS, TeacherEngine, load_class


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
        cls: type[TeacherEngine] = load_class(TEACHER_BACKENDS, backend)
        self.actor = _remote(cls, place or Placement()).remote(model_dir, cfg)
        self.cfg, self.can_share = cfg, cls.shares_gpu
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
        from workers.student.actor import StudentWorker

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
        from trainer.metrics import student_step_metrics

        B.check_scored(batch, "student.train_step")
        tokens, rows = int(batch[B.RESPONSE_MASK].sum()), batch.batch_size[0]
        ranks = ray.get(
            [
                a.train_step.remote(s, tokens, rows, objective, divergence)
                for a, s in zip(self.actors, self._split(batch), strict=True)
            ]
        )
        return student_step_metrics(ranks, batch)

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
