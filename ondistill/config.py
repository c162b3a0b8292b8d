"""Typed configuration: the one source of defaults, registered in Hydra's ConfigStore.

Each worker receives only its own section (e.g. `RolloutConfig`), never the whole tree.
The checks that a dataclass type cannot make are in ondistill/config_checks.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ondistill.divergences import DIVERGENCES, DivergenceParams
from ondistill.losses import OBJECTIVES, ObjectiveSpec

BUILTIN_TEACHER = "builtin:smollm2-135m-instruct"


# The dtype names the config accepts, for every role.
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ConfigError(ValueError):
    pass


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
    cache_dir: str = "~/.cache/ondistill"  # converted checkpoints land here


@dataclass
class DataConfig:
    prompts: str = "builtin"  # a JSONL file of {"prompt": str, "response"?: str} rows
    eval_size: int = 32  # held-out prompts, taken from the end of the file
    max_prompt_tokens: int = 128
    chat_template: bool = True  # wrap each prompt in the tokenizer's chat template
    bad_rows: str = "error"  # error | skip
    # A prompt only the teacher sees, for rows without their own "teacher_prompt": a format
    # string of {prompt} and {response} (e.g. "{prompt}\n\nA reference answer: {response}");
    # the student's prompt and response are unchanged. "" = none.
    teacher_prompt: str = ""


@dataclass
class RolloutConfig:
    backend: str = "auto"  # auto (vllm when installed, else hf) | hf | vllm
    # Data-parallel engines (one actor each, ray.rollout per actor): a step's prompts are split
    # over them, and each prompt's seed depends on its place in the step, not on the replica,
    # so vLLM samples the same tokens for any count (hf samples a batch from one seed).
    replicas: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    n_samples: int = 2  # samples per prompt
    max_new_tokens: int = 48
    seed: int = 0
    stop_token_ids: list[int] = field(default_factory=list)  # extra stops besides EOS
    ignore_eos: bool = False  # always generate max_new_tokens (benchmarks: fixed work)
    max_model_len: int = 2048  # vLLM: longest prompt + response it must hold
    gpu_memory_utilization: float = 0.3  # vLLM on GPU: its share, rest for teacher/student
    sync_every: int = 1  # push student weights to the engine every k updates
    # vLLM on GPU, asleep between rollouts: 2 drops its weights where the next rollout follows
    # a weight push anyway (sync_every=1): no copies (H200, 1.7B: sleep 0.06 s and push 0.19 s
    # vs 4.8 s and 0.52 s, the same tokens after); otherwise, and with 1, host memory and back
    sleep_level: int = 2
    threads: int = 2  # torch threads in the engine's process (stages run one at a time)
    # vLLM: compiled decode (CUDA graphs on GPU, torch.compile on CPU); null = on GPU only,
    # since on CPU it adds ~30 s to startup for ~0.4 s less per 64-token step
    compile: bool | None = None


def sampling_seed(seed: int, call: int) -> int:
    """The sampling seed of the call-th generation of a run seeded with `seed` (the controller
    passes its update number): a function of both, so a resumed run samples what the
    uninterrupted one would have, and the one formula every engine uses."""
    return seed * 1_000_003 + call


@dataclass
class TeacherConfig:
    # auto: sglang on a GPU driver where SGLang is importable (here, or on a PYTHONPATH given
    # in ray.teacher.env), else hf
    backend: str = "auto"  # auto | hf | sglang
    replicas: int = 1  # data-parallel teacher actors (ray.teacher per actor)
    # Self-distillation: the teacher is a copy of the student (model.teacher is not read),
    # whose weights are pushed into the teacher engine every self_every updates: the
    # student's own (live) or their exponential moving average (ema, rate ema_decay).
    self_distill: str = "none"  # none | live | ema
    self_every: int = 1
    ema_decay: float = 0.99
    # tensor-parallel ranks per replica, for a teacher that does not fit one card. hf:
    # transformers' tp_plan, one Ray actor per rank asking ray.teacher; sglang: one actor runs
    # every rank (a card each: tp_size whole cards, or its share of tp_size cards)
    tp_size: int = 1
    dtype: str = "float32"
    topk: int = 0  # 0: send final hidden states; k > 0: send top-k log-probs + tail bucket
    threads: int = 2
    micro_batch_size: int = 0  # hf: sequences per forward (bounds activation memory); 0 = all
    # hf: instead, forwards of at most this many tokens (rows of similar length together; with
    # packing, real tokens); 0 = by micro_batch_size
    micro_batch_tokens: int = 0
    packing: bool = False  # hf: rows concatenated without padding (ondistill/packing.py)
    compile: bool | None = None  # hf: torch.compile each decoder block; null = on CUDA only
    # a one-rank student on the teacher's GPU maps the hidden states through CUDA IPC
    # instead of receiving them through host memory
    share_gpu: bool = True
    gpu_memory_utilization: float = 0.3  # sglang on GPU: its share of the card (weights + KV)
    # sglang: more Engine keyword arguments, e.g. {attention_backend: triton} where FA3 is absent
    engine_args: dict[str, Any] = field(default_factory=dict)


@dataclass
class StudentConfig:
    world_size: int = 1  # FSDP2 ranks, one Ray actor each
    lr: float = 2e-3  # peak; warmup then cosine to min_lr_ratio x lr
    weight_decay: float = 0.0
    warmup_steps: int = 2
    schedule: str = "cosine"  # cosine | linear | constant
    min_lr_ratio: float = 0.1
    micro_batch_size: int = 8  # sequences per forward/backward; the rest is accumulated
    # instead, micro-batches of at most this many tokens, rows balanced over ranks by tokens
    # (ragged on-policy batches waste less on padding); 0 = by micro_batch_size
    micro_batch_tokens: int = 0
    packing: bool = False  # rows concatenated without padding (ondistill/packing.py)
    grad_clip: float = 1.0
    param_dtype: str = "float32"  # FSDP2 MixedPrecisionPolicy compute dtype
    threads: int = 2  # torch threads per rank
    compile: bool | None = None  # torch.compile each decoder block; null = on CUDA only


@dataclass
class LossConfig:
    # divergence | policy_gradient (MiniLLM-style on-policy RKL) | sft (ce_coef x cross-entropy
    # only: plain fine-tuning, the baseline)
    # The math's defaults are its own (ObjectiveSpec, DivergenceParams), read here, not restated.
    objective: str = ObjectiveSpec.objective
    divergence: str = ObjectiveSpec.divergence  # see ondistill/divergences/
    jsd_beta: float = DivergenceParams.beta  # jsd: 0 is forward KL, 1 reverse KL
    skew_alpha: float = DivergenceParams.alpha  # skew_forward_kl / skew_reverse_kl
    akl_mu: float = DivergenceParams.mu  # adaptive_kl: teacher head mass
    temperature: float = ObjectiveSpec.temperature
    ce_coef: float = ObjectiveSpec.ce_coef  # + ce_coef x cross-entropy on the response tokens
    pg_discount: float = 0.0  # policy_gradient: gamma of the future-reward sum (0: per token)
    pg_clip: float = ObjectiveSpec.pg_clip  # policy_gradient: PPO clip of the importance ratio
    # token: mean over all response tokens of the batch; sequence: mean of per-sequence means
    reduction: str = "token"
    chunk_size: int = 512  # tokens per chunk: extra memory is O(chunk_size x vocab)
    # Teacher with another tokenizer (ondistill/xtok/): none (same tokenizer required) |
    # exact (divergence on the shared vocabulary + tail at aligned positions) | uld (sorted
    # probabilities, any vocabularies) | span (chunk likelihoods, spans merged)
    cross_tokenizer: str = "none"


@dataclass
class StageConfig:
    """One stage of the training schedule. Unset fields take the run's own setting
    (trainer.on_policy_fraction, loss.divergence)."""

    name: str = ""
    # Its part of trainer.steps (rounded); unset: the rest (the last stage only). A share,
    # not a count, so `trainer.steps=N` scales every stage.
    share: float | None = None
    on_policy_fraction: float | None = None
    divergence: str | None = None
    objective: str | None = None  # loss.objective of this stage
    # x the scheduled learning rate during this stage (a policy-gradient stage after a warm
    # start wants a far smaller step than the warm start does)
    lr_scale: float = 1.0


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
        StageConfig("warm_start", 0.6, 0.0, "forward_kl"),
        StageConfig("on_policy", None, 0.5, "forward_kl"),
    ]


@dataclass
class TrainerConfig:
    steps: int = 70
    prompts_per_step: int = 8
    on_policy_fraction: float = 1.0  # GKD lambda: chance a batch is sampled by the student
    # The schedule, in order; [] is one stage of trainer.steps with the settings above.
    stages: list[StageConfig] = field(default_factory=_default_stages)
    eval_every: int = 0  # 0: evaluate only before and after training
    seed: int = 0
    output_dir: str = ""  # default: Hydra's run directory; give it to resume a run
    save_student: bool = True
    checkpoint_every: int = 10  # steps; also at the end. 0: only at the end; -1: never
    keep_checkpoints: int = 2
    resume: str = "auto"  # auto: newest complete checkpoint in output_dir, if any | never | a path
    max_restarts: int = 2  # times the workers are rebuilt from a checkpoint after a crash
    # Generate the next batch while this one is scored and trained (trainer/overlap.py): the
    # samples are one update stale, the step takes max(generate, score + train) instead of
    # the sum. Needs room for the rollout engine awake next to teacher and student.
    overlap: bool = False


@dataclass
class LogConfig:
    jsonl: bool = True
    wandb: str = "offline"  # offline | online | disabled
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
    placement: str = "none"


@dataclass
class NamedTeacher:
    """One of several teachers (`teachers:`). `model` is read as model.teacher is, `engine` and
    `ray` as the teacher: and ray.teacher sections are for the one teacher."""

    name: str = ""  # names its rows (routing.mode=field) and its metrics (kl/<name>)
    model: str = BUILTIN_TEACHER
    weight: float = 1.0  # its loss is multiplied by this
    cross_tokenizer: str = "none"  # as loss.cross_tokenizer, for this teacher
    engine: TeacherConfig = field(default_factory=TeacherConfig)
    ray: Placement = field(default_factory=Placement)


@dataclass
class RoutingConfig:
    """Which teacher scores which rows when `teachers` lists several (ondistill/teachers.py)."""

    # field: each row names its teacher under `key` and is scored by it alone; mixture: every
    # row is scored by every teacher and the loss is the weight-weighted sum of their losses
    mode: str = "field"
    key: str = "teacher"


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    log: LogConfig = field(default_factory=LogConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    # Several teachers instead of model.teacher and the teacher: section; [] = that one teacher
    teachers: list[NamedTeacher] = field(default_factory=list)
    routing: RoutingConfig = field(default_factory=RoutingConfig)


@dataclass(frozen=True)
class Stage:
    """A resolved stage: every field set."""

    name: str
    first: int  # index of its first update
    steps: int
    on_policy_fraction: float
    divergence: str
    objective: str
    lr_scale: float = 1.0


def schedule(cfg: Config) -> list[Stage]:
    """trainer.stages resolved against the run's settings; ConfigError names a bad stage.
    Stage boundaries are the cumulative shares of trainer.steps, rounded."""
    tr = cfg.trainer
    given = tr.stages or [StageConfig("train")]
    stages, first, total_share = [], 0, 0.0
    for i, s in enumerate(given):
        key = f"trainer.stages[{i}]"
        if s.share is None and i != len(given) - 1:
            raise ConfigError(
                f"{key} has no share; give every stage but the last a share of "
                f"trainer.steps (e.g. {key}.share=0.5)."
            )
        total_share += 1 - total_share if s.share is None else s.share
        if (s.share is not None and not 0 < s.share <= 1) or total_share > 1 + 1e-9:
            raise ConfigError(
                f"{key}.share={s.share}: each share must be in (0, 1] and all "
                "shares together at most 1."
            )
        fraction = tr.on_policy_fraction if s.on_policy_fraction is None else s.on_policy_fraction
        divergence = cfg.loss.divergence if s.divergence is None else s.divergence
        objective = cfg.loss.objective if s.objective is None else s.objective
        if not 0 <= fraction <= 1:
            raise ConfigError(
                f"{key}.on_policy_fraction={fraction} is out of range; it must be in [0, 1]."
            )
        if objective not in OBJECTIVES:
            raise ConfigError(
                f"{key}.objective={objective!r} is not valid; choose one of: "
                f"{', '.join(OBJECTIVES)}."
            )
        if objective == "policy_gradient" and fraction < 1:
            raise ConfigError(
                f"{key} trains loss.objective=policy_gradient, which needs "
                f"on-policy batches only, but its on_policy_fraction={fraction}; "
                "set it to 1 or give the stage objective=divergence."
            )
        if not s.lr_scale > 0:
            raise ConfigError(f"{key}.lr_scale={s.lr_scale} must be > 0.")
        if divergence not in DIVERGENCES:
            raise ConfigError(
                f"{key}.divergence={divergence!r} is not valid; choose one of: "
                f"{', '.join(DIVERGENCES)}."
            )
        end = tr.steps if i == len(given) - 1 else round(total_share * tr.steps)  # last: to the end
        stages.append(
            Stage(
                s.name or f"stage{i}",
                first,
                end - first,
                fraction,
                divergence,
                objective,
                s.lr_scale,
            )
        )
        first = end
    _check_shadowed(cfg, given)
    return stages


def _check_shadowed(cfg: Config, given: list[StageConfig]) -> None:
    """A run-wide setting that every stage replaces would be ignored without a word: refuse
    it when it differs from its default (someone set it, expecting an effect)."""
    for section, field_name, default in (
        ("trainer", "on_policy_fraction", TrainerConfig.on_policy_fraction),
        ("loss", "divergence", LossConfig.divergence),
        ("loss", "objective", LossConfig.objective),
    ):
        key, value = f"{section}.{field_name}", getattr(getattr(cfg, section), field_name)
        if value != default and all(getattr(s, field_name) is not None for s in given):
            raise ConfigError(
                f"{key}={value} has no effect: every stage of trainer.stages sets its own "
                f"{field_name}; set it per stage (e.g. trainer.stages.{len(given) - 1}."
                f"{field_name}={value}), or trainer.stages=[] for one stage that uses {key}."
            )


def stage_at(stages: list[Stage], update: int) -> Stage:
    """The stage that update number `update` (0-based) belongs to."""
    for stage in stages:
        if update < stage.first + stage.steps:
            return stage
    return stages[-1]


def register() -> None:
    """Register the schema as Hydra's base config `ondistill`."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="ondistill", node=Config)
