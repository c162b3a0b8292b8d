"""Typed configuration: the one source of defaults, registered in Hydra's ConfigStore.

Each worker receives only its own section (e.g. `RolloutConfig`), never the whole tree.
`validate()` runs at the entry point, before any model is loaded, and raises ConfigError
with one sentence naming the key, the bad value and what to write instead.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ondistill.divergences import DIVERGENCES
from ondistill.xtok import METHODS as CROSS_TOKENIZER_METHODS

BUILTIN_TEACHER = "builtin:smollm2-135m-instruct"


class ConfigError(ValueError):
    pass


@dataclass
class ModelConfig:
    teacher: str = BUILTIN_TEACHER  # HF model directory, or a builtin: name
    student: str = BUILTIN_TEACHER  # HF model directory, or a builtin: name
    # Build the student from `student` by keeping only these decoder layers; empty keeps all.
    student_keep_layers: list[int] = field(default_factory=lambda: [0, 6, 12, 18, 24, 29])
    cache_dir: str = "~/.cache/ondistill"  # converted checkpoints land here


@dataclass
class DataConfig:
    prompts: str = "builtin"  # a JSONL file of {"prompt": str, "response"?: str} rows
    eval_size: int = 32  # held-out prompts, taken from the end of the file
    max_prompt_tokens: int = 128
    chat_template: bool = True  # wrap each prompt in the tokenizer's chat template
    bad_rows: str = "error"  # error | skip


@dataclass
class RolloutConfig:
    backend: str = "auto"  # auto (vllm when installed, else hf) | hf | vllm
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
    threads: int = 2  # torch threads in the engine's process (stages run one at a time)
    # vLLM: compiled decode (CUDA graphs on GPU, torch.compile on CPU); null = on GPU only,
    # since on CPU it adds ~30 s to startup for ~0.4 s less per 64-token step
    compile: bool | None = None


@dataclass
class TeacherConfig:
    backend: str = "hf"  # hf | sglang
    dtype: str = "float32"
    topk: int = 0  # 0: send final hidden states; k > 0: send top-k log-probs + tail bucket
    threads: int = 2
    micro_batch_size: int = 0  # hf: sequences per forward (bounds activation memory); 0 = all
    compile: bool | None = None  # hf: torch.compile each decoder block; null = on CUDA only
    # hf: a one-rank student on the teacher's GPU maps the hidden states through CUDA IPC
    # instead of receiving them through host memory
    share_gpu: bool = True


@dataclass
class StudentConfig:
    world_size: int = 1  # FSDP2 ranks, one Ray actor each
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 2
    schedule: str = "cosine"  # cosine | linear | constant
    min_lr_ratio: float = 0.1
    micro_batch_size: int = 8  # sequences per forward/backward; the rest is accumulated
    grad_clip: float = 1.0
    param_dtype: str = "float32"  # FSDP2 MixedPrecisionPolicy compute dtype
    threads: int = 2  # torch threads per rank
    compile: bool | None = None  # torch.compile each decoder block; null = on CUDA only


@dataclass
class LossConfig:
    # divergence | policy_gradient (MiniLLM-style on-policy RKL) | sft (ce_coef x cross-entropy
    # only: plain fine-tuning, the baseline)
    objective: str = "divergence"
    divergence: str = "reverse_kl"  # see ondistill/divergences/
    jsd_beta: float = 0.5  # jsd: 0 is forward KL, 1 reverse KL
    skew_alpha: float = 0.1  # skew_forward_kl / skew_reverse_kl
    akl_mu: float = 0.5  # adaptive_kl: teacher head mass
    temperature: float = 1.0
    ce_coef: float = 0.0  # + ce_coef x cross-entropy on the response tokens
    pg_discount: float = 0.0  # policy_gradient: gamma of the future-reward sum (0: per token)
    pg_clip: float = 0.2  # policy_gradient: PPO clip of the importance ratio
    # token: mean over all response tokens of the batch; sequence: mean of per-sequence means
    reduction: str = "token"
    chunk_size: int = 512  # tokens per chunk: extra memory is O(chunk_size x vocab)
    # Teacher with another tokenizer (ondistill/xtok/): none (same tokenizer required) |
    # exact (divergence on the shared vocabulary + tail at aligned positions) | uld (sorted
    # probabilities, any vocabularies) | span (chunk likelihoods, spans merged)
    cross_tokenizer: str = "none"


@dataclass
class TrainerConfig:
    steps: int = 30
    prompts_per_step: int = 8
    on_policy_fraction: float = 1.0  # GKD lambda: chance a batch is sampled by the student
    eval_every: int = 0  # 0: evaluate only before and after training
    eval_samples: int = 1
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


@dataclass
class RayConfig:
    address: str = ""  # empty: start a local Ray; "auto" or host:port joins a cluster
    num_cpus: int = 0  # local Ray only; 0: at least 8 placement tokens
    rollout: Placement = field(default_factory=Placement)
    teacher: Placement = field(default_factory=Placement)
    student: Placement = field(default_factory=Placement)  # per FSDP rank


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


CHOICES: dict[str, tuple[str, ...]] = {
    "rollout.backend": ("auto", "hf", "vllm"),
    "teacher.backend": ("hf", "sglang"),
    "teacher.dtype": ("float32", "bfloat16", "float16"),
    "student.schedule": ("cosine", "linear", "constant"),
    "student.param_dtype": ("float32", "bfloat16"),
    "loss.objective": ("divergence", "policy_gradient", "sft"),
    "loss.cross_tokenizer": CROSS_TOKENIZER_METHODS,
    "loss.divergence": tuple(DIVERGENCES),
    "loss.reduction": ("token", "sequence"),
    "data.bad_rows": ("error", "skip"),
    "log.wandb": ("offline", "online", "disabled"),
}

# key -> (predicate, what the value must be)
_RANGES: dict[str, tuple[Any, str]] = {
    "rollout.temperature": (lambda v: v > 0, "> 0"),
    "rollout.top_p": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "rollout.n_samples": (lambda v: v >= 1, ">= 1"),
    "rollout.max_new_tokens": (lambda v: v >= 1, ">= 1"),
    "rollout.sync_every": (lambda v: v >= 1, ">= 1"),
    "student.world_size": (lambda v: v >= 1, ">= 1"),
    "student.lr": (lambda v: v > 0, "> 0"),
    "student.micro_batch_size": (lambda v: v >= 1, ">= 1"),
    "teacher.micro_batch_size": (lambda v: v >= 0, ">= 0 (0 scores the whole batch at once)"),
    "student.grad_clip": (lambda v: v >= 0, ">= 0 (0 disables clipping)"),
    "loss.temperature": (lambda v: v > 0, "> 0"),
    "loss.jsd_beta": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "loss.skew_alpha": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "loss.akl_mu": (lambda v: 0 < v < 1, "in (0, 1)"),
    "loss.ce_coef": (lambda v: v >= 0, ">= 0"),
    "loss.pg_discount": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "loss.pg_clip": (lambda v: v > 0, "> 0"),
    "teacher.topk": (lambda v: v >= 0, ">= 0 (0 sends hidden states)"),
    "loss.chunk_size": (lambda v: v >= 1, ">= 1"),
    "trainer.steps": (lambda v: v >= 0, ">= 0"),
    "trainer.prompts_per_step": (lambda v: v >= 1, ">= 1"),
    "trainer.on_policy_fraction": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "trainer.checkpoint_every": (lambda v: v >= -1, ">= 0, or -1 for no checkpoints"),
    "trainer.keep_checkpoints": (lambda v: v >= 1, ">= 1"),
    "trainer.max_restarts": (lambda v: v >= 0, ">= 0"),
    "data.eval_size": (lambda v: v >= 0, ">= 0"),
    "data.max_prompt_tokens": (lambda v: v >= 1, ">= 1"),
}


def _get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def validate(cfg: Config) -> Config:
    """Check every value that a dataclass type cannot; raise ConfigError naming the key."""
    for key, allowed in CHOICES.items():
        value = _get(cfg, key)
        if value not in allowed:
            raise ConfigError(f"{key}={value!r} is not valid; choose one of: {', '.join(allowed)} "
                              f"(e.g. {key}={allowed[0]}).")
    for key, (ok, must) in _RANGES.items():
        value = _get(cfg, key)
        if not ok(value):
            raise ConfigError(f"{key}={value!r} is out of range; it must be {must}.")
    if cfg.loss.objective == "policy_gradient" and cfg.trainer.on_policy_fraction < 1:
        raise ConfigError("loss.objective=policy_gradient needs on-policy batches only; set "
                          "trainer.on_policy_fraction=1 or use loss.objective=divergence.")
    if cfg.teacher.topk and (cfg.loss.objective != "divergence" or cfg.loss.temperature != 1):
        raise ConfigError("teacher.topk>0 supports loss.objective=divergence at "
                          "loss.temperature=1 only; set teacher.topk=0 to send hidden states.")
    _validate_cross_tokenizer(cfg)
    if cfg.loss.objective == "sft" and not cfg.loss.ce_coef:
        raise ConfigError("loss.objective=sft trains on cross-entropy alone; set loss.ce_coef>0 "
                          "(e.g. loss.ce_coef=1).")
    if len(set(cfg.model.student_keep_layers)) != len(cfg.model.student_keep_layers):
        raise ConfigError(f"model.student_keep_layers={list(cfg.model.student_keep_layers)} "
                          "repeats a layer; list each kept layer index once.")
    return cfg


def _validate_cross_tokenizer(cfg: Config) -> None:
    method, loss = cfg.loss.cross_tokenizer, cfg.loss
    if method == "none":
        return
    if loss.objective == "policy_gradient":
        raise ConfigError(f"loss.cross_tokenizer={method} works with loss.objective=divergence "
                          "(or sft); policy_gradient needs the teacher's log-prob of each "
                          "student token, which another tokenizer does not give.")
    if cfg.teacher.topk:
        raise ConfigError(f"loss.cross_tokenizer={method} needs the teacher's hidden states; "
                          "set teacher.topk=0.")
    if method == "span" and loss.temperature != 1:
        raise ConfigError("loss.cross_tokenizer=span compares chunk likelihoods at temperature "
                          "1; set loss.temperature=1 or use exact/uld.")


def register() -> None:
    """Register the schema as Hydra's base config `ondistill`."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="ondistill", node=Config)
