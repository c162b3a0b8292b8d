"""Nothing lost: atomic checkpoints, resume after a killed driver or a killed worker gives the
same losses as an uninterrupted run, and a crash while writing keeps the previous one."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.test_run import tiny_config
from trainer import checkpoint
from trainer.run import run


def losses(out: Path) -> list[float]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def resumable_config(tiny_dirs, prompts_file, tmp_path, backend="hf"):
    cfg = tiny_config(
        tiny_dirs, prompts_file, tmp_path, steps=6, checkpoint_every=2, on_policy_fraction=0.5
    )
    cfg.rollout.backend = backend
    cfg.data.eval_size, cfg.trainer.save_student, cfg.log.plot = 4, False, False
    return cfg


@pytest.fixture(scope="module")
def references(ray_local, tiny_dirs, prompts_file, tmp_path_factory):
    """The uninterrupted run (per rollout backend) every interrupted one must reproduce."""
    done = {}

    def get(backend: str):
        if backend not in done:
            tmp = tmp_path_factory.mktemp(f"ref-{backend}")
            results = run(resumable_config(tiny_dirs, prompts_file, tmp, backend), tmp / "out")
            done[backend] = losses(tmp / "out"), results
        return done[backend]

    return get


@pytest.fixture(scope="module")
def reference(references):
    return references("hf")


def test_crash_while_writing_keeps_previous_checkpoint(tmp_path):
    root = tmp_path / "checkpoints"
    tmp, final = checkpoint.begin(root, 2)
    (tmp / "controller.json").write_text("{}")
    checkpoint.commit(tmp, final, keep=2)
    tmp4, _ = checkpoint.begin(root, 4)  # the writer dies here: half a checkpoint on disk
    (tmp4 / "student").mkdir()
    assert checkpoint.latest(root) == final
    tmp6, final6 = checkpoint.begin(root, 6)
    checkpoint.commit(tmp6, final6, keep=1)  # the next complete one cleans up after it
    assert [p.name for p in root.iterdir()] == ["step_000006"]


def test_process_killed_while_writing_keeps_previous_checkpoint(tmp_path):
    """A real writer process is SIGKILLed half-way through a checkpoint: the previous one stays
    the newest complete checkpoint, and the half-written directory is not taken for one."""
    root = tmp_path / "checkpoints"
    tmp, final = checkpoint.begin(root, 2)
    (tmp / "controller.json").write_text("{}")
    checkpoint.commit(tmp, final, keep=2)
    writer = f"""
import sys, time
from pathlib import Path
sys.path.insert(0, {str(Path(__file__).parents[1])!r})
from trainer import checkpoint
tmp, _ = checkpoint.begin(Path({str(root)!r}), 4)
(tmp / "student").mkdir()
with open(tmp / "student" / "shard.bin", "wb") as f:
    for i in range(2000):  # ~2 GB at most, if the kill never came
        f.write(b"x" * (1 << 20))
        f.flush()
        if i == 8:
            print("writing", flush=True)
        time.sleep(0.01)
"""
    proc = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"writing"
    proc.kill()
    assert proc.wait() == -signal.SIGKILL
    half = [p for p in root.iterdir() if p != final]
    assert half and any(f.stat().st_size > 0 for f in half[0].rglob("*.bin"))  # really mid-write
    assert checkpoint.latest(root) == final


@pytest.mark.parametrize(
    "victim,backend", [("StudentWorker", "hf"), ("HFTeacher", "hf"), ("VLLMRollout", "vllm")]
)
def test_worker_killed_mid_run_recovers_with_same_losses(
    ray_local, references, tiny_dirs, prompts_file, tmp_path, capsys, victim, backend
):
    """Any role's actor (the FSDP student rank, the teacher, the vLLM rollout engine) killed
    after step 3: every group is rebuilt from the newest checkpoint and the run ends with the
    uninterrupted run's losses and held-out metrics."""
    import psutil

    cfg = resumable_config(tiny_dirs, prompts_file, tmp_path, backend)
    out = tmp_path / "out"

    def kill_after_step_3():
        deadline = time.time() + 300
        while time.time() < deadline:
            rows = (
                (out / "metrics.jsonl").read_text().splitlines()
                if (out / "metrics.jsonl").exists()
                else []
            )
            if sum('"loss"' in r for r in rows) >= 3:
                break
            time.sleep(0.2)
        # Ray titles each actor process "ray::<Class>.<method>". Only this test's own Ray (its
        # processes descend from this one) is searched: another run's workers are not ours.
        process = next(
            p
            for p in psutil.Process().children(recursive=True)
            if (p.cmdline() or [""])[0].startswith(f"ray::{victim}")
        )
        process.send_signal(signal.SIGKILL)

    killer = threading.Thread(target=kill_after_step_3)
    killer.start()
    results = run(cfg, out)
    killer.join()
    assert "a worker died" in capsys.readouterr().out
    ref_losses, ref_results = references(backend)
    assert losses(out) == pytest.approx(ref_losses, rel=1e-4, abs=1e-5)
    assert results["after"] == pytest.approx(ref_results["after"], rel=1e-4, abs=1e-5)


def test_driver_killed_then_resumed_gives_same_losses(reference, tiny_dirs, prompts_file, tmp_path):
    cfg = resumable_config(tiny_dirs, prompts_file, tmp_path)
    out = tmp_path / "out"
    overrides = [
        f"model.teacher={cfg.model.teacher}",
        f"model.student={cfg.model.student}",
        "model.student_keep_layers=[]",
        f"model.cache_dir={cfg.model.cache_dir}",
        f"data.prompts={cfg.data.prompts}",
        "data.eval_size=4",
        "rollout.backend=hf",
        "rollout.max_new_tokens=12",
        "rollout.threads=1",
        "teacher.threads=1",
        "student.threads=1",
        "student.lr=3e-3",
        "student.warmup_steps=0",
        "trainer.steps=6",
        "trainer.prompts_per_step=4",
        "trainer.checkpoint_every=2",
        "trainer.on_policy_fraction=0.5",
        "trainer.stages=[]",
        "trainer.save_student=false",
        f"trainer.output_dir={out}",
        "log.wandb=disabled",
        "log.progress=false",
        "log.plot=false",
        "ray.num_cpus=8",
    ]
    cmd = [sys.executable, "-m", "ondistill.main", *overrides]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    first = subprocess.Popen(
        cmd,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while time.time() < deadline and checkpoint.latest(out / "checkpoints") is None:
        time.sleep(0.2)
    time.sleep(1.0)  # somewhere inside step 3
    os.killpg(first.pid, signal.SIGKILL)  # the driver and everything it started
    assert first.wait() == -signal.SIGKILL  # killed, not finished
    interrupted_at = checkpoint.latest(out / "checkpoints")
    assert interrupted_at is not None and interrupted_at.name != "step_000006", interrupted_at
    second = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "resumed from step_" in second.stdout + second.stderr
    assert losses(out) == pytest.approx(reference[0], rel=1e-4, abs=1e-5)
