"""Build the shipped prompt set (ondistill/assets/prompts.jsonl): 256 short instructions made
from templates x topics, each with a response written by the builtin teacher (greedy, up to
64 new tokens) so off-policy KD and SeqKD work out of the box.

    .venv/bin/python scripts/make_prompts.py            # ~3 min on 2 cores
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import torch

TOPICS = [
    "the moon",
    "volcanoes",
    "honey bees",
    "the Roman Empire",
    "photosynthesis",
    "prime numbers",
    "the Pacific Ocean",
    "electric cars",
    "coffee",
    "the human heart",
    "rainbows",
    "chess",
    "the internet",
    "penguins",
    "gravity",
    "recycling",
    "bread",
    "the Eiffel Tower",
    "black holes",
    "sleep",
    "vaccines",
    "the piano",
    "deserts",
    "friendship",
    "solar panels",
    "dinosaurs",
    "the water cycle",
    "Python programming",
    "earthquakes",
    "tea",
    "the Great Wall of China",
    "music",
]
TEMPLATES = [
    "Tell me one interesting fact about {t}.",
    "Explain {t} to a ten-year-old in two sentences.",
    "Write a short poem about {t}.",
    "What is the most important thing to know about {t}?",
    "Give three words that describe {t}.",
    "Write one sentence that starts with the word 'Imagine' about {t}.",
    "Why do people find {t} interesting?",
    "Summarize what you know about {t} in one sentence.",
]


def main() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ondistill.model_files import resolve

    prompts = [t.format(t=topic) for topic, t in itertools.product(TOPICS, TEMPLATES)]
    random.Random(0).shuffle(prompts)
    teacher = resolve("builtin:smollm2-135m-instruct", "~/.cache/ondistill")
    tok = AutoTokenizer.from_pretrained(teacher, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(teacher, dtype=torch.float32).eval()
    rows = []
    for i in range(0, len(prompts), 32):
        chunk = prompts[i : i + 32]
        enc = tok.apply_chat_template(
            [[{"role": "user", "content": p}] for p in chunk],
            add_generation_prompt=True,
            padding=True,
            return_tensors="pt",
            return_dict=True,
        )
        with torch.no_grad():
            out = model.generate(
                **enc, max_new_tokens=64, do_sample=False, pad_token_id=tok.pad_token_id
            )
        for p, seq in zip(chunk, out[:, enc["input_ids"].shape[1] :], strict=True):
            rows.append(
                {"prompt": p, "response": tok.decode(seq, skip_special_tokens=True).strip()}
            )
        print(f"{len(rows)}/{len(prompts)}", flush=True)
    path = Path(__file__).resolve().parents[1] / "ondistill" / "assets" / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {len(rows)} rows to {path}")


if __name__ == "__main__":
    main()
