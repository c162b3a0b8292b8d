"""ondistill vs KDFlow (the seed paper's system) on one GPU: the same pair, rows and lengths.

Pair: random bf16 Qwen3 shapes (scripts/gpu_models.py), the untied teacher given the safetensors
index KDFlow's load_only_lm_head needs. Rows: --prompts x --steps prompts of --prompt-len tokens
with dataset responses; every row is prompt + --new-tokens tokens on both sides (KDFlow appends
EOS to each response, so its dataset responses and --generate_max_len are one shorter; ours carry
that EOS or run to rollout.max_new_tokens). EOS is ignored in both rollouts.
    off: KDFlow's train_kd_off_policy (forward KL) vs ondistill trainer.on_policy_fraction=0
         (SeqKD-style, the same dataset responses);
    on:  KDFlow's train_kd_on_policy (SGLang rollout, reverse KL) vs ondistill on-policy (vLLM).
Global batch --prompts rows, micro-batch --micro, lr --lr, one card. KDFlow runs without packing
(no flash-attn on the image), ondistill with packing off and on (--ondistill-packing). Each run
is its own process tree, one after another. Per run: step time by stage (median from step 2),
sequence tokens/s = rows x (prompt + new tokens) / step time, peak used GPU memory (nvidia-smi),
and KDFlow's deviations (scripts/kdflow_patch.py and CLI_DEVIATIONS).

On the GPU machine (no network), SGLang in /tmp/sgl, ondistill's wheels in /tmp/site:
    bash .gpuk/install.sh                      # scripts/make_kdflow_carry.sh made .gpuk/
    export PYTHONPATH=/tmp/site:$PWD RAY_AUTH_MODE=disabled VLLM_USE_FLASHINFER_SAMPLER=0
    python scripts/bench_vs_kdflow.py --kdflow /tmp/kdflow --sglang-path /tmp/sgl \
        --pair 1.7b-8b --prompts 64 --new-tokens 512 --steps 4 --modes off --systems kdflow \
        --out $OUT/vs_kdflow_kdflow_off.json
(one system and mode per call keeps a call within 10 minutes). On CPU, with datasets, peft,
torchdata, pyarrow, pandas, multiprocess in a --target folder (never the .venv) and an unpacked
sglang 0.5.14 wheel (the patch target's signature) in /tmp/sgl514:
    .venv/bin/python scripts/bench_vs_kdflow.py --dry-run --pair tiny-tiny --kdflow .kdflow \
        --kdflow-path '{kdflow}:/tmp/kdcpu' --sglang-path /tmp/sgl514 --out /tmp/dry.json
prints the exact commands and checks the rows with KDFlow's and ondistill's own readers, KDFlow's
arguments with its own parser, ondistill's overrides with Hydra and config_checks.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import bench_gpu
import kdflow_patch
from gpu_models import PAIRS, GpuMemory, build_model, gpu_used_gib, write_prompts

# KDFlow's stage times as its trainers log them, under ondistill's stage names
STAGES = {
    "rollout_time": "generate",
    "teacher_fwd_time": "score",
    "teacher_step_fwd_time": "score",
    "student_train_time": "train",
    "student_step_train_time": "train",
    "weight_update_time": "sync",
}
CLI_DEVIATIONS = [
    "--attn_implementation sdpa --packing_samples False (no flash-attn on the image)",
    "--num_gpus_per_node 1 --teacher_tp_size 1 (--rollout_num_engines 1): one card",
    "--enable_sleep False: no torch_memory_saver, so rollout engine, teacher engine and student "
    "stay resident together (SGLang 0.5.14's mem_fraction_static is a share of the memory free "
    "when each engine starts: on-policy the teacher's is of what the rollout engine left)",
    "--preprocess_num_workers 1, --use_wandb False, --logging_steps 1 (stage times per step)",
    "SGLang 0.5.14 + transformers 5.8.1 (not KDFlow's 0.5.9), ray 2.60, datasets 4.8.5, "
    "torchdata 0.11, sglang-router 0.3.2; a soundfile stand-in (available_formats() only: "
    "SGLang's HTTP server and mistral_common import it for audio)",
]
NOTES = [
    "packing: KDFlow off (its packing needs flash-attn, absent); ondistill runs packing off "
    "(like for like) and on (its own packed path, flex attention): see each run's 'packing'",
    "step time = sum of each system's own stage timers, median from step 2; KDFlow's off-policy "
    "has no generate stage (dataset rows), ondistill's is the dataset rollout (~0)",
    "peak_gpu_gib: whole card (nvidia-smi); SGLang/vLLM pools are reservations set by their "
    "memory shares, and ondistill keeps its vLLM engine (asleep) in off-policy runs too",
    "rollout engines: KDFlow SGLang (HTTP server + router), ondistill vLLM; teacher: KDFlow "
    "SGLang, ondistill --ondistill-teacher (hf by default)",
]
KDFLOW_DATA_CHECK = r"""
import json, sys
mode, prompt_len, new, rows = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
sys.argv = ["kdflow", *json.loads(sys.argv[5])]
from kdflow.arguments import init_args
from kdflow.backend import get_strategy
from kdflow.datasets import PromptDataset, SFTDataset
from kdflow.datasets.utils import blending_datasets
from kdflow.models.utils import check_tokenizer_identical
from kdflow.utils.utils import get_tokenizer
args = init_args("off_policy_kd" if mode == "off" else "on_policy_kd")  # its own CLI parser
strategy = get_strategy(args)
tok = get_tokenizer(args.model.student_name_or_path)
info = check_tokenizer_identical(tok, get_tokenizer(args.model.teacher_name_or_path))
assert info.is_identical, info
data = blending_datasets(args.data.train_dataset_path, None, strategy, args.train.seed)
cls = SFTDataset if mode == "off" else PromptDataset
ds = cls(data, strategy, tokenizer_info=info, max_data_num=args.data.max_samples,
         num_processors=args.data.preprocess_num_workers)
