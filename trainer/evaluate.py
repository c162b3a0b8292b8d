"""Held-out evaluation, the same before and after training.

Distributions (per token):
- rkl_student_samples: exact full-vocabulary KL(student || teacher) on the student's own
  samples for the held-out prompts (what on-policy distillation minimises);
- fkl_teacher_samples: exact KL(teacher || student) on the teacher's samples for the same
  prompts (drawn once, at the start); student_nll_teacher_samples: the student's NLL of them;
- teacher_nll_student_samples: how unlikely the teacher finds the student's tokens.

Answers (trainer/quality.py, on decoded text): for the student's sampled and greedy answers,
distinct-1/2, the repeated-3-gram rate, mean length and the share that stop on their own; the
chrF of its greedy answer against the teacher's greedy answer. The teacher's own values of the
same metrics are the yardstick (`reference`) that the run's summary and collapse check use.
Every answer is kept (`samples`) so a person can read them.

With a teacher of another tokenizer, trainer/xtok_evaluate.py compares the distributions per
aligned chunk instead.
"""

from __future__ import annotations

import torch
from tensordict import TensorDict

from ondistill import batch as B
from ondistill.data import PromptSet, collate_prompts
from ondistill.xtok.vocab import end_of_turn_id
from trainer.quality import chrf, text_metrics

EVAL_SEED = 1234


class Answers:
    """Decoded responses of one batch list: texts (grouped by prompt, n per prompt), token
    lengths and whether each stopped on its own."""

    def __init__(self, batches: list[TensorDict], tokenizer, ends: set[int]):
        self.texts: list[str] = []
        self.lengths: list[int] = []
        self.ended: list[bool] = []
        for td in batches:
            for ids, m in zip(td[B.RESPONSE_IDS], td[B.RESPONSE_MASK], strict=True):
                ids = ids[m].tolist()
                self.texts.append(tokenizer.decode(ids, skip_special_tokens=True).strip())
                self.lengths.append(len(ids))
                self.ended.append(bool(ids) and ids[-1] in ends)

    def per_prompt(self, prompts: int) -> list[list[str]]:
        n = len(self.texts) // max(1, prompts)
        return [self.texts[i * n : (i + 1) * n] for i in range(prompts)]

    def metrics(self, prefix: str) -> dict[str, float]:
        return {
            f"{prefix}_{k}": v
            for k, v in text_metrics(self.texts, self.lengths, self.ended).items()
        }


class Evaluator:
    # A cross-tokenizer evaluator's share of aligned tokens on real text; 0: no alignment
    expected_alignment = 0.0

    def __init__(
        self, prompts: PromptSet, batch_size: int, rollout, teacher, student, teacher_sampler
    ) -> None:
        self.rollout, self.teacher, self.student = rollout, teacher, student
        self.tokenizer = prompts.tokenizer
        self.ends = {end_of_turn_id(self.tokenizer), self.tokenizer.eos_token_id}
        self.prompt_texts = [e.prompt for e in prompts.eval]
        self.prompt_batches = [
            collate_prompts(b, prompts.pad_id, prompts.teacher_pad_id)
            for b in prompts.eval_batches(batch_size)
        ]
        # The teacher's answers are fixed for the whole run: sample, score and decode them once.
        sampled, greedy = self._teacher_answers(teacher_sampler)
        self.teacher_batches = [teacher.score(b) for b in sampled]
        self.teacher_sampled = Answers(sampled, self.tokenizer, self.ends)
        self.teacher_greedy = Answers(greedy, self.tokenizer, self.ends)
        self.reference = {
            **self.teacher_sampled.metrics("sample"),
            **self.teacher_greedy.metrics("greedy"),
        }
        self.samples: list[dict] = []  # the last run()'s answers, one row per prompt

    def _teacher_answers(self, sampler) -> tuple[list[TensorDict], list[TensorDict]]:
        """The teacher's sampled and greedy answers as student-token ROLLOUT batches."""
        return (
            [sampler.generate(p, seed=EVAL_SEED) for p in self.prompt_batches],
            [sampler.generate(p, seed=EVAL_SEED, greedy=True) for p in self.prompt_batches],
        )

    def _distribution_metrics(self, student_batches: list[TensorDict]) -> dict[str, float]:
        stats = [self.student.token_stats(b, ("reverse_kl",)) for b in student_batches]
        on_teacher = [self.student.token_stats(b, ("forward_kl",)) for b in self.teacher_batches]
        return {
            "rkl_student_samples": float(torch.cat([s["reverse_kl"] for s in stats]).mean()),
            "teacher_nll_student_samples": -float(
                torch.cat([s["teacher_logprob"] for s in stats]).mean()
            ),
            "fkl_teacher_samples": float(torch.cat([s["forward_kl"] for s in on_teacher]).mean()),
            "student_nll_teacher_samples": -float(
                torch.cat([s["student_logprob"] for s in on_teacher]).mean()
            ),
        }

    def run(self) -> dict[str, float]:
        sampled = [self.rollout.generate(p, seed=EVAL_SEED) for p in self.prompt_batches]
        greedy = [
            self.rollout.generate(p, seed=EVAL_SEED, greedy=True) for p in self.prompt_batches
        ]
        metrics = self._distribution_metrics([self.teacher.score(b) for b in sampled])
        s_sampled = Answers(sampled, self.tokenizer, self.ends)
        s_greedy = Answers(greedy, self.tokenizer, self.ends)
        metrics.update(s_sampled.metrics("sample"))
        metrics.update(s_greedy.metrics("greedy"))
        metrics["greedy_chrf"] = chrf(s_greedy.texts, self.teacher_greedy.texts)
        n = len(self.prompt_texts)
        self.samples = [
            {
                "prompt": p,
                "student_greedy": sg[0],
                "student_samples": ss,
                "teacher_greedy": tg[0],
                "teacher_samples": ts,
            }
            for p, sg, ss, tg, ts in zip(
                self.prompt_texts,
                s_greedy.per_prompt(n),
                s_sampled.per_prompt(n),
                self.teacher_greedy.per_prompt(n),
                self.teacher_sampled.per_prompt(n),
                strict=True,
            )
        ]
        return {f"eval/{k}": v for k, v in metrics.items()}


class PerTeacher:
    """Held-out evaluation with several teachers: each teacher's evaluator on its rows, its
    metrics as eval/<metric>/<teacher name>, its answers marked with the teacher's name."""

    # the training loop's alignment warning is the one cross-tokenizer teacher's (trainer/run.py)
    expected_alignment = 0.0

    def __init__(self, evaluators: dict[str, Evaluator]):
        self.evaluators = evaluators
        self.reference = {
            f"{k}/{name}": v for name, ev in evaluators.items() for k, v in ev.reference.items()
        }
        self.samples: list[dict] = []

    def run(self) -> dict[str, float]:
        metrics: dict[str, float] = {}
        self.samples = []
        for name, ev in self.evaluators.items():
            metrics.update({f"{k}/{name}": v for k, v in ev.run().items()})
            self.samples += [{"teacher": name, **row} for row in ev.samples]
        return metrics
