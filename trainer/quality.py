"""What a person reading the answers would notice, as numbers: collapse (repetition, few
distinct words, empty or endless answers) and closeness to the teacher's own answers.

A KL can fall while the student collapses onto a mode the teacher does not punish (an
on-policy reverse-KL student answering every prompt with "A\\nA\\nA"); these metrics are
computed on decoded text, beside the KLs, so a run cannot report success in that case.
Words are what `WORD` matches, so the numbers do not depend on either side's tokenizer.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

WORD = re.compile(r"\w+|[^\w\s]")


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def _ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct(texts: list[str], n: int) -> float:
    """Mean over texts of (distinct n-grams / n-grams) within the text; texts shorter than n
    words are left out (1.0 if none is long enough: nothing repeats)."""
    ratios = []
    for text in texts:
        grams = _ngrams(words(text), n)
        if grams:
            ratios.append(len(set(grams)) / len(grams))
    return sum(ratios) / len(ratios) if ratios else 1.0


def repeated_ngram_rate(texts: list[str], n: int = 3) -> float:
    """Share of all n-grams that repeat an n-gram seen earlier in the same text (pooled over
    texts): 0 for varied text, near 1 for a line said over and over."""
    repeats = total = 0
    for text in texts:
        grams = _ngrams(words(text), n)
        counts = Counter(grams)
        repeats += sum(c - 1 for c in counts.values())
        total += len(grams)
    return repeats / total if total else 0.0


def chrf(hypotheses: list[str], references: list[str]) -> float:
    """Mean sentence-level chrF (sacrebleu, 0-100) of each hypothesis against its reference."""
    from sacrebleu.metrics import CHRF

    metric = CHRF()
    scores = [
        metric.sentence_score(h, [r]).score for h, r in zip(hypotheses, references, strict=True)
    ]
    return sum(scores) / len(scores) if scores else 0.0


def text_metrics(texts: list[str], lengths: list[int], ended: list[bool]) -> dict[str, float]:
    """Collapse metrics of one set of answers. lengths: tokens per answer; ended: whether the
    answer stopped on its own (EOS) instead of running into the token limit."""
    n = max(1, len(texts))
    return {
        "distinct_1": distinct(texts, 1),
        "distinct_2": distinct(texts, 2),
        "repeated_3gram_rate": repeated_ngram_rate(texts, 3),
        "mean_length": sum(lengths) / n,
        "eos_share": sum(ended) / n,
        # answers without a word or mark: whitespace scores as "varied" on the two above
        "empty_share": sum(not words(t) for t in texts) / n,
    }


@dataclass(frozen=True)
class CollapseRule:
    """The student looks collapsed when its answers repeat far more, or vary far less, than
    the teacher's answers to the same prompts (the teacher's own values are the yardstick, so
    a terse or repetitive teacher does not trip it)."""

    distinct_2_ratio: float = 0.6  # student distinct-2 below 0.6 x the teacher's
    # student repeated-3-gram rate above the teacher's + 0.15: the default job's greedy 0.32
    # against the teacher's 0.09 (half its answers ending in a loop) passed the earlier 0.25
    repeat_margin: float = 0.15
    empty_margin: float = 0.25  # student share of empty answers above the teacher's + 0.25

    @staticmethod
    def suffixes(metrics: dict[str, float]) -> list[str]:
        """The teachers evaluation metrics are kept per: [""] for one teacher, ["/<name>", ...]
        for several (trainer.evaluate.PerTeacher)."""
        key = "eval/greedy_chrf"
        return sorted(k[len(key) :] for k in metrics if k == key or k.startswith(key + "/"))

    def check(
        self, student: dict[str, float], teacher: dict[str, float], suffix: str = ""
    ) -> list[str]:
        """Plain-words reasons the student looks collapsed, empty if it does not. Both dicts
        hold evaluation metrics (trainer/evaluate.py): eval/{sample,greedy}_<metric>, each
        followed by `suffix` (one teacher's, see suffixes)."""
        reasons = []
        for kind in ("greedy", "sample"):
            s = {
                k: student[f"eval/{kind}_{k}{suffix}"]
                for k in ("distinct_2", "repeated_3gram_rate")
            }
            t = {k: teacher[f"eval/{kind}_{k}{suffix}"] for k in s}
            if s["distinct_2"] < self.distinct_2_ratio * t["distinct_2"]:
                reasons.append(
                    f"its {kind} answers' distinct-2 is {s['distinct_2']:.2f} against "
                    f"the teacher's {t['distinct_2']:.2f}"
                )
            if s["repeated_3gram_rate"] > t["repeated_3gram_rate"] + self.repeat_margin:
                reasons.append(
                    f"{s['repeated_3gram_rate']:.0%} of the 3-grams of its {kind} "
                    f"answers repeat (the teacher's: {t['repeated_3gram_rate']:.0%})"
                )
            # absent from metrics written before the key existed (a resumed run's teacher)
            empty = [d.get(f"eval/{kind}_empty_share{suffix}", 0.0) for d in (student, teacher)]
            if empty[0] > empty[1] + self.empty_margin:
                reasons.append(
                    f"{empty[0]:.0%} of its {kind} answers are empty or whitespace "
                    f"(the teacher's: {empty[1]:.0%})"
                )
        return reasons

    @staticmethod
    def drifted(before: dict[str, float], after: dict[str, float], suffix: str = "") -> str | None:
        """A plain-words reason when training took the student's greedy answers further from
        the teacher's than the untrained student's were (chrF fell), whatever its KLs did: a
        student can lower both KLs while its answers go off topic (docs: the minillm recipe
        at lr 5e-5)."""
        key = "eval/greedy_chrf" + suffix
        if key in before and key in after and after[key] < before[key]:
            return (
                f"its greedy answers are further from the teacher's than before training "
                f"(chrF {before[key]:.1f} -> {after[key]:.1f})"
            )
        return None
