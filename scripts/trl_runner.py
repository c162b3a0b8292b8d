"""One TRL distillation run for scripts/bench_vs_trl.py, in its own process so the bench can
measure its peak memory alone. Prints one line `TRL_RESULT {json}` at the end.

    .venv/bin/python scripts/trl_runner.py --json-args '{"config": "on_policy", ...}'

Keys of --json-args: config (on_policy | gkd_on | gkd_off), student, teacher (HF dirs),
rows (a JSONL file of {"prompt", "response"} rows, already in step order), steps, batch,
max_new_tokens, lr, beta, seed, threads, use_vllm, output_dir; optional: device, bf16, chat,
vllm_memory, max_model_len (vLLM's context, default 2048).

TRL is used as shipped; fixed-length generation uses only its documented knobs:
DistillationConfig.generation_kwargs ({"ignore_eos": True} for vLLM, {"min_new_tokens": N}
for transformers) and, for GKDTrainer (which has no generation_kwargs), the student's own
generation_config.min_new_tokens, which transformers' generate() merges into the trainer's
config for fields the trainer left unset.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import traceback
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback


class StepTimer(TrainerCallback):
    """Wall time of each optimizer step (on_step_begin -> on_step_end), plus the interval
    between consecutive step ends, which also covers data loading and logging."""

    def __init__(self) -> None:
        self.begin = 0.0
        self.last_end: float | None = None
        self.step_s: list[float] = []
        self.interval_s: list[float] = []
        self.logs: list[dict[str, float]] = []

    def on_train_begin(self, args, state, control, **kw):
        self.last_end = time.perf_counter()

    def on_step_begin(self, args, state, control, **kw):
        self.begin = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        now = time.perf_counter()
        self.step_s.append(now - self.begin)
        self.interval_s.append(now - self.last_end)
        self.last_end = now

    def on_log(self, args, state, control, logs=None, **kw):
        if logs:
            self.logs.append({k: v for k, v in logs.items() if isinstance(v, (int, float))})


def read_rows(path: str) -> list[dict[str, str]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def common_args(a: dict[str, Any]) -> dict[str, Any]:
    """TrainingArguments both trainers share: fp32 on CPU, constant LR, no eval/save/report."""
    return dict(
        output_dir=a["output_dir"],
        max_steps=a["steps"],
        per_device_train_batch_size=a["batch"],
        gradient_accumulation_steps=1,
        learning_rate=a["lr"],
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        bf16=a.get("bf16", False),
        fp16=False,
        use_cpu=a.get("device", "cpu") == "cpu",
        gradient_checkpointing=False,
        logging_steps=1,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        seed=a["seed"],
        dataloader_num_workers=0,
        disable_tqdm=True,
    )


def dtype(a: dict[str, Any]) -> str:
    """Weights dtype: fp32 on CPU; bf16 on GPU (bf16=true), as TRL users train there."""
    return "bfloat16" if a.get("bf16", False) else "float32"


def prompt(a: dict[str, Any], row: dict[str, str]) -> Any:
    """Conversational prompt, or plain text where the tokenizer has no chat template
    (the GPU bench's word-level tokenizer)."""
    return [{"role": "user", "content": row["prompt"]}] if a.get("chat", True) else row["prompt"]


def build_distillation(a: dict[str, Any], rows: list[dict[str, str]], timer: StepTimer):
    from datasets import Dataset
    from trl import DistillationConfig, DistillationTrainer

    n = a["max_new_tokens"]
    # vLLM: ignore_eos is the SamplingParams twin of ondistill's rollout.ignore_eos;
    # transformers: min_new_tokens masks EOS until N tokens, so every row has N tokens.
    gen = {"ignore_eos": True} if a["use_vllm"] else {"min_new_tokens": n}
    cfg = DistillationConfig(
        **common_args(a),
        teacher_model_name_or_path=a["teacher"],
        model_init_kwargs={"dtype": dtype(a)},
        teacher_model_init_kwargs={"dtype": dtype(a)},
        max_completion_length=n,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        beta=a["beta"],
        generation_kwargs=gen,
        shuffle_dataset=False,
        use_vllm=a["use_vllm"],
        vllm_mode="colocate",
        vllm_max_model_length=a.get("max_model_len", 2048),
        vllm_gpu_memory_utilization=a.get("vllm_memory", 0.3),
    )
    data = Dataset.from_list([{"prompt": prompt(a, r)} for r in rows])
    return DistillationTrainer(
        model=a["student"],
        teacher_model=a["teacher"],
        args=cfg,
        train_dataset=data,
        callbacks=[timer],
    )


def build_gkd(a: dict[str, Any], rows: list[dict[str, str]], timer: StepTimer):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    class CountingGKD(GKDTrainer):
        """Only observes: records how many response tokens each loss is taken over."""

        def compute_loss(self, model, inputs, *args, **kwargs):
            self.counted.append(int((inputs["labels"][:, 1:] != -100).sum()))
            return super().compute_loss(model, inputs, *args, **kwargs)

    lmbda = 1.0 if a["config"] == "gkd_on" else 0.0
    cfg = GKDConfig(
        **common_args(a),
        lmbda=lmbda,
        beta=a["beta"],
        temperature=1.0,
        max_new_tokens=a["max_new_tokens"],
        train_sampling_strategy="sequential",
        max_length=2048,
    )
    tok = AutoTokenizer.from_pretrained(a["student"])
    student = AutoModelForCausalLM.from_pretrained(a["student"], dtype=getattr(torch, dtype(a)))
    student.generation_config.min_new_tokens = a["max_new_tokens"]  # fixed length, see top
    teacher = AutoModelForCausalLM.from_pretrained(a["teacher"], dtype=getattr(torch, dtype(a)))
    data = Dataset.from_list(
        [
            {
                "messages": [
                    {"role": "user", "content": r["prompt"]},
                    {"role": "assistant", "content": r["response"]},
                ]
            }
            for r in rows
        ]
    )
    trainer = CountingGKD(
        model=student,
        teacher_model=teacher,
        args=cfg,
        train_dataset=data,
        processing_class=tok,
        callbacks=[timer],
    )
    trainer.counted = []
    return trainer, trainer.counted


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json-args", required=True)
    a = json.loads(ap.parse_args().json_args)
    torch.set_num_threads(a["threads"])
    # vLLM CPU: the KV cache size it may claim (else most of RAM), as ondistill's engine sets.
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    rows = read_rows(a["rows"])
    timer = StepTimer()
    result: dict[str, Any] = {"config": a["config"], "use_vllm": a["use_vllm"]}
    counted: list[int] | None = None
    start = time.perf_counter()
    try:
        if a["config"] == "on_policy":
            trainer = build_distillation(a, rows, timer)
            result["trainer"] = "DistillationTrainer"
        else:
            trainer, counted = build_gkd(a, rows, timer)
            result["trainer"] = "GKDTrainer"
        result["startup_s"] = time.perf_counter() - start
        trainer.train()
    except Exception as e:  # the bench records why, e.g. vLLM failing on this machine
        result["error"] = f"{type(e).__name__}: {e}"
        result["traceback"] = traceback.format_exc()[-4000:]
    result.update(
        step_s=timer.step_s,
        interval_s=timer.interval_s,
        train_s=time.perf_counter() - start - result.get("startup_s", 0.0),
    )
    if counted is not None:
        result["response_tokens"] = counted
    else:  # DistillationTrainer logs its completion lengths each step (logging_steps=1)
        result["response_tokens"] = [
            round(log["completions/mean_length"] * a["batch"])
            for log in timer.logs
            if "completions/mean_length" in log
        ]
        result["completion_min_len"] = [
            log.get("completions/min_length")
            for log in timer.logs
            if "completions/min_length" in log
        ]
    result["loss"] = [log["loss"] for log in timer.logs if "loss" in log]
    print("TRL_RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