assert len(ds) == rows, (len(ds), rows)
if mode == "off":  # and the teacher's head as KDFlow's student actor finds it (safetensors index)
    from kdflow.ray.train.student_actor import StudentRayActor
    load = StudentRayActor.__ray_actor_class__.load_only_lm_head
    head = load(None, args.model.teacher_name_or_path, device="cpu").weight.shape
    b = ds.collate_fn([ds[i] for i in range(min(4, rows))])
    shape, resp = list(b["stu_input_ids"].shape), b["stu_loss_mask"].sum(1).tolist()
else:  # a rollout as SGLang returns it (decoded text), through KDFlow's own re-tokenization
    from kdflow.trainer.on_policy_kd_trainer import OnPolicyKDTrainer
    text = tok.decode(list(range(1000, 1000 + args.rollout.generate_max_len)))
    s = OnPolicyKDTrainer._tokenize_sample(None, ds[0]["stu_prompt"], text, tok, "stu")
    assert all(ds.processed_dataset[i]["prompt_len"] == prompt_len for i in range(rows))
    shape, resp = list(s["stu_input_ids"].shape), [int(s["stu_loss_mask"].sum())]
assert shape[-1] == prompt_len + new and set(resp) == {new}, (shape, resp)
ok = {"rows": len(ds), "input_ids": shape, "loss_tokens": resp}
print("KDFLOW_DATA_OK", json.dumps(ok | ({"teacher_head": list(head)} if mode == "off" else {})))
"""


def build_pair(a, work: Path) -> tuple[Path, Path]:
    s_shape, t_shape = PAIRS[a.pair]
    student = build_model(s_shape, work / f"qwen3-{s_shape}")
    teacher = build_model(t_shape, work / f"qwen3-{t_shape}")
    for model in (student, teacher):  # KDFlow's off-policy rows always go through a template
        template = model / "chat_template.jinja"
        if not template.exists():  # the plain text: a no-op that both systems read alike
            template.write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    index = teacher / "model.safetensors.index.json"
    if not index.exists():  # KDFlow finds an untied lm_head only through the index
        from safetensors import safe_open

        with safe_open(teacher / "model.safetensors", "pt") as f:
            weight_map = dict.fromkeys(f.keys(), "model.safetensors")
        index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return student, teacher


def write_rows(a, work: Path) -> Path:
    """Prompts end in a space: KDFlow joins prompt and response text without one (the
    word-level tokenizer would then merge the two words at the seam)."""
    n = a.prompts * a.steps
    raw = write_prompts(
        work / f"raw_{a.prompt_len}_{a.new_tokens}_{n}.jsonl", n, a.prompt_len, a.new_tokens - 1
    )
    path = work / f"vs_kdflow_{a.prompt_len}_{a.new_tokens}_{n}.jsonl"
    rows = [json.loads(line) for line in raw.read_text().splitlines()]
    path.write_text("".join(json.dumps({**r, "prompt": r["prompt"] + " "}) + "\n" for r in rows))
    return path


# KDFlow's CLI arguments that are the same for every run (arguments/*.py name them)
KDFLOW_FIXED = """--num_nodes 1 --num_gpus_per_node 1 --backend fsdp2 --lr_warmup_ratio 0
--num_epochs 1 --bf16 True --gradient_checkpointing False --enable_sleep False
--attn_implementation sdpa --packing_samples False --input_key prompt --apply_chat_template False
--preprocess_num_workers 1 --kd_ratio 1.0 --kd_temperature 1.0 --kd_algorithm vanilla_kd
--teacher_tp_size 1 --teacher_dp_size 1 --logging_steps 1 --use_wandb False"""
KDFLOW_MODE = {
    "off": "--output_key response --kd_loss_fn kl --teacher_forward_n_batches 1",
    "on": "--kd_loss_fn rkl --n_samples_per_prompt 1 --rollout_num_engines 1 --rollout_tp_size 1 "
    "--temperature 1.0 --top_p 1.0",
}


def kdflow_args(a, mode: str, student: Path, teacher: Path, rows: Path, out: Path) -> list[str]:
    """Gradient checkpointing off: ondistill has none."""
    args = (
        f"{KDFLOW_FIXED} {KDFLOW_MODE[mode]} --train_batch_size {a.prompts} "
        f"--micro_train_batch_size {a.micro} --learning_rate {a.lr} --save_path {out} "
        f"--student_name_or_path {student} --teacher_name_or_path {teacher} "
        f"--train_dataset_path {rows} --max_len {a.prompt_len + a.new_tokens} "
        f"--prompt_max_len {a.prompt_len}"
    )
    args += f" --teacher_mem_fraction_static {a.kdflow_teacher_mem}"
    if mode == "on":
        args += f" --rollout_batch_size {a.prompts} --generate_max_len {a.new_tokens - 1}"
        args += f" --rollout_mem_fraction_static {a.kdflow_rollout_mem}"
    return args.split()


def kdflow_env(a, copy: Path) -> dict[str, str]:
    path = a.kdflow_path.format(sglang=a.sglang_path, kdflow=copy)
    return {**os.environ, "PYTHONPATH": path, "RAY_AUTH_MODE": "disabled", "WANDB_MODE": "disabled"}


def parse_kdflow(log: str) -> list[dict[str, float]]:
    """Its trainers' per-step lines: '... step [2/4], ... ETA: 0:00:10, key: value, ...'."""
    steps = []
    for m in re.finditer(r"step \[(\d+)/\d+\].*?ETA: [^,]*, (.*)", log):
        kv = dict(re.findall(r"(\w+): (-?[\d.]+(?:e[-+]?\d+)?)", m.group(2)))
        steps.append({"step": int(m.group(1)), **{k: float(v) for k, v in kv.items()}})
    return steps


