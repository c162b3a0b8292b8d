"""Teacher scoring with plain transformers: final hidden states of the response positions."""
from __future__ import annotations

import torch
from tensordict import TensorDict

from ondistill import batch as B
from ondistill.config import TeacherConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class HFTeacher:
    def __init__(self, model_dir: str, cfg: TeacherConfig):
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(max(1, cfg.threads))
        self.dtype = DTYPES[cfg.dtype]
        lm = AutoModelForCausalLM.from_pretrained(model_dir, dtype=self.dtype).eval()
        # Only the decoder: its last_hidden_state is post final norm, and the output head
        # (the [tokens, vocab] part) runs on the student side, chunked.
        self.decoder = lm.get_decoder()

    @torch.no_grad()
    def score(self, batch: TensorDict) -> TensorDict:
        B.check(batch, B.ROLLOUT, "teacher.score")
        ids, mask, pos = B.full_sequence(batch)
        hidden = self.decoder(input_ids=ids, attention_mask=mask, position_ids=pos).last_hidden_state
        batch.set(B.TEACHER_HIDDEN, hidden[:, B.response_positions(batch)].to(self.dtype))
        return B.check(batch, B.SCORED, "teacher.score")
