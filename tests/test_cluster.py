"""A real two-node Ray cluster on this machine (`ray start --head` plus a second
`ray start --address` node with its own resources): a short job's actors land on both nodes
as the placement config says, and an impossible request is refused before any actor starts."""

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        assert proc.poll() is None, "ray start exited early"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"no Ray head on port {port} after {seconds:.0f} s")


def _stop(proc: subprocess.Popen) -> None:
    """Stop one `ray start --block` and every process it started (its own process group):
    this cluster only, never other Ray instances on the machine."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Head and worker with token authentication on (cluster.sh's default); the token is this
    test's own, given to every node and the driver through RAY_AUTH_TOKEN_PATH."""
    token = tmp_path_factory.mktemp("auth") / "token"
    token.write_text(secrets.token_hex(32))  # the form `ray get-auth-token --generate` writes
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    env["RAY_AUTH_TOKEN_PATH"], env["RAY_AUTH_MODE"] = str(token), "token"  # for `ray status`
    port = free_port()
    script = ROOT / "scripts" / "cluster.sh"
    nodes = [
        subprocess.Popen(
            [script, "head", str(port), '{"node_a": 4}', "--block"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    ]
    try:
        _wait_for_port(port, nodes[0])
        nodes.append(
            subprocess.Popen(
                [script, "worker", f"127.0.0.1:{port}", '{"node_b": 4}', "--block"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )
        deadline = time.time() + 120
        while (
            "node_b"
            not in subprocess.run(  # the worker node has joined
                [Path(sys.executable).parent / "ray", "status", f"--address=127.0.0.1:{port}"],
                env=env,
                capture_output=True,
                text=True,
            ).stdout
        ):
            assert time.time() < deadline and nodes[1].poll() is None, "worker did not join"
            time.sleep(1)
        yield f"127.0.0.1:{port}", env
    finally:
        for proc in reversed(nodes):
            _stop(proc)


def submit(cluster, tmp_path, tiny_dirs, prompts_file, *extra):
    address, env = cluster
    teacher, student = tiny_dirs
    return subprocess.run(
        [
            ROOT / "scripts" / "cluster.sh",
            "submit",
            address,
            f"model.teacher={teacher}",
            f"model.student={student}",
            "model.student_keep_layers=[]",
            f"model.cache_dir={tmp_path}",
            f"data.prompts={prompts_file}",
            "data.eval_size=0",
            "rollout.backend=hf",
            "rollout.max_new_tokens=6",
            "rollout.threads=1",
            "teacher.threads=1",
            "student.threads=1",
            "trainer.steps=2",
            "trainer.prompts_per_step=2",
            "trainer.save_student=false",
            "log.wandb=disabled",
            "log.progress=false",
            "log.plot=false",
            f"trainer.output_dir={tmp_path / 'out'}",
            *extra,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )


def test_roles_land_on_the_nodes_config_asks_for(cluster, tmp_path, tiny_dirs, prompts_file):
    """Two rollout replicas and two student ranks on one node, two teacher replicas on the
    other: the scored rows cross nodes from the teacher replicas to the ranks, and training
    works (two on-policy steps, then three on the dataset whose forward KL falls)."""
    job = submit(
        cluster,
        tmp_path,
        tiny_dirs,
        prompts_file,
        "student.world_size=2",
        "rollout.replicas=2",
        "teacher.replicas=2",
        "+ray.rollout.resources.node_a=1",
        "+ray.teacher.resources.node_b=1",
        "+ray.student.resources.node_a=1",
        "ray.rollout.cpus=0.5",  # six actors on the test cluster's 4 CPUs
        "ray.teacher.cpus=0.5",
        "ray.student.cpus=0.5",
        "trainer.steps=5",
        "trainer.stages=[{name:on,share:0.4,on_policy_fraction:1.0},{name:off,on_policy_fraction:0.0}]",
        "loss.divergence=forward_kl",
        "student.lr=1e-2",
        "student.warmup_steps=0",
    )
    assert job.returncode == 0, job.stderr[-3000:]
    line = re.search(
        r"placement \(Ray node ids\): rollout (\w+),(\w+) teacher (\w+),(\w+) student (\w+),(\w+)",
        job.stdout,
    )
    assert line, job.stdout[-2000:]
    r0, r1, t0, t1, s0, s1 = line.groups()
    assert r0 == r1 == s0 == s1 and t0 == t1 and t0 != s0  # two nodes, as placed
    rows = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "kl" in r]
    assert [r["on_policy"] for r in steps] == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert steps[-1]["kl"] < steps[2]["kl"], [r["kl"] for r in steps]
    assert (tmp_path / "out" / "checkpoints" / "step_000005").is_dir()


def test_impossible_request_is_refused_before_work(cluster, tmp_path, tiny_dirs, prompts_file):
    job = submit(
        cluster,
        tmp_path,
        tiny_dirs,
        prompts_file,
        "student.world_size=2",
        "+ray.student.resources.node_b=3",
    )
    assert job.returncode != 0
    assert "ask Ray for 6 node_b but the cluster has 4" in job.stderr


def test_driver_without_the_token_is_refused(cluster, tmp_path):
    address, env = cluster
    wrong = tmp_path / "wrong-token"
    wrong.write_text(secrets.token_hex(32))
    job = subprocess.run(
        [sys.executable, "-c", f"import ray; ray.init(address='{address}'); print(ray.nodes())"],
        env={**env, "RAY_AUTH_TOKEN_PATH": str(wrong)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert job.returncode != 0
    assert "auth" in (job.stdout + job.stderr).lower()
