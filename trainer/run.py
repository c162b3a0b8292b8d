"""Launch a distillation run explicitly, top to bottom: check inputs, resolve models
(trainer/prepare.py), start Ray and the worker groups, evaluate, train with checkpoints,
evaluate, save.

A crash of any worker (Ray actor death) rebuilds all worker groups and continues from the
newest complete checkpoint, up to trainer.max_restarts times; a killed driver continues the
same way when started again with the same trainer.output_dir (trainer.resume=auto).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ondistill.config import Config
from ondistill.data import PromptSet
from ondistill.stages import schedule
from trainer.guard import DivergedError, NonFiniteGuard
from trainer.preflight import check_resume, pick_rollout_backend, pick_teacher_backend
from trainer.prepare import prepare
from trainer.report import SAMPLES, driver_peak_rss_gib, summary
from trainer.teachers import TeacherSpec

if TYPE_CHECKING:
    from trainer.evaluate import Evaluator, PerTeacher


def run(cfg: Config, out_dir: Path) -> dict[str, dict[str, float]]:
    """Train; returns {"before": eval metrics, "after": eval metrics}."""
    import ray

    from workers.group import check_resources
    from workers.placement import plan
    from workers.ray_env import init_ray

    plan(cfg)  # a placement its replicas cannot take is refused before any work
    teachers, student_dir, prompts = prepare(cfg, out_dir)
    backend = pick_rollout_backend(cfg.rollout.backend)
    _pick_teacher_backends(teachers)
    print(
        f"[ondistill] student {student_dir}\n[ondistill] rollout={backend} teacher="
        f"{','.join(t.engine.backend for t in teachers)} ranks={cfg.student.world_size} "
        f"steps={cfg.trainer.steps} out={out_dir}",
        flush=True,
    )
    init_ray(cfg.ray.address, cfg.ray.num_cpus)
    check_resources(
        {
            "rollout": (cfg.ray.rollout, cfg.rollout.replicas),
            **{t.label: (t.place, t.engine.replicas * t.engine.tp_size) for t in teachers},
            "student": (cfg.ray.student, cfg.student.world_size),
        }
    )
    _claim_out_dir(cfg, out_dir)  # only once the cluster answered
    resume = cfg.trainer.resume
    for attempt in range(cfg.trainer.max_restarts + 1):
        session = Session(cfg, out_dir, teachers, student_dir, prompts, backend)
        try:
            return session.train(resume)
        except DivergedError:
            session.close()
            raise
        except ray.exceptions.RayActorError as e:
            session.close()
            if attempt == cfg.trainer.max_restarts:
                raise
            print(
                f"[ondistill] a worker died ({type(e).__name__}: {str(e).splitlines()[0]}); "
                f"restart {attempt + 1} of {cfg.trainer.max_restarts}: rebuilding workers "
                "from the newest checkpoint",
                flush=True,
            )
            resume = "auto"
    raise AssertionError("unreachable")


def _pick_teacher_backends(teachers: list[TeacherSpec]) -> None:
    """teacher.backend=auto resolved here, not in cfg: config.json keeps what was asked."""
    for t in teachers:
        t.engine = dataclasses.replace(
            t.engine, backend=pick_teacher_backend(t.engine, t.place.env)
        )
        print(f"[ondistill] {t.label} {t.model_dir}")


def _warn_alignment(logger, step: int, aligned: float, floor: float) -> None:
    logger.write(
        f"[ondistill] WARNING: step {step}: only {aligned:.0%} of the student's tokens align "
        f"with the teacher's tokenization (the teacher's own answers align {2 * floor:.0%}); "
        "the cross-tokenizer loss sees little of this batch. Check that both tokenizers read "
        "the same text."
    )


def _claim_out_dir(cfg: Config, out_dir: Path) -> None:
    """Create the run directory and record the settings in it (resume=never first moves an
    earlier run's checkpoints aside)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.trainer.resume == "never":
        from trainer.outdir import start_over

        aside = start_over(out_dir)
        if aside:
            print(
                f"[ondistill] trainer.resume=never: the earlier checkpoints here are kept in "
                f"{aside}",
                flush=True,
            )
    (out_dir / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))


