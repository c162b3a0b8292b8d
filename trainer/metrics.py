"""Where metrics go: a progress bar, a JSONL file, wandb (offline unless configured), and a
PNG of the curves at the end."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ondistill.config import LogConfig


class MetricsLogger:
    def __init__(
        self,
        out_dir: Path,
        cfg: LogConfig,
        total_steps: int,
        config: dict[str, Any],
        history: list[dict] | None = None,
        start_step: int = 0,
    ):
        """history: rows of a resumed run, up to its checkpoint; metrics.jsonl is rewritten
        with them, so rows the crashed run logged after its checkpoint disappear."""
        self.out_dir, self.cfg = out_dir, cfg
        self.path = out_dir / "metrics.jsonl"
        self.history: list[dict] = list(history or [])
        self.file = self.path.open("w") if cfg.jsonl else None
        if self.file:
            self.file.writelines(json.dumps(row) + "\n" for row in self.history)
            self.file.flush()
        self.wandb = None
        if cfg.wandb != "disabled":
            import wandb

            os.environ.setdefault("WANDB_SILENT", "true")
            mode: Any = cfg.wandb  # offline | online (validate() checked it)
            self.wandb = wandb.init(
                project=cfg.wandb_project, mode=mode, config=config, dir=str(out_dir)
            )
        self.bar = None
        if cfg.progress:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total_steps,
                initial=start_step,
                desc="distill",
                unit="step",
                dynamic_ncols=True,
            )

    def log(self, step: int, metrics: dict[str, float]) -> None:
        row = {"step": step, **metrics}
        self.history.append(row)
        if self.file:
            self.file.write(json.dumps(row) + "\n")
            self.file.flush()
        if self.wandb:
            self.wandb.log(metrics, step=step)
        if self.bar and "loss" in metrics:
            self.bar.update(1)
            shown = {
                "loss": f"{metrics['loss']:.3f}",
                "kl": f"{metrics['kl']:.3f}",
                "tok_s": f"{metrics['tokens_per_s']:.0f}",
            }
            if "rollout_k3_max" in metrics:  # on-policy: the sampler's drift from the student
                shown["rollout_k3"] = f"{metrics['rollout_k3_max']:.1e}"
            self.bar.set_postfix(shown)

    def write(self, text: str) -> None:
        if self.bar:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar:
            self.bar.close()
        if self.file:
            self.file.close()
        if self.wandb:
            self.wandb.finish()


def plot(metrics_path: Path, png_path: Path) -> Path:
    """Training loss, held-out divergences and the answers' quality against step, from the
    JSONL file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    train = [r for r in rows if "loss" in r]
    evals = [r for r in rows if any(k.startswith("eval/") for k in r)]
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(16, 4))
    for key in _per_teacher(train, ("loss",)):  # and loss/<teacher> with several teachers
        ax1.plot([r["step"] for r in train], [r.get(key) for r in train], label="train " + key)
    ax1.set_xlabel("step"), ax1.set_title("training divergence"), ax1.legend()
    for key in _per_teacher(evals, ("eval/rkl_student_samples", "eval/fkl_teacher_samples")):
        ax2.plot([r["step"] for r in evals], [r[key] for r in evals], marker="o", label=key[5:])
    ax2.set_xlabel("step"), ax2.set_title("held-out (per token)"), ax2.legend()
    for name, scale in (
        ("eval/greedy_distinct_2", 1),
        ("eval/sample_distinct_2", 1),
        ("eval/greedy_repeated_3gram_rate", 1),
        ("eval/greedy_chrf", 0.01),
    ):
        for key in _per_teacher(evals, (name,)):
            ax3.plot(
                [r["step"] for r in evals],
                [r[key] * scale for r in evals],
                marker="o",
                label=key[5:] + (" / 100" if scale != 1 else ""),
            )
    ax3.set_xlabel("step"), ax3.set_title("held-out answers (0-1)"), ax3.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path


def _per_teacher(rows: list[dict], names: tuple[str, ...]) -> list[str]:
    """The keys of rows[0] that are one of `names`, as such or per teacher (<name>/<teacher>)."""
    keys = rows[0] if rows else {}
    return [k for k in keys if k in names or k.rsplit("/", 1)[0] in names]
