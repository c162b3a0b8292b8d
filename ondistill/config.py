"""Typed configuration: the one source of defaults, registered in Hydra's ConfigStore.

Each key lives here alone: its type (an enum for a choice, which OmegaConf checks on the
command line), its range and whether it is operational, as field metadata (ondistill/rules.py
walks them). Each worker receives only its own section (e.g. `RolloutConfig`), never the whole
tree. Checks across keys are in ondistill/config_checks.py; the schedule in ondistill/stages.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum, auto
from typing import Any

from ondistill.objective import CrossTokenizer, DivergenceName, DivergenceParams, ObjectiveName
from ondistill.objective import ObjectiveSpec as _Spec
from ondistill.rules import ConfigError, at_least, operational, positive, ranged, unit

__all__ = ["ConfigError"]  # raised by every check; its home is ondistill/rules.py

BUILTIN_TEACHER = "builtin:smollm2-135m-instruct"


class RolloutBackend(StrEnum):  # workers/engines.py registers each but auto
    auto = "auto"  # vllm when installed, else hf
    hf = "hf"
    vllm = "vllm"


class TeacherBackend(StrEnum):  # workers/engines.py registers each but auto
    auto = "auto"  # sglang on a GPU driver where SGLang is importable, else hf
    hf = "hf"
    sglang = "sglang"


class Dtype(StrEnum):  # torch's names (workers read them as getattr(torch, name))
    float32 = auto()
    bfloat16 = auto()
    float16 = auto()


class ParamDtype(StrEnum):
    float32 = auto()
    bfloat16 = auto()


class SelfDistill(StrEnum):
    none = auto()
    live = auto()
    ema = auto()


class LrSchedule(StrEnum):
    cosine = auto()
    linear = auto()
    constant = auto()


class Reduction(StrEnum):
    token = auto()
    sequence = auto()


class BadRows(StrEnum):
    error = auto()
    skip = auto()


class WandbMode(StrEnum):
    offline = auto()
    online = auto()
    disabled = auto()


class NonFinite(StrEnum):
    stop = auto()
    skip = auto()


# (the functional form: a member named `split` in a class body would shadow str.split)
PlacementMode = StrEnum("PlacementMode", ["none", "colocated", "split"])


class RoutingMode(StrEnum):
    field = auto()
    mixture = auto()


@dataclass
class ModelConfig:
    teacher: str = BUILTIN_TEACHER  # HF model directory, or a builtin: name
    student: str = BUILTIN_TEACHER  # HF model directory, or a builtin: name
    # Build the student from `student` by keeping only these decoder layers; empty keeps all.
    # The default keeps the first 16 and the last 2 of SmolLM2's 30 decoder layers (~92M of
    # 135M parameters): cut contiguously from the deep middle, the student starts nearer its
    # teacher than one of every 5th layer (measured: forward KL on the teacher's answers 2.9
    # vs 1.9 nats after 40 warm-start steps for 6 spread vs 12 such layers), and 18 layers
    # ended with fewer repeats in greedy answers than 16 (docs/benchmarks.md).
    student_keep_layers: list[int] = field(default_factory=lambda: [*range(16), 28, 29])
    cache_dir: str = operational("~/.cache/ondistill")  # converted checkpoints land here


@dataclass
class DataConfig:
    prompts: str = "builtin"  # a JSONL file of {"prompt": str, "response"?: str} rows
    eval_size: int = at_least(0, 32)  # held-out prompts, taken from the end of the file
    max_prompt_tokens: int = at_least(1, 128)
    chat_template: bool = True  # wrap each prompt in the tokenizer's chat template
    bad_rows: BadRows = BadRows.error
    # A prompt only the teacher sees, for rows without their own "teacher_prompt": a format
    # string of {prompt} and {response} (e.g. "{prompt}\n\nA reference answer: {response}");
    # the student's prompt and response are unchanged. "" = none.
    teacher_prompt: str = ""


@dataclass
class RolloutConfig:
    backend: RolloutBackend = RolloutBackend.auto
    # Data-parallel engines (one actor each, ray.rollout per actor): a step's prompts are split
    # over them, and each prompt's seed depends on its place in the step, not on the replica,
    # so vLLM samples the same tokens for any count (hf samples a batch from one seed).
    replicas: int = at_least(1, 1)
    temperature: float = positive(1.0)
    top_p: float = unit(1.0, low_open=True)
    n_samples: int = at_least(1, 2)  # samples per prompt
    max_new_tokens: int = at_least(1, 48)
    seed: int = 0
    stop_token_ids: list[int] = field(default_factory=list)  # extra stops besides EOS
    ignore_eos: bool = False  # always generate max_new_tokens (benchmarks: fixed work)
    max_model_len: int = at_least(2, 2048)  # vLLM: longest prompt + response it must hold
    # vLLM on GPU: its share, rest for teacher/student
    gpu_memory_utilization: float = ranged(0.3, lambda v: 0 < v <= 1, "in (0, 1]", True)
    sync_every: int = at_least(1, 1)  # push student weights to the engine every k updates
    # vLLM on GPU, asleep between rollouts: 2 drops its weights where the next rollout follows
    # a weight push anyway (sync_every=1): no copies (H200, 1.7B: sleep 0.06 s and push 0.19 s
    # vs 4.8 s and 0.52 s, the same tokens after); otherwise, and with 1, host memory and back
    sleep_level: int = ranged(2, lambda v: v in (1, 2), "1 or 2")
    # torch threads in the engine's process (stages run one at a time)
    threads: int = at_least(1, 2, operational=True)
    # vLLM: compiled decode (CUDA graphs on GPU, torch.compile on CPU); null = on GPU only,
    # since on CPU it adds ~30 s to startup for ~0.4 s less per 64-token step
    compile: bool | None = operational(None)


def sampling_seed(seed: int, call: int) -> int:
    """The sampling seed of the call-th generation of a run seeded with `seed` (the controller
    passes its update number): a function of both, so a resumed run samples what the
    uninterrupted one would have, and the one formula every engine uses."""
    return seed * 1_000_003 + call


@dataclass
class TeacherConfig:
    # auto: sglang on a GPU driver where SGLang is importable (here, or on a PYTHONPATH given
    # in ray.teacher.env), else hf
    backend: TeacherBackend = TeacherBackend.auto
    replicas: int = at_least(1, 1)  # data-parallel teacher actors (ray.teacher per actor)
    # tensor-parallel ranks per replica, for a teacher that does not fit one card. hf:
    # transformers' tp_plan, one Ray actor per rank asking ray.teacher; sglang: one actor runs
    # every rank (a card each: tp_size whole cards, or its share of tp_size cards)
    tp_size: int = at_least(1, 1)
    dtype: Dtype = Dtype.float32
    # 0: send final hidden states; k > 0: send top-k log-probs + tail bucket
    topk: int = at_least(0, 0, " (0 sends hidden states)")
    threads: int = at_least(1, 2, operational=True)
    # hf: sequences per forward (bounds activation memory); 0 = all
    micro_batch_size: int = at_least(0, 0, " (0 scores the whole batch at once)", True)
    # hf: instead, forwards of at most this many tokens (rows of similar length together; with
    # packing, real tokens); 0 = by micro_batch_size
    micro_batch_tokens: int = at_least(0, 0, " (0: micro-batches by rows)", True)
    packing: bool = operational(False)  # hf: rows concatenated without padding (packing.py)
    compile: bool | None = operational(None)  # hf: torch.compile each block; null = on CUDA
    # a one-rank student on the teacher's GPU maps the hidden states through CUDA IPC
    # instead of receiving them through host memory
    share_gpu: bool = operational(True)
    gpu_memory_utilization: float = 0.3  # sglang on GPU: its share of the card (weights + KV)
    # sglang: more Engine keyword arguments, e.g. {attention_backend: triton} where FA3 is absent
    engine_args: dict[str, Any] = field(default_factory=dict)


@dataclass
class SelfDistillConfig:
    """Self-distillation: the teacher is a copy of the student (model.teacher is not read),
    into whose engine the student's weights are pushed every `every` updates: its own (live)
    or their exponential moving average (ema, rate ema_decay)."""

    mode: SelfDistill = SelfDistill.none
    every: int = at_least(1, 1)
    ema_decay: float = unit(0.99, high_open=True)


@dataclass
class StudentConfig:
    world_size: int = at_least(1, 1)  # FSDP2 ranks, one Ray actor each
    lr: float = positive(2e-3)  # peak; warmup then cosine to min_lr_ratio x lr
    weight_decay: float = at_least(0, 0.0)
    warmup_steps: int = at_least(0, 2)
    schedule: LrSchedule = LrSchedule.cosine
    min_lr_ratio: float = ranged(0.1, lambda v: 0 <= v <= 1, "in [0, 1] (a share of student.lr)")
    # sequences per forward/backward; the rest is accumulated
    micro_batch_size: int = at_least(1, 8, operational=True)
    # instead, micro-batches of at most this many tokens, rows balanced over ranks by tokens
    # (ragged on-policy batches waste less on padding); 0 = by micro_batch_size
    micro_batch_tokens: int = at_least(0, 0, " (0: micro-batches by rows)", True)
    packing: bool = operational(False)  # rows concatenated without padding (packing.py)
    grad_clip: float = at_least(0, 1.0, " (0 disables clipping)")
    param_dtype: ParamDtype = ParamDtype.float32  # FSDP2 MixedPrecisionPolicy compute dtype
    threads: int = at_least(1, 2, operational=True)  # torch threads per rank
    compile: bool | None = operational(None)  # torch.compile each block; null = on CUDA only


@dataclass
class LossConfig:
    # divergence | policy_gradient (MiniLLM-style on-policy RKL) | sft (ce_coef x cross-entropy
    # only: plain fine-tuning, the baseline)
    # The math's defaults are its own (ObjectiveSpec, DivergenceParams), read here, not restated.
    objective: ObjectiveName = ObjectiveName(_Spec.objective)
    divergence: DivergenceName = DivergenceName(_Spec.divergence)  # ondistill/divergences/
    jsd_beta: float = unit(DivergenceParams.beta)  # jsd: 0 is forward KL, 1 reverse KL
    skew_alpha: float = unit(DivergenceParams.alpha, high_open=True)  # skew_*_kl
    akl_mu: float = unit(DivergenceParams.mu, True, True)  # adaptive_kl: teacher head mass
    temperature: float = positive(_Spec.temperature)
    # + ce_coef x cross-entropy on the response tokens
    ce_coef: float = at_least(0, _Spec.ce_coef)
    # policy_gradient: gamma of the future-reward sum (0: per token)
    pg_discount: float = unit(0.0)
    pg_clip: float = positive(_Spec.pg_clip)  # policy_gradient: PPO clip of the importance ratio
    # token: mean over all response tokens of the batch; sequence: mean of per-sequence means
    reduction: Reduction = Reduction.token
    chunk_size: int = at_least(1, 512)  # tokens per chunk: extra memory is O(chunk_size x vocab)
    # Teacher with another tokenizer (ondistill/xtok/): none (same tokenizer required) |
    # exact (divergence on the shared vocabulary + tail at aligned positions) | uld (sorted
    # probabilities, any vocabularies) | span (chunk likelihoods, spans merged)
    cross_tokenizer: CrossTokenizer = CrossTokenizer.none

    def spec(self, objective: str | None = None, divergence: str | None = None) -> _Spec:
        """The objective a train step computes; objective and divergence replace this
        section's own when given (a stage of the schedule sets them)."""
        return _Spec(
            objective=objective or self.objective,
            divergence=divergence or self.divergence,
            params=DivergenceParams(beta=self.jsd_beta, alpha=self.skew_alpha, mu=self.akl_mu),
            temperature=self.temperature,
            ce_coef=self.ce_coef,
            pg_clip=self.pg_clip,
        )


