"""Worker groups: Ray actors behind ordinary typed methods.

Each method scatters a batch over its actors, gathers the results and combines them; nothing
is attached at runtime. Ray is imported here (and in the actors), nowhere in ondistill core.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
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
from workers.engines import ROLLOUT_BACKENDS, TEACHER_BACKENDS, TeacherEngine, load_class
from workers.placement import Slot
from workers.student.step_metrics import student_step_metrics


def _remote(cls: type, place: Placement, slot: Slot | None = None) -> Any:
    """cls as a Ray actor class asking for `place`, in `slot` of a placement group if given."""
    options: dict[str, Any] = dict(
        num_cpus=place.cpus, num_gpus=place.gpus, resources=dict(place.resources) or None
    )
    if place.env:  # merged with the job's env_vars by Ray
        options["runtime_env"] = {"env_vars": dict(place.env)}
    if slot is not None:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
            placement_group=slot.group, placement_group_bundle_index=slot.bundle
        )
    return ray.remote(**options)(cls)


def tp_engine_placement(place: Placement, tp_size: int) -> Placement:
    """What one actor running all tp_size ranks of a teacher replica itself (SGLang) asks Ray
    for, given what one rank asks for: tp_size whole cards where each rank has a card of its
    own, else its share of one card while seeing every card of the node (its engine puts its
    ranks on that card and the next ones, beside the actors sharing them)."""
    if tp_size == 1 or place.gpus == 0:
        return place
    if place.gpus >= 1:
        return replace(place, gpus=place.gpus * tp_size)
    return replace(place, env={**place.env, "RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES": "1"})


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
        for key, amount in place.amounts().items():
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
                f"has {have.get(key, 0.0):g}; lower student.world_size, the replicas or "
                f"the ray.<role> requests, or add nodes with that resource."
            )


class RolloutGroup:
    """rollout.replicas engine actors, data-parallel: a batch's prompts are split over them in
    contiguous parts and the answers gathered back in order."""

    def __init__(
        self,
        backend: str,
        model_dir: str,
        cfg: RolloutConfig,
        place: Placement | None = None,
        slots: list[Slot | None] | None = None,
    ):
        """slots: each replica's place in the run's placement group (workers/placement.py)."""
        cls = load_class(ROLLOUT_BACKENDS, backend)
        place = place or Placement()
        self.actors = []
        for slot in slots or [None] * cfg.replicas:
            self.actors.append(_remote(cls, place, slot).remote(model_dir, cfg))
            if place.gpus:
                # vLLM sizes its KV cache from the GPU memory it sees free while it starts: let
                # it finish before the next engine, the teacher and student allocate.
                ray.get(self.actors[-1].__ray_call__.remote(lambda actor: None))
        self.backend = backend

    def generate(
        self, prompts: TensorDict, seed: int | None = None, greedy: bool = False
    ) -> TensorDict:
        """greedy: one temperature-0 answer per prompt instead of rollout.n_samples samples."""
        return self.submit(prompts, seed, greedy)()

    def submit(
        self, prompts: TensorDict, seed: int | None = None, greedy: bool = False
    ) -> Callable[[], TensorDict]:
        """Start generating and return at once; calling the result waits for the batch.
        Calls to each engine run in the order they are made (weight pushes included)."""
        parts = B.split_rows(prompts, len(self.actors))
        refs = [
            a.generate.remote(p, seed, greedy) for a, p in zip(self.actors, parts, strict=False)
        ]

        def gather() -> TensorDict:
            parts = ray.get(refs)
            for i, part in enumerate(parts):
                part.set(B.ROLLOUT_REPLICA, torch.full((part.batch_size[0],), i))
            return B.cat_rows(parts)

        return gather

    def sleep(self, drop_weights: bool = False) -> None:
        """Let the engines free their accelerator memory until next used (no-op on CPU);
        drop_weights: see RolloutEngine.sleep."""
        ray.get([a.sleep.remote(drop_weights) for a in self.actors])

    @property
    def handles(self) -> list:
        return list(self.actors)

    def kill(self) -> None:
        for a in self.actors:
            ray.kill(a)  # also fine if it already died


class TeacherGroup:
    """teacher.replicas scoring actors, data-parallel. Training batches go from them straight
    to the student ranks (score_parts); evaluation gathers them on the driver (score)."""

    def __init__(
        self,
        backend: str,
        model_dir: str,
        cfg: TeacherConfig,
        place: Placement | None = None,
        slots: list[Slot | None] | None = None,
    ):
        cls: type[TeacherEngine] = load_class(TEACHER_BACKENDS, backend)
        self.actors = []  # one per replica (its tensor-parallel rank 0)
        self.followers: list[list] = []  # each replica's other tensor-parallel ranks
        for slot in slots or [None] * cfg.replicas:
            if cfg.tp_size == 1 or cls.owns_tp_ranks:
                own = tp_engine_placement(place or Placement(), cfg.tp_size)
                self.actors.append(_remote(cls, own, slot).remote(model_dir, cfg))
                continue
            remote = _remote(cls, place or Placement(), slot)
            ranks = [remote.remote(model_dir, cfg, r) for r in range(cfg.tp_size)]
            master = ray.get(ranks[0].tp_address.remote())
            ray.get([r.join.remote(master) for r in ranks])
            self.actors.append(ranks[0])
            self.followers.append(ranks[1:])
        self.cfg, self.can_share = cfg, cls.shares_gpu and cfg.tp_size == 1
        self.share = False

    def share_gpu_with(self, student: StudentGroup) -> bool:
        """Decide, and return, whether hidden states are handed over on the GPU: where teacher
        replica i and student rank i share a card, for every i (one replica per rank: each
        keeps only its latest batch alive). The rank then maps the replica's tensor through
        CUDA IPC instead of receiving ~2 GB per step (512 x 512 tokens x 4096 x bf16) through
        host memory and Ray's store."""
        from workers.weights import actor_gpu

        paired = len(self.actors) == student.world_size
        if self.can_share and self.cfg.share_gpu and not self.cfg.topk and paired:
            mine = ray.get([a.__ray_call__.remote(actor_gpu) for a in self.actors])
            theirs = ray.get([a.__ray_call__.remote(actor_gpu) for a in student.actors])
            self.share = all(m is not None and m == t for m, t in zip(mine, theirs, strict=True))
        return self.share

    def score_parts(
        self, batch: TensorDict, parts: int, hand_over: bool = False, by_tokens: bool = False
    ) -> list:
        """Score `batch` in `parts` pieces (part i on replica i mod replicas) and return a
        Ray reference per piece, without waiting: whoever holds a reference (a student rank)
        fetches the scored rows from the replica's node itself, so they never pass through
        this process. hand_over: the pieces go straight into one train step, so their hidden
        states may stay on the GPU (share_gpu_with) until the next call. by_tokens: pieces
        balanced by token count (ragged batches), else contiguous and even in rows."""
        pieces = B.balance_rows(batch, parts) if by_tokens else B.split_rows(batch, parts)
        return self.score_pieces(pieces, hand_over)

    def score_pieces(self, pieces: list[TensorDict], hand_over: bool = False) -> list:
        """score_parts of pieces already cut: piece i on replica i mod replicas."""
        share = (
            {"share": True} if hand_over and self.share and len(pieces) == len(self.actors) else {}
        )
        refs = []
        for i, piece in enumerate(pieces):
            replica = i % len(self.actors)
            if self.followers:  # tensor-parallel: every rank runs the same forwards
                piece = ray.put(piece)
                for rank in self.followers[replica]:
                    rank.follow.remote(piece)
            refs.append(self.actors[replica].score.remote(piece, **share))
        return refs

    def score(self, batch: TensorDict, hand_over: bool = False) -> TensorDict:
        """The scored batch here (evaluation keeps it; a translator merges it); hand_over as in
        score_parts."""
        parts = ray.get(self.score_parts(batch, len(self.actors), hand_over))
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def update_weights(self, named_tensors: list[tuple[str, torch.Tensor]]) -> None:
        ray.get([a.update_weights.remote(named_tensors) for a in self.actors])

    def kill(self) -> None:
        for a in self.actors + [f for ranks in self.followers for f in ranks]:
            try:  # engines with server processes of their own stop them first
                ray.get(a.shutdown.remote(), timeout=30)
            except Exception:
                pass  # already dead, or hung: the kill below ends the actor either way
            ray.kill(a)


