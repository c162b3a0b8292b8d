"""Held-out evaluation with a teacher of another tokenizer: the same answers and text metrics
as trainer/evaluate.py, the distributions compared per aligned chunk: exact-span KL on the
shared vocabulary (+ tail), ULD distance, the binary KL of the chunk likelihoods (span), and
the teacher's NLL per chunk."""

from __future__ import annotations

import torch
from tensordict import TensorDict

from ondistill.data import PromptSet
from ondistill.divergences import DIVERGENCES, DivergenceParams
from ondistill.xtok.losses import binary_logprobs
from ondistill.xtok.translate import Translator, aligned_fraction, teacher_prompts
from trainer.evaluate import EVAL_SEED, Evaluator


class CrossTokenizerEvaluator(Evaluator):
    """Held-out metrics per aligned chunk when teacher and student tokenize differently.
    `teacher` is an ondistill.xtok.teacher.CrossTokenizerTeacher; the teacher's own answers are
    turned into the student's tokens once, then scored and decoded like any student batch."""

    def __init__(
        self,
        prompts: PromptSet,
        batch_size: int,
        rollout,
        teacher,
        student,
        teacher_sampler,
        translator: Translator,
    ) -> None:
        self.translator = translator
        super().__init__(prompts, batch_size, rollout, teacher, student, teacher_sampler)
        # What the pair's alignment gives on real text (the teacher's own answers): a training
        # batch far below it means the tokenizations stopped lining up (trainer/run.py warns).
        self.expected_alignment = sum(map(aligned_fraction, self.teacher_batches)) / max(
            1, len(self.teacher_batches)
        )

    def _teacher_answers(self, sampler) -> tuple[list[TensorDict], list[TensorDict]]:
        sampled: list[TensorDict] = []
        greedy: list[TensorDict] = []
        for p in self.prompt_batches:
            for out, kwargs in ((sampled, {}), (greedy, {"greedy": True})):
                answers = sampler.generate(teacher_prompts(p), seed=EVAL_SEED, **kwargs)
                n = answers.batch_size[0] // p.batch_size[0]
                out.append(self.translator.from_teacher(answers, p, n))
        return sampled, greedy

    def _chunk_metrics(self, batches: list[TensorDict], direction: str) -> dict[str, float]:
        st = [self.student.xtok_stats(b) for b in batches]
        cat = {k: torch.cat([s[k] for s in st]) for k in st[0]}
        span = DIVERGENCES[direction](
            binary_logprobs(cat["span_student_logprob"]),
            binary_logprobs(cat["span_teacher_logprob"]),
            DivergenceParams(),
        )
        kind = "rkl" if direction == "reverse_kl" else "fkl"
        return {
            f"xt_exact_{kind}": float(cat[f"exact_{direction}"].mean()),
            "xt_uld": float(cat["uld"].mean()),
            f"xt_span_{kind}": float(span.mean()),
            "xt_teacher_nll_per_chunk": -float(cat["span_teacher_logprob"].mean()),
            "xt_student_nll_per_chunk": -float(cat["span_student_logprob"].mean()),
        }

    def _distribution_metrics(self, student_batches: list[TensorDict]) -> dict[str, float]:
        on_student = self._chunk_metrics(student_batches, "reverse_kl")
        on_student.pop("xt_student_nll_per_chunk")  # the student's own samples: not a measure
        on_teacher = self._chunk_metrics(self.teacher_batches, "forward_kl")
        on_teacher.pop("xt_teacher_nll_per_chunk")  # the teacher's own samples: fixed
        return {
            **{f"{k}_student_samples": v for k, v in on_student.items()},
            **{f"{k}_teacher_samples": v for k, v in on_teacher.items()},
        }