@dataclass
class StageConfig:
    """One stage of the training schedule. Unset fields take the run's own setting
    (trainer.on_policy_fraction, loss.divergence)."""

    name: str = ""
    # Its part of trainer.steps (rounded); unset: the rest (the last stage only). A share,
    # not a count, so `trainer.steps=N` scales every stage.
    share: float | None = None
    on_policy_fraction: float | None = ranged(None, lambda v: v is None or 0 <= v <= 1, "in [0, 1]")
    divergence: DivergenceName | None = None
    objective: ObjectiveName | None = None  # loss.objective of this stage
    # x the scheduled learning rate during this stage (a policy-gradient stage after a warm
    # start wants a far smaller step than the warm start does)
    lr_scale: float = positive(1.0)


def _default_stages() -> list[StageConfig]:
    # A student cut from the teacher starts as noise; on-policy reverse KL from there finds a
    # degenerate mode ("A\nA\nA") that the teacher does not punish. So the default schedule
    # first warms the student up on the teacher's own answers (off-policy forward KL, i.e.
    # SeqKD with full distributions), then trains on its own samples.
    # The second stage is GKD (lambda 0.5) with the mass-covering forward KL: on-policy reverse
    # KL right after the warm start still collapsed the greedy answers ("The world of the
    # world's world, ..."); so did an all on-policy second stage with forward KL (greedy
    # 3-gram repeats 0.56 at the lowest KL on student samples): the teacher's answers in
    # GKD's other half keep the greedy path on topic. docs/benchmarks.md, "Quality of the
    # default job".
    return [
        StageConfig("warm_start", 0.6, 0.0, DivergenceName.forward_kl),
        StageConfig("on_policy", None, 0.5, DivergenceName.forward_kl),
    ]


