"""Held-out evaluation, the same before and after training:

- rkl_student_samples: exact full-vocabulary KL(student || teacher) per token, on the
  student's own samples for the held-out prompts (what on-policy distillation minimises);
- fkl_teacher_samples: exact KL(teacher || student) per token on the teacher's samples for
  the same prompts (drawn once, at the start);
- teacher_nll_student_samples: how unlikely the teacher finds the student's tokens.
"""
from __future__ import annotations

import torch
from tensordict import TensorDict

from ondistill.data import PromptSet, collate_prompts

EVAL_SEED = 1234


class Evaluator:
    def __init__(self, prompts: PromptSet, batch_size: int, rollout, teacher, student,
                 teacher_sampler) -> None:
        self.rollout, self.teacher, self.student = rollout, teacher, student
        self.prompt_batches = [collate_prompts(b, prompts.pad_id)
                               for b in prompts.eval_batches(batch_size)]
        # Teacher samples are fixed for the whole run: score them once.
        self.teacher_batches = [teacher.score(teacher_sampler.generate(p, seed=EVAL_SEED))
                                for p in self.prompt_batches]

    def _mean(self, batches: list[TensorDict], key: str, divergences: tuple[str, ...]) -> float:
        values = [self.student.token_stats(b, divergences)[key] for b in batches]
        return float(torch.cat(values).mean())

    def run(self) -> dict[str, float]:
        student_batches = [self.teacher.score(self.rollout.generate(p, seed=EVAL_SEED))
                           for p in self.prompt_batches]
        stats = [self.student.token_stats(b, ("reverse_kl",)) for b in student_batches]
        return {
            "eval/rkl_student_samples": float(torch.cat([s["reverse_kl"] for s in stats]).mean()),
            "eval/teacher_nll_student_samples":
                -float(torch.cat([s["teacher_logprob"] for s in stats]).mean()),
            "eval/fkl_teacher_samples": self._mean(self.teacher_batches, "forward_kl",
                                                   ("forward_kl",)),
        }