def summarize(steps: list[dict[str, float]], stage_of: dict[str, str], tokens: int) -> dict:
    """Median step time (sum of the stages) and of each stage, from step 2 on."""
    timed = [s for s in steps if s["step"] >= 2]  # step 1 compiles and warms caches
    if not timed:
        return {"error": "fewer than 2 steps logged"}
    stages = {
        stage: statistics.median(
            sum(s.get(k, 0.0) for k in stage_of if stage_of[k] == stage) for s in timed
        )
        for stage in dict.fromkeys(stage_of.values())
        if any(k in timed[0] for k in stage_of if stage_of[k] == stage)
    }
    step_s = statistics.median(sum(s.get(k, 0.0) for k in stage_of) for s in timed)
    return {"step_s": step_s, "stages_s": stages, "seq_tokens_per_s": tokens / step_s}


def wait_card_free(limit_s: float = 90.0) -> float:
    """Used GiB once the card has drained (<= 2 GiB) or limit_s passed: a run's leftover
    processes would otherwise count in the next run's peak."""
    used, end = 0.0, time.time() + limit_s
    while time.time() < end:
        try:
            used = gpu_used_gib()
        except (OSError, ValueError, subprocess.TimeoutExpired):
            return 0.0
        if used <= 2.0:
            break
        time.sleep(3)
    return used


