"""Adapt an unpacked copy of KDFlow (songmzhang/KDFlow at 3a7a21a) to the lent H200 image, for
scripts/bench_vs_kdflow.py. KDFlow's code is never part of this repository: this script only edits
a copy, by exact string replacements, each of which must match exactly once (a changed KDFlow
fails here, loudly, instead of running something else).

    python scripts/kdflow_patch.py /tmp/kdflow_copy [--sglang-path /tmp/sgl]

PATCHES below lists each deviation with its reason. All but ignore_eos were needed on an H200
(SGLang 0.5.14, transformers 5.8.1), where KDFlow's two trainers then ran to completion;
ignore_eos makes its rollout the fixed work ondistill's benchmark runs.
"""

from __future__ import annotations

import argparse
import py_compile
import re
from pathlib import Path

MARKER = ".ondistill_patched"

# SGLang 0.5.14 moved the prefill result handling out of SchedulerOutputProcessorMixin (which
# KDFlow's monkey patch targets; its apply_patch then only prints a warning and the hidden
# states come back as Python lists). Same change in the new place: float16 numpy, not lists.
HIDDEN_PATCH = """

# --- ondistill scripts/kdflow_patch.py: KDFlow's numpy hidden states for SGLang 0.5.14 ---
def apply_patch():
    global _PATCH_APPLIED
    if _PATCH_APPLIED:
        return True
    from sglang.srt.managers.scheduler_components.batch_result_processor import (
        SchedulerBatchResultProcessor,
    )

    def _append_prefill_hidden_states(self, *, req, logits_output, hidden_state_offset, **kw):
        end = hidden_state_offset + len(req.origin_input_ids)
        req.hidden_states.append(
            logits_output.hidden_states[hidden_state_offset:end].half().cpu().numpy()
        )
        return end

    SchedulerBatchResultProcessor._append_prefill_hidden_states = _append_prefill_hidden_states
    _PATCH_APPLIED = True
    print(
        "[monkey_patch] SUCCESS: SchedulerBatchResultProcessor._append_prefill_hidden_states "
        f"patched (numpy), PID={os.getpid()}",
        flush=True,
    )
    return True
"""

SGLANG_ARGS = 'attention_backend="triton", sampling_backend="pytorch", grammar_backend="none"'

# (file under the copy, text to find, replacement, the deviation in words)
PATCHES: list[tuple[str, str, str, str]] = [
    (
        "kdflow/models/ring_attn_utils.py",
        "from flash_attn.bert_padding import index_first_axis, pad_input, rearrange, unpad_input\n"
        "from flash_attn.utils.distributed import all_gather\n",
        "try:  # ondistill bench: no flash-attn on the image (used by packing / ring attention)\n"
        "    from flash_attn.bert_padding import (\n"
        "        index_first_axis, pad_input, rearrange, unpad_input,\n"
        "    )\n"
        "    from flash_attn.utils.distributed import all_gather\n"
        "except ImportError:\n"
        "    pass\n",
        "no flash-attn: its import wrapped in try/except (run with --attn_implementation sdpa "
        "--packing_samples False)",
    ),
    (
        "kdflow/backend/sglang/sglang_engine.py",
        "            enable_memory_saver=config.enable_memory_saver,\n"
        "            enable_weights_cpu_backup=config.enable_weights_cpu_backup,\n",
        "            enable_memory_saver=False,  # ondistill bench: no torch_memory_saver\n"
        "            enable_weights_cpu_backup=False,\n"
        f"            {SGLANG_ARGS},\n",
        "teacher SGLang Engine: memory saver and weight CPU backup off (torch_memory_saver not "
        f"brought, so no sleep/wake); {SGLANG_ARGS} (FA3, flashinfer JIT, xgrammar not brought)",
    ),
    (
        "kdflow/ray/train/teacher_actor.py",
        'sampling_params={"max_new_tokens": 0},',
        'sampling_params={"max_new_tokens": 1},  # ondistill bench: 0.5.14 cuts hidden states at 0',
        "teacher prefill max_new_tokens 0 -> 1 (SGLang 0.5.14 cuts the returned hidden states "
        "to the finished length)",
    ),
    (
        "kdflow/backend/sglang/monkey_patch.py",
        "\ndef apply_patch():\n",
        "\ndef _apply_patch_mixin():  # KDFlow's own, for SGLang <= 0.5.9 (ondistill bench)\n",
        "hidden-state monkey patch re-targeted to SGLang 0.5.14's "
        "SchedulerBatchResultProcessor._append_prefill_hidden_states (.half().cpu().numpy()); "
        "KDFlow's targets a mixin 0.5.14 no longer has and would silently not apply",
    ),
    (
        "kdflow/cli/train_kd_on_policy.py",
        "        enable_memory_saver=True,\n",
        "        enable_memory_saver=False,  # ondistill bench: torch_memory_saver not brought\n"
        f"        extra_server_args=dict({SGLANG_ARGS}),\n",
        f"rollout SGLang server: memory saver (and so weight CPU backup) off; {SGLANG_ARGS}",
    ),
    (
        "kdflow/cli/train_kd_on_policy.py",
        '        "top_p": args.rollout.top_p,\n',
        '        "top_p": args.rollout.top_p,\n'
        '        "ignore_eos": True,  # ondistill bench: fixed work (our rollout.ignore_eos)\n',
        "rollout ignore_eos=True (KDFlow has no option for it; ondistill runs with "
        "rollout.ignore_eos=true): every sample is --generate_max_len tokens",
    ),
]
DEVIATIONS = [why for *_, why in PATCHES]


