"""Where the roles' actors go, as one Ray placement group (`ray.placement`).

- none: each actor asks for its own role's `ray.<role>` resources and Ray places it;
- colocated: one bundle per student rank, holding rank i, rollout replica i and teacher
  replica i (on GPUs: every card runs one of each, so weights and hidden states move by CUDA
  IPC on the card);
- split: the teacher replicas in bundles of their own (their own cards), rank i and rollout
  replica i together in the others.

A bundle asks for the sum of what its actors ask for (`ray.<role>`), so a bundle with GPUs
lands on one card; the group is reserved before any actor starts, and a cluster that cannot
hold it is named in one sentence.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import ray

from ondistill.config import Config, ConfigError, Placement
from ondistill.teachers import teacher_list


@dataclass(frozen=True)
class Slot:
    group: Any  # ray.util.placement_group.PlacementGroup
    bundle: int


@dataclass
class Layout:
    """Per role, each actor's slot (None: ray.<role> alone decides)."""

    rollout: list[Slot | None] = field(default_factory=list)
    teacher: list[Slot | None] = field(default_factory=list)
    student: list[Slot | None] = field(default_factory=list)
    bundles: list[list[str]] = field(default_factory=list)  # who shares each bundle
    group: Any = None  # the placement group, once reserved

    def release(self) -> None:
        if self.group is not None:
            ray.util.remove_placement_group(self.group)
            self.group = None

    def describe(self) -> str:
        return "; ".join(f"bundle {i}: {', '.join(b)}" for i, b in enumerate(self.bundles))


def _add(bundle: dict[str, float], place: Placement) -> None:
    for key, amount in place.amounts().items():
        if amount:
            bundle[key] = bundle.get(key, 0.0) + amount


def plan(cfg: Config) -> tuple[list[dict[str, float]], list[list[str]]]:
    """(bundle resources, actor names per bundle) of cfg.ray.placement, for the run's one
    teacher (several are refused with a placement); empty for none."""
    mode, ranks, teacher = cfg.ray.placement, cfg.student.world_size, teacher_list(cfg)[0]
    reps = {"rollout": cfg.rollout.replicas, "teacher": teacher.engine.replicas}
    if mode == "none":
        return [], []
    colocated = ("rollout", "teacher") if mode == "colocated" else ("rollout",)
    for role in colocated:
        if reps[role] > ranks:
            raise ConfigError(
                f"ray.placement={mode} puts {role} replica i beside student rank i, but "
                f"{role}.replicas={reps[role]} > student.world_size={ranks}; lower it, or use "
                "ray.placement=none."
            )
    places = {"rollout": cfg.ray.rollout, "teacher": teacher.ray, "student": cfg.ray.student}
    names: list[list[str]] = [[f"student {i}"] for i in range(ranks)]
    for role in colocated:
        for i in range(reps[role]):
            names[i].append(f"{role} {i}")
    if mode == "split":
        names += [[f"teacher {j}"] for j in range(reps["teacher"])]
    bundles = []
    for members in names:
        bundle: dict[str, float] = {}
        for member in members:
            _add(bundle, places[member.split()[0]])
        bundles.append(bundle)
    return bundles, names


def reserve(cfg: Config, timeout: float = 120.0) -> Layout:
    """Reserve cfg.ray.placement's bundles and say which slot each actor takes."""
    from ray.util import placement_group

    bundles, names = plan(cfg)
    layout = Layout(
        rollout=[None] * cfg.rollout.replicas,
        teacher=[None] * teacher_list(cfg)[0].engine.replicas,
        student=[None] * cfg.student.world_size,
        bundles=names,
    )
    if not bundles:
        return layout
    group = placement_group(bundles, strategy="PACK")
    ready, _ = ray.wait([group.ready()], timeout=timeout)
    if not ready:
        ray.util.remove_placement_group(group)
        raise ConfigError(
            f"ray.placement={cfg.ray.placement} needs bundles {bundles} and the cluster cannot "
            f"hold them ({ray.cluster_resources()}); lower the ray.<role> requests or the "
            "replicas, or add nodes."
        )
    layout.group = group
    for i, members in enumerate(names):
        for member in members:
            role, index = member.split()
            getattr(layout, role)[int(index)] = Slot(group, i)
    return layout