@dataclass
class TrainerConfig:
    steps: int = at_least(0, 70)
    prompts_per_step: int = at_least(1, 8)
    on_policy_fraction: float = unit(1.0)  # GKD lambda: chance a batch is sampled by the student
    # The schedule, in order; [] is one stage of trainer.steps with the settings above.
    stages: list[StageConfig] = field(default_factory=_default_stages)
    eval_every: int = at_least(0, 0, " (0: only before and after training)", True)
    seed: int = 0
    output_dir: str = operational("")  # default: Hydra's run directory; give it to resume a run
    save_student: bool = operational(True)
    # steps; also at the end. 0: only at the end; -1: never
    checkpoint_every: int = ranged(10, lambda v: v >= -1, ">= 0, or -1 for no checkpoints", True)
    keep_checkpoints: int = at_least(1, 2, operational=True)
    resume: str = operational(
        "auto"
    )  # auto: newest complete checkpoint in output_dir, if any | never | a path
    max_restarts: int = at_least(
        0, 2, operational=True
    )  # times the workers are rebuilt from a checkpoint after a crash
    # Generate the next batch while this one is scored and trained (trainer/overlap.py): the
    # samples are one update stale, the step takes max(generate, score + train) instead of
    # the sum. Needs room for the rollout engine awake next to teacher and student.
    overlap: bool = operational(False)
    # A step whose loss or gradient is not finite is never applied; stop: the run ends there
    # (the newest checkpoint and nothing after it kept); skip: it goes on, counting them.
    nonfinite: NonFinite = NonFinite.stop