def run_kdflow(a, mode: str, copy: Path, pair: tuple[Path, Path], rows: Path, out: Path) -> dict:
    student, teacher = pair
    cmd = [a.python, "-m", f"kdflow.cli.train_kd_{mode}_policy"]
    cmd += kdflow_args(a, mode, student, teacher, rows, out / "save")
    out.mkdir(parents=True, exist_ok=True)
    log_path, start, rc = out / "kdflow.log", time.perf_counter(), None
    with GpuMemory() as mem, log_path.open("w") as log:
        # own session: on a timeout the whole tree (Ray, SGLang servers) goes down with it
        env = kdflow_env(a, copy)
        proc = subprocess.Popen(
            cmd, cwd=out, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            rc = proc.wait(timeout=a.timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = "timeout"
    shutil.rmtree(out / "save", ignore_errors=True)  # its student checkpoints: disk, not results
    text = log_path.read_text(errors="replace")
    keep = Path(a.out).with_name(f"{Path(a.out).stem}_kdflow_{mode}.log")  # comes back in $OUT
    keep.write_text(text[-300_000:])
    res = {"system": "kdflow", "mode": mode, "packing": False, "rc": rc, "log": str(keep)}
    res |= {"wall_s": time.perf_counter() - start, "peak_gpu_gib": mem.peak}
    res |= {"gpu_gib_after": wait_card_free(), "steps": parse_kdflow(text)}
    # the re-targeted patch prints this from SGLang's scheduler (if Ray forwards its output)
    res["hidden_state_patch_seen"] = "_append_prefill_hidden_states patched" in text
    res |= summarize(res["steps"], STAGES, a.prompts * (a.prompt_len + a.new_tokens))
    # on-policy KDFlow logs its rows' lengths (prompt + response + EOS): the work it did
    res["logged_row_tokens"] = [s["total_length"] for s in res["steps"] if "total_length" in s]
    if rc != 0 or "error" in res:
        res["log_tail"] = text[-6000:]
    return res


@contextlib.contextmanager
def recorded(commands: list[list[str]]):
    """bench_gpu.run_ondistill with its subprocess recorded, not run (the dry run)."""
    real = bench_gpu.subprocess
    fake = lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1, "dry run", "")  # noqa: E731
    bench_gpu.subprocess = SimpleNamespace(run=lambda cmd, **kw: commands.append(cmd) or fake(cmd))
    try:
        yield
    finally:
        bench_gpu.subprocess = real


def run_ours(a, mode: str, packing: bool, pair: tuple[Path, Path], rows: Path, out: Path) -> dict:
    """ondistill through scripts/bench_gpu.py's runner (Hydra overrides, metrics.jsonl)."""
    student, teacher = pair
    extra = [f"student.lr={a.lr}", "student.grad_clip=1.0"]
    extra += (
        ["trainer.on_policy_fraction=0", "loss.divergence=forward_kl"]
        if mode == "off"
        else ["loss.divergence=reverse_kl"]
    )
    if packing:
        extra += ["student.packing=true"]
        extra += ["teacher.packing=true"] if a.ondistill_teacher == "hf" else []
    ns = SimpleNamespace(**vars(a))  # bench_gpu's arguments, most of them named alike
    vars(ns).update(gpus=1, placement="colocated", teacher_gpus=1, samples=1)
    vars(ns).update(lengths="fixed", student_micro=a.micro, teacher_backend=a.ondistill_teacher)
    ns.extra = extra + a.extra
    res = bench_gpu.run_ondistill(ns, teacher, student, rows, out)
    res |= {"mode": mode, "packing": packing, "gpu_gib_after": wait_card_free()}
    if "step_s" in res:  # its step_s: median from step 2 of the sum of its stages
        res["seq_tokens_per_s"] = a.prompts * (a.prompt_len + a.new_tokens) / res["step_s"]
    return res


def dry_run(a, copy: Path, pair: tuple[Path, Path], rows: Path, work: Path) -> tuple[dict, list]:
    """Print every command; check the rows with both readers and both systems' argument
    parsing, without running either system."""
    from hydra import compose, initialize
    from omegaconf import OmegaConf

    import ondistill.main  # noqa: F401 - registers the "main" config and the recipes
    from ondistill.config_checks import validate
    from ondistill.data import PromptSet

    checks = {}
    for mode in a.modes:
        argv = kdflow_args(a, mode, *pair, rows, work / f"kdflow_{mode}" / "save")
        print(f"[kdflow {mode}] PYTHONPATH={kdflow_env(a, copy)['PYTHONPATH']}")
        print(f"[kdflow {mode}] {a.python} -m kdflow.cli.train_kd_{mode}_policy {' '.join(argv)}")
        sizes = map(str, (a.prompt_len, a.new_tokens, a.prompts * a.steps))
        check = [sys.executable, "-c", KDFLOW_DATA_CHECK, mode, *sizes, json.dumps(argv)]
        proc = subprocess.run(check, env=kdflow_env(a, copy), capture_output=True, text=True)
        ok = [x for x in proc.stdout.splitlines() if x.startswith("KDFLOW_DATA_OK")]
        checks[f"kdflow_{mode}"] = ok[0] if ok else (proc.stdout + proc.stderr)[-3000:]
        for packing in a.ondistill_packing:
            commands: list[list[str]] = []
            with recorded(commands):
                run_ours(a, mode, packing, pair, rows, work / f"ours_{mode}_{packing}")
            print(f"[ondistill {mode} packing={packing}] {' '.join(commands[0])}")
            with initialize(version_base="1.3", config_path=None):
                cfg = OmegaConf.to_object(compose("main", overrides=commands[0][3:]))
            validate(cfg)
            tok = __import__("transformers").AutoTokenizer.from_pretrained(pair[0])
            ps = PromptSet(cfg.data, tok)
            lengths = {(len(e.prompt_ids), len(e.response_ids)) for e in ps.train}
            assert lengths == {(a.prompt_len, a.new_tokens)}, lengths
            checks[f"ondistill_{mode}_packing_{packing}"] = f"ok: {len(ps.train)} rows {lengths}"
    for k, v in checks.items():
        print(f"[check] {k}: {v}")
    return checks, [k for k, v in checks.items() if not v.startswith(("KDFLOW_DATA_OK", "ok"))]


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--kdflow", required=True, help="unpacked KDFlow: the folder holding kdflow/")
    p.add_argument("--sglang-path", default="/tmp/sgl", help="folder holding SGLang 0.5.14")
    p.add_argument(
        "--kdflow-path",
        default="{sglang}:/tmp/kdflow_site:{kdflow}:/tmp/site",
        help="PYTHONPATH of KDFlow's processes ({kdflow}: the patched copy)",
    )
    p.add_argument("--python", default=sys.executable, help="python of KDFlow's processes")
    p.add_argument("--pair", choices=sorted(PAIRS), default="1.7b-8b")
    p.add_argument("--prompts", type=int, default=64, help="rows per step (global batch)")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=512)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--micro", type=int, default=4, help="student rows per forward, both systems")
    p.add_argument("--teacher-micro", type=int, default=16, help="ondistill hf teacher rows")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--chunk", type=int, default=1024, help="ondistill loss.chunk_size")
    p.add_argument("--modes", default="off,on")
    p.add_argument("--systems", default="kdflow,ondistill")
    p.add_argument("--ondistill-packing", default="off,on", help="ondistill runs: off, on or both")
    p.add_argument("--ondistill-teacher", choices=("hf", "sglang"), default="hf")
    p.add_argument(
        "--overlap",
        action="store_true",
        help="ondistill on-policy with trainer.overlap=true (each batch sampled by the weights "
        "one update back; KDFlow has no such mode)",
    )
    p.add_argument("--vllm-memory", type=float, default=0.25, help="ondistill's vLLM share")
    p.add_argument("--sglang-memory", type=float, default=0.3, help="ondistill's SGLang share")
    # SGLang 0.5.14: a share of the memory free when the engine starts (weights + KV cache)
    p.add_argument("--kdflow-rollout-mem", type=float, default=0.25, help="rollout's share")
    p.add_argument("--kdflow-teacher-mem", type=float, default=0.3, help="teacher's share")
    p.add_argument("--timeout", type=float, default=540, help="seconds per KDFlow run")
    p.add_argument("--extra", nargs="*", default=[], help="more ondistill overrides")
    p.add_argument("--workdir", default="/tmp/ondistill_bench")
    p.add_argument("--dry-run", action="store_true", help="print commands and check inputs only")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    a.modes = a.modes.split(",")
    a.ondistill_packing = [x == "on" for x in a.ondistill_packing.split(",")]
    work, out = Path(a.workdir).resolve(), Path(a.out)
    work.mkdir(parents=True, exist_ok=True)
    pair = build_pair(a, work)
    rows = write_rows(a, work)
    copy = work / "kdflow_patched"  # a fresh copy each call: patched exactly once
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(Path(a.kdflow) / "kdflow", copy / "kdflow")
    sglang_src = a.sglang_path if Path(a.sglang_path, "sglang").is_dir() else None
    deviations = kdflow_patch.apply(copy, sglang_src) + CLI_DEVIATIONS
    result = {"args": vars(a), "notes": NOTES, "kdflow_deviations": deviations, "runs": []}
    if not sglang_src:
        result["warning"] = f"no SGLang source under {a.sglang_path}: the patch target is unchecked"
    if a.dry_run:
        result["dry_run_checks"], failed = dry_run(a, copy, pair, rows, work)
        out.write_text(json.dumps(result, indent=2))
        if failed:
            raise SystemExit(f"dry run: {', '.join(failed)} failed (see [check] lines)")
        return
    import torch

    result["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    out.write_text(json.dumps(result, indent=2))  # --systems "": models, rows and patch only
    systems, stamp = a.systems.split(","), int(time.time())
    for mode in a.modes:
        jobs = [("kdflow", False)] if "kdflow" in systems else []
        jobs += [("ondistill", p) for p in a.ondistill_packing if "ondistill" in systems]
        for system, packing in jobs:
            where = work / f"run_{system}_{mode}_packing_{packing}_{stamp}"
            if system == "kdflow":
                res = run_kdflow(a, mode, copy, pair, rows, where)
            else:
                res = run_ours(a, mode, packing, pair, rows, where)
            print(json.dumps({k: v for k, v in res.items() if k != "log_tail"}), flush=True)
            result["runs"].append(res)
            out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
