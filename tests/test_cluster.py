"""A real two-node Ray cluster on this machine (`ray start --head` plus a second
`ray start --address` node with its own resources): a short job's actors land on both nodes
as the placement config says, and an impossible request is refused before any actor starts."""
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    port = free_port()
    script = ROOT / "scripts" / "cluster.sh"
    subprocess.run([script, "head", str(port), '{"node_a": 4}'], check=True, env=env,
                   capture_output=True)
    subprocess.run([script, "worker", f"127.0.0.1:{port}", '{"node_b": 4}'], check=True,
                   env=env, capture_output=True)
    yield f"127.0.0.1:{port}", env
    subprocess.run([script, "stop"], env=env, capture_output=True)


def submit(cluster, tmp_path, tiny_dirs, prompts_file, *extra):
    address, env = cluster
    teacher, student = tiny_dirs
    return subprocess.run(
        [ROOT / "scripts" / "cluster.sh", "submit", address,
         f"model.teacher={teacher}", f"model.student={student}", "model.student_keep_layers=[]",
         f"model.cache_dir={tmp_path}", f"data.prompts={prompts_file}", "data.eval_size=0",
         "rollout.backend=hf", "rollout.max_new_tokens=6", "rollout.threads=1",
         "teacher.threads=1", "student.threads=1", "trainer.steps=2",
         "trainer.prompts_per_step=2", "trainer.save_student=false", "log.wandb=disabled",
         "log.progress=false", "log.plot=false", f"trainer.output_dir={tmp_path / 'out'}", *extra],
        env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)


def test_roles_land_on_the_nodes_config_asks_for(cluster, tmp_path, tiny_dirs, prompts_file):
    job = submit(cluster, tmp_path, tiny_dirs, prompts_file, "student.world_size=2",
                 "+ray.rollout.resources.node_a=1", "+ray.teacher.resources.node_a=1",
                 "+ray.student.resources.node_b=1")
    assert job.returncode == 0, job.stderr[-3000:]
    line = re.search(r"placement \(Ray node ids\): rollout (\w+) teacher (\w+) student (\w+),(\w+)",
                     job.stdout)
    assert line, job.stdout[-2000:]
    rollout, teacher, s0, s1 = line.groups()
    assert rollout == teacher and s0 == s1 and rollout != s0  # two nodes, as placed
    assert (tmp_path / "out" / "checkpoints" / "step_000002").is_dir()


def test_impossible_request_is_refused_before_work(cluster, tmp_path, tiny_dirs, prompts_file):
    job = submit(cluster, tmp_path, tiny_dirs, prompts_file, "student.world_size=2",
                 "+ray.student.resources.node_b=3")
    assert job.returncode != 0
    assert "ask Ray for 6 node_b but the cluster has 4" in job.stderr