def check_sglang(sglang_path: str) -> None:
    """The method the hidden-state patch replaces must exist with the keyword-only arguments it
    takes (SGLang 0.5.14's; read from the source, so no GPU and no import are needed)."""
    src = Path(sglang_path, "sglang/srt/managers/scheduler_components/batch_result_processor.py")
    if not src.exists():
        raise SystemExit(f"{src} not found: is --sglang-path an SGLang 0.5.14 install?")
    sig = re.search(r"def _append_prefill_hidden_states\(\s*self,\s*\*,([^)]*)\)", src.read_text())
    names = [x.split(":")[0].strip() for x in sig.group(1).split(",") if x.strip()] if sig else []
    if names != ["req", "logits_output", "hidden_state_offset"]:
        raise SystemExit(
            f"{src}: _append_prefill_hidden_states(self, *, {names}) is not SGLang 0.5.14's "
            "(req, logits_output, hidden_state_offset); update HIDDEN_PATCH in this script."
        )


def apply(copy: Path, sglang_path: str | None = None) -> list[str]:
    """Patch the KDFlow copy at `copy` (the folder holding kdflow/) in place; returns the
    deviations. A copy already patched is refused: patch a fresh one."""
    copy = Path(copy)
    if (copy / "kdflow" / MARKER).exists():
        raise SystemExit(f"{copy} is already patched; unpack a fresh KDFlow copy.")
    if sglang_path:
        check_sglang(sglang_path)
    texts: dict[str, str] = {}
    for rel, old, new, _ in PATCHES:
        text = texts.setdefault(rel, (copy / rel).read_text())
        if text.count(old) != 1:
            raise SystemExit(
                f"{copy / rel}: expected exactly one {old.strip()!r}, found {text.count(old)}; "
                "this is not the KDFlow (3a7a21a) the patch was written for."
            )
        texts[rel] = text.replace(old, new)
    texts["kdflow/backend/sglang/monkey_patch.py"] += HIDDEN_PATCH
    for rel, text in texts.items():
        (copy / rel).write_text(text)
        py_compile.compile(str(copy / rel), doraise=True)
    (copy / "kdflow" / MARKER).write_text("\n".join(DEVIATIONS) + "\n")
    return DEVIATIONS


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("copy", help="an unpacked KDFlow copy: the folder that holds kdflow/")
    p.add_argument("--sglang-path", help="check SGLang's patched method there (e.g. /tmp/sgl)")
    a = p.parse_args()
    for line in apply(Path(a.copy), a.sglang_path):
        print("patched:", line)


if __name__ == "__main__":
    main()
