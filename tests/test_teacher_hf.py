"""The hf teacher in-process: its weights can be replaced in place (a teacher that follows a
student, self-distillation), and what it then sends equals a teacher loaded from those weights."""

from __future__ import annotations

import pytest
import torch

from ondistill import batch as B
from ondistill.config import TeacherConfig
from tests.test_hand_over import VOCAB, pair, rollout_batch  # noqa: F401  (pair: a fixture)
from workers.teacher.hf import HFTeacher


@pytest.fixture(scope="module")
def other_teacher(tmp_path_factory, pair) -> str:  # noqa: F811
    """The pair's teacher architecture with other random weights."""
    from transformers import AutoConfig, LlamaForCausalLM

    torch.manual_seed(7)
    path = tmp_path_factory.mktemp("other") / "teacher"
    LlamaForCausalLM(AutoConfig.from_pretrained(pair[0])).save_pretrained(path)
    return str(path)


def test_update_weights_makes_it_the_other_teacher(pair, other_teacher):  # noqa: F811
    from transformers import AutoModelForCausalLM

    cfg = TeacherConfig(threads=1)
    teacher = HFTeacher(pair[0], cfg)
    before = teacher.score(rollout_batch())
    assert B.signal_of(before) is B.Signal.HIDDEN
    other = AutoModelForCausalLM.from_pretrained(other_teacher, dtype=torch.float32)
    teacher.update_weights((n, p.detach()) for n, p in other.named_parameters())
    after = teacher.score(rollout_batch())[B.TEACHER_HIDDEN]
    expected = HFTeacher(other_teacher, cfg).score(rollout_batch())[B.TEACHER_HIDDEN]
    torch.testing.assert_close(after, expected, rtol=1e-5, atol=1e-5)
    assert (after - before[B.TEACHER_HIDDEN]).abs().max() > 0.1  # it really changed
    with pytest.raises(KeyError, match="teacher has no parameter 'model.extra.weight'"):
        teacher.update_weights([("model.extra.weight", torch.zeros(VOCAB))])
