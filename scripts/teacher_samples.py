"""Write a prompt file whose responses are sampled from a teacher (e.g. for plain fine-tuning
on the teacher's samples, or off-policy KD, with a teacher of another tokenizer).

    .venv/bin/python scripts/teacher_samples.py --teacher builtin:gemma3-270m \\
        --out runs/gemma_samples.jsonl            # the builtin prompts, ~2 min on 2 cores

Prompts are rendered in the teacher's own chat template; the held-out tail of the prompt file
(data.eval_size rows) is copied without responses, so evaluation never sees them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def main() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ondistill.data import BUILTIN_PROMPTS
    from ondistill.model_files import resolve

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default="builtin:gemma3-270m")
    ap.add_argument("--prompts", default="builtin")
    ap.add_argument("--out", required=True)
    ap.add_argument("--eval-size", type=int, default=32, help="held-out rows, kept unanswered")
    ap.add_argument("--limit", type=int, default=0, help="answer only the first N prompts")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-dir", default="~/.cache/ondistill")
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    path = BUILTIN_PROMPTS if args.prompts == "builtin" else Path(args.prompts)
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    model_dir = resolve(args.teacher, args.cache_dir)
    tok = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    train = rows[: len(rows) - args.eval_size]
    answer = train[: args.limit] if args.limit else train
    held_out = [{"prompt": r["prompt"]} for r in rows[len(rows) - args.eval_size :]]
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    for i in range(0, len(answer), args.batch):
        part = answer[i : i + args.batch]
        texts = [
            tok.apply_chat_template(
                [{"role": "user", "content": r["prompt"]}],
                add_generation_prompt=True,
                tokenize=False,
            )
            for r in part
        ]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(
                **enc,
                do_sample=True,
                temperature=args.temperature,
                top_k=0,
                top_p=1.0,
                max_new_tokens=args.max_new_tokens,
            )
        for r, ids in zip(part, out[:, enc["input_ids"].shape[1] :], strict=True):
            r["response"] = tok.decode(ids, skip_special_tokens=True).strip() or "."
        # Written after every batch: an interrupted run leaves a usable (smaller) file.
        keep = answer[: i + len(part)] + held_out
        out_path.write_text("".join(json.dumps(r) + "\n" for r in keep))
        print(f"[teacher_samples] {i + len(part)}/{len(answer)} -> {out_path}", flush=True)


if __name__ == "__main__":
    main()
