"""Held-out evaluation, the same before and after training:

- rkl_student_samples: exact full-vocabulary KL(student || teacher) per token, on the
  student's own samples for the held-out prompts (what on-policy distillation minimises);
- fkl_teacher_samples: exact KL(teacher || student) per token on the teacher's samples for
  the same prompts (drawn once, at the start);
- teacher_nll_student_samples: how unlikely the teacher finds the student's tokens.

With a teacher of another tokenizer (CrossTokenizerEvaluator) the same two sample sets are
compared per aligned chunk (ondistill/xtok/): exact-span KL on the shared vocabulary (+ tail),
ULD distance, the binary KL of the chunk likelihoods (span), and the teacher's NLL per chunk.
"""
from __future__ import annotations

import torch
from tensordict import TensorDict

from ondistill.data import PromptSet, collate_prompts
from ondistill.divergences import DIVERGENCES, DivergenceParams
from ondistill.xtok.losses import binary_logprobs

EVAL_SEED = 1234


class Evaluator:
    def __init__(self, prompts: PromptSet, batch_size: int, rollout, teacher, student,
                 teacher_sampler) -> None:
        self.rollout, self.teacher, self.student = rollout, teacher, student
        self.prompt_batches = [collate_prompts(b, prompts.pad_id, prompts.teacher_pad_id)
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


class CrossTokenizerEvaluator(Evaluator):
    """Held-out metrics per aligned chunk when teacher and student tokenize differently.
    `teacher` is a workers.group.CrossTokenizerTeacher; the teacher's own samples are turned
    into the student's tokens once, then scored like any student batch."""

    def __init__(self, prompts: PromptSet, batch_size: int, rollout, teacher, student,
                 teacher_sampler, translator) -> None:
        from ondistill.xtok.translate import teacher_prompts

        self.rollout, self.teacher, self.student = rollout, teacher, student
        self.prompt_batches = [collate_prompts(b, prompts.pad_id, prompts.teacher_pad_id)
                               for b in prompts.eval_batches(batch_size)]
        self.teacher_batches = []
        for p in self.prompt_batches:
            sampled = teacher_sampler.generate(teacher_prompts(p), seed=EVAL_SEED)
            n = sampled.batch_size[0] // p.batch_size[0]
            self.teacher_batches.append(teacher.score(translator.from_teacher(sampled, p, n)))

    def _chunk_metrics(self, batches: list[TensorDict], direction: str) -> dict[str, float]:
        st = [self.student.xtok_stats(b) for b in batches]
        cat = {k: torch.cat([s[k] for s in st]) for k in st[0]}
        span = DIVERGENCES[direction](binary_logprobs(cat["span_student_logprob"]),
                                      binary_logprobs(cat["span_teacher_logprob"]),
                                      DivergenceParams())
        kind = "rkl" if direction == "reverse_kl" else "fkl"
        return {f"xt_exact_{kind}": float(cat[f"exact_{direction}"].mean()),
                "xt_uld": float(cat["uld"].mean()), f"xt_span_{kind}": float(span.mean()),
                "xt_teacher_nll_per_chunk": -float(cat["span_teacher_logprob"].mean())}

    def run(self) -> dict[str, float]:
        student_batches = [self.teacher.score(self.rollout.generate(p, seed=EVAL_SEED))
                           for p in self.prompt_batches]
        on_student = self._chunk_metrics(student_batches, "reverse_kl")
        on_teacher = self._chunk_metrics(self.teacher_batches, "forward_kl")
        on_teacher.pop("xt_teacher_nll_per_chunk")  # the teacher's own samples: fixed
        return {**{f"eval/{k}_student_samples": v for k, v in on_student.items()},
                **{f"eval/{k}_teacher_samples": v for k, v in on_teacher.items()}}
