"""The teacher of another tokenizer as the controller sees it: any teacher group behind the
translation of translate.py."""

from __future__ import annotations

from typing import Protocol

import torch
from tensordict import TensorDict

from ondistill import batch as B
from ondistill.xtok.translate import Translator


class Scorer(Protocol):
    def score(self, batch: TensorDict, hand_over: bool = False) -> TensorDict: ...

    def score_parts(
        self, batch: TensorDict, parts: int, hand_over: bool = False, by_tokens: bool = False
    ) -> list: ...

    def score_pieces(self, pieces: list[TensorDict], hand_over: bool = False) -> list: ...

    def kill(self) -> None: ...


class CrossTokenizerTeacher:
    """Scores student batches by re-tokenizing their text for the teacher and returns the
    teacher's hidden states in its own positions plus the alignment (B.Signal.ALIGNED)."""

    def __init__(self, group: Scorer, translator: Translator):
        self.group, self.translator = group, translator

    def score(self, batch: TensorDict, hand_over: bool = False) -> TensorDict:
        teacher_batch, s_chunk, t_chunk = self.translator.to_teacher(batch)
        return self.translator.merge(batch, self.group.score(teacher_batch), s_chunk, t_chunk)

    def score_parts(
        self, batch: TensorDict, parts: int, hand_over: bool = False, by_tokens: bool = False
    ) -> list:
        """The merge needs the teacher's rows here, so these pieces pass through the driver."""
        scored = self.score(batch)
        return B.balance_rows(scored, parts) if by_tokens else B.split_rows(scored, parts)

    def score_pieces(self, pieces: list[TensorDict], hand_over: bool = False) -> list:
        """score_parts of pieces already cut (rows of one batch), scored together."""
        scored = self.score(torch.cat(pieces))
        return list(scored.split([p.batch_size[0] for p in pieces]))

    def kill(self) -> None:
        self.group.kill()
