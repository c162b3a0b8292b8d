"""The driver's half of cross-tokenizer KD: student batches -> teacher batches and back.

The student's response tokens are turned into their bytes (not re-decoded by the student's
tokenizer, so a sampled non-canonical tokenization keeps its exact text), the text is
tokenized by the teacher's tokenizer, and the two are aligned (align.py). The teacher engine
then scores an ordinary batch in its own tokens; nothing in the engines knows about this.
"""

from __future__ import annotations

import torch
from tensordict import TensorDict

from ondistill import batch as B
from ondistill.data import pad_id_of, pad_rows
from ondistill.xtok.align import align
from ondistill.xtok.vocab import SharedVocab, end_of_turn_id, shared_vocab, token_bytes


class Translator:
    """Both tokenizers' byte tables and end-of-turn tokens; converts batches between them."""

    def __init__(self, student_tokenizer, teacher_tokenizer):
        self.s_tok, self.t_tok = student_tokenizer, teacher_tokenizer
        self.s_table, self.t_table = token_bytes(student_tokenizer), token_bytes(teacher_tokenizer)
        self.s_end = end_of_turn_id(student_tokenizer)
        self.t_end = end_of_turn_id(teacher_tokenizer)
        # A response may end with the student's end-of-turn or its EOS (rollout stop tokens).
        self.s_ends = {self.s_end, student_tokenizer.eos_token_id}
        self.t_pad, self.s_pad = pad_id_of(teacher_tokenizer), pad_id_of(student_tokenizer)

    def shared(self) -> SharedVocab:
        return shared_vocab(self.s_table, self.t_table, (self.s_end, self.t_end))

    def _text(self, ids: list[int], table: list[bytes], ends: set[int]) -> tuple[str, bool]:
        ended = bool(ids) and ids[-1] in ends
        raw = b"".join(table[i] for i in ids[: len(ids) - ended])
        return raw.decode("utf-8", errors="replace"), ended

    def to_teacher(self, batch: TensorDict) -> tuple[TensorDict, torch.Tensor, torch.Tensor]:
        """Student ROLLOUT batch (with XT_PROMPTS) -> (teacher ROLLOUT batch, student_chunk
        [B, R], teacher_chunk [B, R_t])."""
        B.check(batch, B.ROLLOUT + B.XT_PROMPTS, "cross-tokenizer teacher")
        t_rows, s_chunks, t_chunks = [], [], []
        for ids, m in zip(batch[B.RESPONSE_IDS], batch[B.RESPONSE_MASK], strict=True):
            s_ids = ids[m].tolist()
            text, ended = self._text(s_ids, self.s_table, self.s_ends)
            t_ids = self.t_tok(text, add_special_tokens=False)["input_ids"] + [self.t_end] * ended
            al = align(s_ids, t_ids, self.s_table, self.t_table, ended, ended)
            t_rows.append(t_ids)
            s_chunks.append(al.student_chunk)
            t_chunks.append(al.teacher_chunk)
        t_ids, t_mask = pad_rows(t_rows, self.t_pad)
        teacher = TensorDict(
            {
                B.PROMPT_IDS: batch[B.XT_PROMPT_IDS],
                B.PROMPT_MASK: batch[B.XT_PROMPT_MASK],
                B.PROMPT_INDEX: batch[B.PROMPT_INDEX],
                B.RESPONSE_IDS: t_ids,
                B.RESPONSE_MASK: t_mask,
                B.ROLLOUT_LOGPROBS: torch.zeros(t_ids.shape),
            },
            batch_size=batch.batch_size,
        )
        s_chunk, _ = pad_rows(s_chunks, -1, batch[B.RESPONSE_IDS].shape[1])
        t_chunk, _ = pad_rows(t_chunks, -1)
        return B.check(teacher, B.ROLLOUT, "cross-tokenizer teacher"), s_chunk, t_chunk

    def merge(
        self, batch: TensorDict, scored: TensorDict, s_chunk: torch.Tensor, t_chunk: torch.Tensor
    ) -> TensorDict:
        """The teacher's scores in its own tokens, attached to the student batch."""
        out = batch.clone(False)
        out.set(B.XT_RESPONSE_IDS, scored[B.RESPONSE_IDS])
        out.set(B.XT_RESPONSE_MASK, scored[B.RESPONSE_MASK])
        out.set(B.XT_HIDDEN, scored[B.TEACHER_HIDDEN])
        out.set(B.STUDENT_CHUNK, s_chunk)
        out.set(B.TEACHER_CHUNK, t_chunk)
        return B.scored(out, B.Signal.ALIGNED, "cross-tokenizer teacher")

    def from_teacher(self, sampled: TensorDict, prompts: TensorDict, n: int) -> TensorDict:
        """The teacher's own samples (in its tokens) -> a student ROLLOUT batch of the same text:
        `prompts` are the student-side prompts they answer, each repeated n times."""
        rows, ends = [], {self.t_end, self.t_tok.eos_token_id}
        for ids, m in zip(sampled[B.RESPONSE_IDS], sampled[B.RESPONSE_MASK], strict=True):
            text, ended = self._text(ids[m].tolist(), self.t_table, ends)
            rows.append(
                self.s_tok(text, add_special_tokens=False)["input_ids"] + [self.s_end] * ended
            )
        td = prompts.repeat_interleave(n, dim=0)
        ids, mask = pad_rows(rows, self.s_pad)
        td.set(B.RESPONSE_IDS, ids)
        td.set(B.RESPONSE_MASK, mask)
        td.set(B.ROLLOUT_LOGPROBS, torch.zeros(ids.shape))
        return B.check(td, B.ROLLOUT, "teacher samples")


def teacher_prompts(prompts: TensorDict) -> TensorDict:
    """A prompt batch in the teacher's tokens (for sampling from the teacher)."""
    return TensorDict(
        {
            B.PROMPT_IDS: prompts[B.XT_PROMPT_IDS],
            B.PROMPT_MASK: prompts[B.XT_PROMPT_MASK],
            B.PROMPT_INDEX: prompts[B.PROMPT_INDEX],
        },
        batch_size=prompts.batch_size,
    )


def aligned_starts(batch: TensorDict) -> int:
    """How many of the student's response tokens start an aligned chunk (B.STUDENT_CHUNK): the
    positions where the cross-tokenizer loss compares the two models."""
    chunk = batch[B.STUDENT_CHUNK]
    starts = (chunk >= 0) & (chunk != torch.nn.functional.pad(chunk[:, :-1], (1, 0), value=-1))
    return int(starts.sum())


def aligned_fraction(batch: TensorDict) -> float:
    """The share of the student's response tokens that start an aligned chunk."""
    return aligned_starts(batch) / max(1, int(batch[B.RESPONSE_MASK].sum()))