class StudentGroup:
    """world_size FSDP2 ranks. Rows of a batch are split evenly over ranks."""

    def __init__(
        self,
        cfg: StudentConfig,
        loss: LossConfig,
        student_dir: str,
        teachers: dict[str, tuple[str, str]],
        total_steps: int,
        place: Placement | None = None,
        slots: list[Slot | None] | None = None,
    ):
        """teachers: name -> (model directory, cross-tokenizer method), one entry or several
        (trainer/teachers.py); the ranks hold each one's output head."""
        from workers.student.actor import StudentWorker

        self.world_size, self.student_dir = cfg.world_size, student_dir
        self.by_tokens = cfg.micro_batch_tokens > 0  # ranks get rows balanced by tokens
        self.actors = [
            _remote(StudentWorker, place or Placement(), slot).remote(r, cfg.world_size, cfg, loss)
            for r, slot in enumerate(slots or [None] * cfg.world_size)
        ]
        master = ray.get(self.actors[0].address.remote())
        counts = ray.get(
            [a.setup.remote(master, student_dir, teachers, total_steps) for a in self.actors]
        )
        self.num_params = counts[0]

    def _split(self, td: TensorDict) -> list[TensorDict]:
        if td.batch_size[0] % self.world_size:
            raise ValueError(
                f"batch of {td.batch_size[0]} rows does not split over "
                f"{self.world_size} student ranks; make it a multiple."
            )
        return list(td.chunk(self.world_size))

    def train_teachers(
        self,
        parts: list[list[B.TeacherPart]],
        tokens: int,
        objective: str | None = None,
        divergence: str | None = None,
        lr_scale: float = 1.0,
    ) -> dict[str, float]:
        """One update on a step of `tokens` response tokens, given per rank as one part per
        teacher that scored rows of it (TeacherSet.score_parts)."""
        if len(parts) != self.world_size:
            raise ValueError(f"{len(parts)} parts for {self.world_size} student ranks")
        ranks = ray.get(
            [
                a.train_step.remote(p, objective, divergence, lr_scale)
                for a, p in zip(self.actors, parts, strict=True)
            ]
        )
        return student_step_metrics(ranks, tokens)

    def token_stats(
        self, batch: TensorDict, divergences: tuple[str, ...] = (), teacher: str | None = None
    ) -> dict[str, torch.Tensor]:
        """Per-token stats over all response tokens of the batch, in row order, against the
        teacher called `teacher` (its scores in the batch)."""
        parts = ray.get(
            [
                a.token_stats.remote(s, divergences, teacher)
                for a, s in zip(self.actors, self._split(batch), strict=True)
            ]
        )
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def xtok_stats(self, batch: TensorDict, teacher: str | None = None) -> dict[str, torch.Tensor]:
        """Per aligned chunk held-out metrics (ondistill.xtok.losses.aligned_stats), in row
        order, against the teacher called `teacher`."""
        parts = ray.get(
            [
                a.xtok_stats.remote(s, teacher)
                for a, s in zip(self.actors, self._split(batch), strict=True)
            ]
        )
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def push_weights(self, rollout: RolloutGroup) -> int:
        """Every rollout replica gets the student's weights; returns bytes sent per engine."""
        return max(ray.get([a.push_weights.remote(rollout.handles) for a in self.actors]))

    def track_ema(self, decay: float) -> None:
        ray.get([a.track_ema.remote(decay) for a in self.actors])

    def push_teacher(self, teacher: TeacherGroup, ema: bool) -> int:
        """Self-distillation: every teacher replica gets the student's weights or their EMA
        from rank 0 (not through this process)."""
        return ray.get([a.push_teacher.remote(teacher.actors, ema) for a in self.actors])[0]

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
