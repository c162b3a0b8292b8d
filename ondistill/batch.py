"""The one batch schema that flows between stages, as TensorDict keys.

Layout (B sequences, P prompt slots, R response slots, H hidden size):
  prompt_ids       [B, P] int64, LEFT-padded with the pad id
  prompt_mask      [B, P] bool, True on real prompt tokens
  response_ids     [B, R] int64, RIGHT-padded
  response_mask    [B, R] bool, True on response tokens that count in the loss
  rollout_logprobs [B, R] float32, log-prob of each response token under the rollout engine
  teacher_hidden   [B, R, H] teacher's final hidden state (post final norm) at the position
                   that PREDICTS response token r, i.e. sequence position P + r - 1
  prompt_index     [B] int64, which prompt of the step a row came from (N samples share one)
  teacher_context_ids / teacher_context_mask  [B, P_c] a prompt only the teacher sees (the
                   row's `teacher_prompt`, e.g. with a hint or the reference answer), LEFT-padded;
                   the teacher scores the same response tokens after it (full_sequence(td,
                   teacher=True)); the student never reads it
  teacher_route    [B] int64, the row's teacher (its index in the config's `teachers`) when
                   rows name their teacher (routing.mode=field); the driver sends each row to
                   that teacher alone
  rollout_replica  [B] int64, which rollout engine replica sampled the row (absent on dataset
                   rows); the student measures each replica's consistency with it
  dataset_response_ids / dataset_response_mask  [B, R_d] the dataset's responses, RIGHT-padded,
                   on the prompts of an off-policy step (what trainer.controller.DatasetRollout
                   turns into the rollout)
  teacher_topk_ids / teacher_topk_logprobs  [B, R, k] int64 / float32: instead of
                   teacher_hidden, a teacher that can only send its top-k (teacher.topk > 0)
  teacher_hidden_ipc  (not a tensor) instead of teacher_hidden when the teacher and a
                   one-rank student share a GPU: a CUDA IPC handle of the teacher's
                   [B, R, H] tensor, which the student maps (workers/weights.py) instead of
                   receiving the bytes through host memory

Cross-tokenizer batches (loss.cross_tokenizer != none; the teacher tokenizes the same text its
own way, R_t teacher response slots, P_t teacher prompt slots; see ondistill/xtok/):
  xt_prompt_ids / xt_prompt_mask      [B, P_t] prompt in the teacher's template, LEFT-padded
  xt_response_ids / xt_response_mask  [B, R_t] the response text re-tokenized by the teacher
  xt_hidden        [B, R_t, H] teacher's final hidden state predicting xt_response r
  student_chunk    [B, R] int64, aligned chunk of each student response token (-1: none)
  teacher_chunk    [B, R_t] int64, aligned chunk of each teacher response token (-1: none)

What the teacher sent is one `Signal`, chosen by the teacher when it scores (`scored()`) and
carried with the batch under `teacher_signal`; everything downstream asks `signal_of(td)` and
finds that signal's keys in SCORED_KEYS, instead of guessing from the keys a batch holds.

Each stage boundary calls `check(td, keys, stage)` so a missing or malformed key fails with its
name instead of as a shape error three calls later.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import torch
from tensordict import TensorDict

PROMPT_IDS = "prompt_ids"
PROMPT_MASK = "prompt_mask"
RESPONSE_IDS = "response_ids"
RESPONSE_MASK = "response_mask"
ROLLOUT_LOGPROBS = "rollout_logprobs"
TEACHER_HIDDEN = "teacher_hidden"
PROMPT_INDEX = "prompt_index"
ROLLOUT_REPLICA = "rollout_replica"
TEACHER_ROUTE = "teacher_route"
TEACHER_CONTEXT_IDS = "teacher_context_ids"
TEACHER_CONTEXT_MASK = "teacher_context_mask"
TEACHER_TOPK_IDS = "teacher_topk_ids"
TEACHER_TOPK_LOGPROBS = "teacher_topk_logprobs"
TEACHER_HIDDEN_IPC = "teacher_hidden_ipc"
XT_PROMPT_IDS = "xt_prompt_ids"
XT_PROMPT_MASK = "xt_prompt_mask"
XT_RESPONSE_IDS = "xt_response_ids"
XT_RESPONSE_MASK = "xt_response_mask"
XT_HIDDEN = "xt_hidden"
STUDENT_CHUNK = "student_chunk"
TEACHER_CHUNK = "teacher_chunk"
DATASET_RESPONSE_IDS = "dataset_response_ids"
DATASET_RESPONSE_MASK = "dataset_response_mask"

_DTYPES: dict[str, tuple[torch.dtype, ...]] = {
    PROMPT_IDS: (torch.int64,),
    PROMPT_MASK: (torch.bool,),
    RESPONSE_IDS: (torch.int64,),
    RESPONSE_MASK: (torch.bool,),
    ROLLOUT_LOGPROBS: (torch.float32,),
    TEACHER_HIDDEN: (torch.float32, torch.bfloat16, torch.float16),
    PROMPT_INDEX: (torch.int64,),
    TEACHER_ROUTE: (torch.int64,),
    TEACHER_TOPK_IDS: (torch.int64,),
    TEACHER_TOPK_LOGPROBS: (torch.float32,),
    XT_PROMPT_IDS: (torch.int64,),
    XT_PROMPT_MASK: (torch.bool,),
    XT_RESPONSE_IDS: (torch.int64,),
    XT_RESPONSE_MASK: (torch.bool,),
    XT_HIDDEN: (torch.float32, torch.bfloat16, torch.float16),
    STUDENT_CHUNK: (torch.int64,),
    TEACHER_CHUNK: (torch.int64,),
    DATASET_RESPONSE_IDS: (torch.int64,),
    DATASET_RESPONSE_MASK: (torch.bool,),
}
_NDIM = {
    PROMPT_IDS: 2,
    PROMPT_MASK: 2,
    RESPONSE_IDS: 2,
    RESPONSE_MASK: 2,
    ROLLOUT_LOGPROBS: 2,
    TEACHER_HIDDEN: 3,
    PROMPT_INDEX: 1,
    TEACHER_ROUTE: 1,
    TEACHER_TOPK_IDS: 3,
    TEACHER_TOPK_LOGPROBS: 3,
    XT_PROMPT_IDS: 2,
    XT_PROMPT_MASK: 2,
    XT_RESPONSE_IDS: 2,
    XT_RESPONSE_MASK: 2,
    XT_HIDDEN: 3,
    STUDENT_CHUNK: 2,
    TEACHER_CHUNK: 2,
    DATASET_RESPONSE_IDS: 2,
    DATASET_RESPONSE_MASK: 2,
}

PROMPTS = (PROMPT_IDS, PROMPT_MASK, PROMPT_INDEX)
ROLLOUT = PROMPTS + (RESPONSE_IDS, RESPONSE_MASK, ROLLOUT_LOGPROBS)
XT_PROMPTS = (XT_PROMPT_IDS, XT_PROMPT_MASK)
DATASET_RESPONSES = (DATASET_RESPONSE_IDS, DATASET_RESPONSE_MASK)
SIGNAL = "teacher_signal"


class Signal(enum.Enum):
    """The kind of teacher signal a scored batch carries."""

    HIDDEN = "hidden"  # final hidden states (TEACHER_HIDDEN); the student applies the head
    HIDDEN_IPC = "hidden_ipc"  # the same, left on the teacher's GPU (TEACHER_HIDDEN_IPC)
    TOPK = "topk"  # the teacher's top-k ids and log-probs (TEACHER_TOPK_*)
    ALIGNED = "aligned"  # another tokenizer: hidden states in its own tokens + the alignment


SCORED_KEYS: dict[Signal, tuple[str, ...]] = {
    Signal.HIDDEN: ROLLOUT + (TEACHER_HIDDEN,),
    Signal.HIDDEN_IPC: ROLLOUT + (TEACHER_HIDDEN_IPC,),
    Signal.TOPK: ROLLOUT + (TEACHER_TOPK_IDS, TEACHER_TOPK_LOGPROBS),
    Signal.ALIGNED: ROLLOUT
    + (XT_RESPONSE_IDS, XT_RESPONSE_MASK, XT_HIDDEN, STUDENT_CHUNK, TEACHER_CHUNK),
}


class BatchError(ValueError):
    pass


@dataclass
class TeacherPart:
    """One teacher's scored rows for one student rank, and what they weigh in the step: the
    rank's loss on them is their per-token (or per-row, loss.reduction=sequence) mean over all
    `tokens` (`rows`) of this teacher in the step, on every rank, times `scale`."""

    batch: Any  # a scored TensorDict, or a Ray reference to one (fetched by the rank)
    tokens: int  # response tokens of this teacher's rows in the step
    rows: int  # this teacher's rows in the step
    teacher: str | None = None  # its name; None: the student's one teacher, whatever its name
    # its weight, times (routing by field) its share of the step's tokens or rows, so that
    # the parts' losses add up to the step's mean
    scale: float = 1.0


def scored(td: TensorDict, signal: Signal, stage: str) -> TensorDict:
    """Mark td as carrying `signal` and check it holds that signal's keys (the teacher's exit)."""
    td.set_non_tensor(SIGNAL, signal.value)
    return check(td, SCORED_KEYS[signal], stage)


def signal_of(td: TensorDict) -> Signal:
    if SIGNAL not in td.keys():
        raise BatchError(
            f"batch has no '{SIGNAL}' (has {sorted(td.keys())}); a teacher must "
            "score it (batch.scored) before the student can train on it."
        )
    return Signal(td.get_non_tensor(SIGNAL))


def teacher_keys(signal: Signal) -> tuple[str, ...]:
    """The keys a teacher adds to the rollout for `signal`."""
    return SCORED_KEYS[signal][len(ROLLOUT) :]


def check_scored(td: TensorDict, stage: str) -> TensorDict:
    """check() against the keys of the signal the batch says it carries."""
    return check(td, SCORED_KEYS[signal_of(td)], stage)


def check(td: TensorDict, keys: tuple[str, ...], stage: str) -> TensorDict:
    """Raise BatchError naming the first missing or malformed key; return td unchanged."""
    for key in keys:
        if key not in td.keys():
            raise BatchError(
                f"{stage}: batch has no '{key}' (has {sorted(td.keys())}); "
                f"the previous stage must produce it."
            )
        if key == TEACHER_HIDDEN_IPC:
            continue  # a handle; the receiver checks the tensor it maps
        t = td.get(key)
        if t.dtype not in _DTYPES[key] or t.ndim != _NDIM[key]:
            raise BatchError(
                f"{stage}: batch key '{key}' is {t.dtype} with {t.ndim} dims; "
                f"expected one of {_DTYPES[key]} with {_NDIM[key]} dims."
            )
    if RESPONSE_IDS in keys and td[RESPONSE_IDS].shape != td[RESPONSE_MASK].shape:
        raise BatchError(
            f"{stage}: '{RESPONSE_IDS}' {tuple(td[RESPONSE_IDS].shape)} and "
            f"'{RESPONSE_MASK}' {tuple(td[RESPONSE_MASK].shape)} differ in shape."
        )
    for key, ref in (
        (TEACHER_HIDDEN, RESPONSE_IDS),
        (STUDENT_CHUNK, RESPONSE_IDS),
        (XT_HIDDEN, XT_RESPONSE_IDS),
        (TEACHER_CHUNK, XT_RESPONSE_IDS),
    ):
        if key in keys and td[key].shape[:2] != td[ref].shape:
            raise BatchError(
                f"{stage}: '{key}' covers {tuple(td[key].shape[:2])} positions "
                f"but '{ref}' is {tuple(td[ref].shape)}."
            )
    return td


def _prompt(td: TensorDict, teacher: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if teacher and TEACHER_CONTEXT_IDS in td.keys():
        return td[TEACHER_CONTEXT_IDS], td[TEACHER_CONTEXT_MASK]
    return td[PROMPT_IDS], td[PROMPT_MASK]


def teacher_prompt(td: TensorDict) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) of the prompt the teacher scores after: its own where the batch has one."""
    return _prompt(td, teacher=True)