@dataclass
class LogConfig:
    jsonl: bool = True
    wandb: WandbMode = WandbMode.offline
    wandb_project: str = "ondistill"
    progress: bool = True
    plot: bool = True


@dataclass
class Placement:
    """What one actor of a role asks Ray for. `resources` holds custom Ray resources, e.g. a
    label given to a node with `ray start --resources='{"teacher_node": 1}'`."""

    cpus: float = 1.0
    gpus: float = 0.0
    resources: dict[str, float] = field(default_factory=dict)
    # environment of this role's processes, e.g. {PYTHONPATH: "/opt/sgl:${PYTHONPATH}"} for an
    # engine whose pinned dependencies differ from the rest (Ray expands ${VAR})
    env: dict[str, str] = field(default_factory=dict)

    def amounts(self) -> dict[str, float]:
        """Every resource it asks for, under Ray's names (CPU, GPU, custom)."""
        return {"CPU": self.cpus, "GPU": self.gpus, **self.resources}


@dataclass
class RayConfig:
    address: str = ""  # empty: start a local Ray; "auto" or host:port joins a cluster
    num_cpus: int = 0  # local Ray only; 0: at least 8 placement tokens
    rollout: Placement = field(default_factory=Placement)
    teacher: Placement = field(default_factory=Placement)
    student: Placement = field(default_factory=Placement)  # per FSDP rank
    # none: each actor placed by its role's request alone; colocated: one placement-group
    # bundle per student rank, with rollout and teacher replica i beside rank i; split: the
    # teacher replicas in bundles (cards) of their own (workers/placement.py)
    placement: PlacementMode = PlacementMode.none


@dataclass
class NamedTeacher:
    """One of several teachers (`teachers:`). `model` is read as model.teacher is, `engine` and
    `ray` as the teacher: and ray.teacher sections are for the one teacher."""

    name: str = ""  # names its rows (routing.mode=field) and its metrics (kl/<name>)
    model: str = BUILTIN_TEACHER
    weight: float = positive(1.0)  # its loss is multiplied by this
    cross_tokenizer: CrossTokenizer = CrossTokenizer.none  # as loss.cross_tokenizer
    engine: TeacherConfig = field(default_factory=TeacherConfig)
    ray: Placement = operational(factory=Placement)


@dataclass
class RoutingConfig:
    """Which teacher scores which rows when `teachers` lists several (ondistill/teachers.py)."""

    # field: each row names its teacher under `key` and is scored by it alone; mixture: every
    # row is scored by every teacher and the loss is the weight-weighted sum of their losses
    mode: RoutingMode = RoutingMode.field
    key: str = "teacher"


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    self_distill: SelfDistillConfig = field(default_factory=SelfDistillConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    log: LogConfig = operational(factory=LogConfig)
    ray: RayConfig = operational(factory=RayConfig)
    # Several teachers instead of model.teacher and the teacher: section; [] = that one teacher
    teachers: list[NamedTeacher] = field(default_factory=list)
    routing: RoutingConfig = field(default_factory=RoutingConfig)


def register() -> None:
    """Register the schema as Hydra's base config `ondistill`."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="ondistill", node=Config)