class Session:
    """One set of worker groups, from (re)start to the end of training or a crash."""

    def __init__(
        self,
        cfg: Config,
        out_dir: Path,
        teachers: list[TeacherSpec],
        student_dir: Path,
        prompts: PromptSet,
        backend: str,
    ):
        from trainer.teachers import start_evaluators, start_teachers, student_teachers
        from workers.group import RolloutGroup, StudentGroup
        from workers.placement import reserve

        self.cfg, self.out_dir, self.ckpt_root = cfg, out_dir, out_dir / "checkpoints"
        start = time.perf_counter()
        self.layout = reserve(cfg)
        if self.layout.bundles:
            print(f"[ondistill] ray.placement={cfg.ray.placement}: {self.layout.describe()}")
        self.rollout = RolloutGroup(
            backend, str(student_dir), cfg.rollout, cfg.ray.rollout, self.layout.rollout
        )
        self.teacher = start_teachers(cfg, teachers, prompts, self.layout)
        self.student = StudentGroup(
            cfg.student,
            cfg.loss,
            str(student_dir),
            student_teachers(teachers),
            cfg.trainer.steps,
            cfg.ray.student,
            self.layout.student,
        )
        if cfg.self_distill.mode == "ema":
            self.student.track_ema(cfg.self_distill.ema_decay)
        self._share_gpu()
        self._print_placement()
        self.evaluator: Evaluator | PerTeacher | None = None
        if cfg.data.eval_size:
            self.evaluator = start_evaluators(
                cfg, teachers, self.teacher, prompts, self.rollout, self.student
            )
        self.controller = self._controller(prompts)
        # Asleep until the first on-policy step or evaluation wakes it: awake, a vLLM engine
        # keeps its share of the card (weights and KV cache) through every off-policy step.
        self.controller.rest_rollout()
        self.startup_s = time.perf_counter() - start

    def _controller(self, prompts: PromptSet) -> Any:
        from trainer.controller import Controller, DatasetRollout
        from trainer.overlap import OverlapController

        cfg = self.cfg
        kind = OverlapController if cfg.trainer.overlap else Controller
        return kind(
            cfg.trainer,
            prompts,
            self.rollout,
            DatasetRollout(cfg.rollout.max_new_tokens),
            self.teacher,
            self.student,
            schedule(cfg),
            cfg.rollout.sync_every,
            follower=self._follower(),
        )

    def _follower(self) -> Any:
        from trainer.controller import Follower

        sd = self.cfg.self_distill
        if sd.mode == "none":
            return None
        return Follower(self.teacher.members[0].group, sd.mode == "ema", sd.every)

    def _share_gpu(self) -> None:
        """The one teacher hands its hidden states over by CUDA IPC where each replica shares
        its student rank's card (a decision the group keeps for every later score)."""
        first = self.teacher.members[0]
        if len(self.teacher.members) == 1 and first.translator is None:
            if first.group.share_gpu_with(self.student):
                print("[ondistill] teacher hidden states reach the student through CUDA IPC")

    def _print_placement(self) -> None:
        from workers.group import node_of

        print(
            "[ondistill] placement (Ray node ids): rollout "
            + ",".join(node_of(a) for a in self.rollout.actors)
            + " teacher "
            + ",".join(node_of(a) for m in self.teacher.members for a in m.group.actors)
            + " student "
            + ",".join(node_of(a) for a in self.student.actors),
            flush=True,
        )

    def train(self, resume: str) -> dict[str, dict[str, float]]:
        from trainer.metrics import MetricsLogger

        cfg, tr = self.cfg, self.cfg.trainer
        results: dict[str, dict[str, float]] = {}
        history: list[dict] = []
        step = 0
        ckpt = self._find_checkpoint(resume)
        if ckpt:
            step, results, history = self._restore(ckpt)
        logger = MetricsLogger(
            self.out_dir,
            cfg.log,
            tr.steps,
            dataclasses.asdict(cfg),
            history=history,
            start_step=step,
        )
        logger.write(
            f"[ondistill] workers up in {self.startup_s:.0f}s; student has "
            f"{self.student.num_params / 1e6:.1f}M parameters"
            + (f"; resumed from {ckpt.name}" if ckpt else "")
        )
        if self.evaluator and "before" not in results:
            self.controller.sync()  # the engine slept without its weights (rest_rollout)
            results["before"] = self._evaluate(logger, 0, "before")
        start = time.perf_counter()
        floor = 0.5 * self.evaluator.expected_alignment if self.evaluator else 0.0
        guard = NonFiniteGuard(tr.nonfinite, self.ckpt_root)
        while step < tr.steps:
            step += 1
            metrics = self.controller.step()
            metrics["driver_rss_gib"] = driver_peak_rss_gib()
            try:
                guard.check(step, metrics)  # before anything saves this step's weights
            except DivergedError:
                logger.log(step, metrics)
                logger.close()
                raise
            logger.log(step, metrics)
            if metrics.get("aligned_fraction", 1.0) < floor:
                _warn_alignment(logger, step, metrics["aligned_fraction"], floor)
            if self.evaluator and tr.eval_every and step % tr.eval_every == 0 and step != tr.steps:
                self.controller.sync()  # evaluation samples from the current student
                self._evaluate(logger, step, f"step_{step}")
            every = tr.checkpoint_every
            if every >= 0 and (step == tr.steps or (every and step % every == 0)):
                self._save(step, results, logger.history)
        self._finish(logger, results, time.perf_counter() - start, guard.skipped)
        return results

    def _finish(self, logger, results: dict, train_s: float, skipped: int) -> None:
        """The held-out evaluation after training, the export, the curves and the summary."""
        from trainer.metrics import plot

        cfg, tr = self.cfg, self.cfg.trainer
        if self.evaluator:
            self.controller.sync()
            results["after"] = self._evaluate(logger, tr.steps, "after")
            results["teacher"] = {f"eval/{k}": v for k, v in self.evaluator.reference.items()}
        logger.close()
        if tr.save_student:
            self.student.save_hf(str(self.out_dir / "student"))
        if cfg.log.plot and cfg.log.jsonl:
            plot(logger.path, self.out_dir / "curves.png")
        print(summary(results, self.out_dir, train_s), flush=True)
        if skipped:
            print(
                f"[ondistill] {skipped} of {tr.steps} updates were skipped for a non-finite "
                "loss or gradient (trainer.nonfinite=skip)",
                flush=True,
            )
        self.close()

    def _evaluate(self, logger, step: int, phase: str) -> dict[str, float]:
        """Held-out metrics, logged; every answer appended to samples.jsonl under `phase`."""
        assert self.evaluator is not None  # called only when data.eval_size > 0
        metrics = self.evaluator.run()
        self.controller.rest_rollout()  # as after a step's rollout
        logger.log(step, metrics)
        with (self.out_dir / SAMPLES).open("w" if phase == "before" else "a") as f:
            f.writelines(
                json.dumps({"phase": phase, "step": step, **row}) + "\n"
                for row in self.evaluator.samples
            )
        return metrics

    def _find_checkpoint(self, resume: str) -> Path | None:
        from trainer import checkpoint

        if resume in ("", "never"):
            return None
        if resume == "auto":
            return checkpoint.latest(self.ckpt_root)
        check_resume(resume)
        return Path(resume)

    def _save(self, step: int, results: dict, history: list[dict]) -> None:
        from trainer import checkpoint

        tmp, final = checkpoint.begin(self.ckpt_root, step)
        self.student.save(str(tmp))
        checkpoint.write_json(
            tmp / "controller.json",
            {
                "step": step,
                "controller": self.controller.state(),
                "results": results,
                "history": history,
            },
        )
        checkpoint.commit(tmp, final, self.cfg.trainer.keep_checkpoints)

    def _restore(self, ckpt: Path) -> tuple[int, dict, list[dict]]:
        state = json.loads((ckpt / "controller.json").read_text())
        self.student.load(str(ckpt))
        follower = self.controller.follower
        if follower is not None:  # the teacher restarts from the student
            self.student.push_teacher(follower.group, follower.ema)
        self.student.push_weights(self.rollout)  # the engine must sample from these weights
        self.controller.load_state(state["controller"])
        return state["step"], state["results"], state["history"]

    def close(self) -> None:
        for group in (self.student, self.teacher, self.rollout):
            try:
                group.kill()
            except Exception:  # already gone: nothing to stop
                pass
        self.layout.release()  # a restarted session reserves its own