def full_sequence(
    td: TensorDict, teacher: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids [B, P+R], attention_mask [B, P+R], position_ids [B, P+R]) for a forward pass;
    teacher: after the teacher's own prompt where the batch has one (TEACHER_CONTEXT_IDS).

    Prompts are left-padded, so position ids come from the mask, not from arange.
    """
    p_ids, p_mask = _prompt(td, teacher)
    ids = torch.cat([p_ids, td[RESPONSE_IDS]], dim=1)
    mask = torch.cat([p_mask, td[RESPONSE_MASK]], dim=1).long()
    pos = (mask.cumsum(dim=1) - 1).clamp(min=0)
    return ids, mask, pos


def response_positions(td: TensorDict, teacher: bool = False) -> slice:
    """Slice of the full sequence whose hidden states predict the response tokens."""
    p = _prompt(td, teacher)[0].shape[1]
    r = td[RESPONSE_IDS].shape[1]
    return slice(p - 1, p + r - 1)


def split_rows(td: TensorDict, parts: int) -> list[TensorDict]:
    """td's rows in `parts` contiguous pieces as even as they go (the first ones one longer);
    fewer pieces when there are fewer rows."""
    rows = td.batch_size[0]
    sizes = [rows // parts + (i < rows % parts) for i in range(min(parts, rows))]
    return list(td.split(sizes))


def set_topk(td: TensorDict, ids: torch.Tensor, logprobs: torch.Tensor) -> TensorDict:
    """A top-k teacher's signal [B, R, k] on the batch, marked as such."""
    td.set(TEACHER_TOPK_IDS, ids.cpu())
    td.set(TEACHER_TOPK_LOGPROBS, logprobs.float().cpu())
    return td


def balance_rows(td: TensorDict, parts: int) -> list[TensorDict]:
    """td's rows in `parts` pieces of about equal token count (prompt + response), each
    piece's rows in their order (ondistill.packing.balance)."""
    from ondistill.packing import balance

    parts = min(parts, td.batch_size[0])
    return [td[torch.tensor(rows)] for rows in balance(row_tokens(td), parts)]


def row_tokens(td: TensorDict) -> list[int]:
    """Real tokens (prompt + response) per row."""
    return (td[PROMPT_MASK].sum(1) + td[RESPONSE_MASK].sum(1)).tolist()


def cat_rows(parts: list[TensorDict]) -> TensorDict:
    """The rows of rollout batches in order, their responses right-padded to the widest (each
    engine pads to its own longest answer)."""
    width = max(p[RESPONSE_IDS].shape[1] for p in parts)
    padded = []
    for p in parts:
        extra = width - p[RESPONSE_IDS].shape[1]
        if extra:
            p = p.clone(False)
            for key in (RESPONSE_IDS, RESPONSE_MASK, ROLLOUT_LOGPROBS):
                t = p[key]
                p.set(key, torch.cat([t, t.new_zeros(t.shape[0], extra)], 1))
        padded.append(p)
    return torch.cat(padded)
