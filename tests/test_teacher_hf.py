"""The hf teacher in-process: its weights can be replaced in place (a teacher that follows a
student, self-distillation), and what it then sends equals a teacher loaded from those weights;
a tensor-parallel teacher scores what one rank scores."""

from __future__ import annotations

import pytest
import torch

from ondistill import batch as B
from ondistill.config import TeacherConfig
from tests.test_hand_over import VOCAB, pair, rollout_batch  # noqa: F401  (pair: a fixture)
from workers.group import TeacherGroup
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


@pytest.fixture(scope="module")
def tp_teacher_dir(tmp_path_factory, smollm2_dir):
    """A random Llama whose 4 query and 2 key-value heads split over 2 tensor-parallel ranks."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
        initializer_range=0.1,
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tp") / "teacher"
    LlamaForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_tensor_parallel_teacher_scores_what_one_rank_scores(ray_local, tp_teacher_dir):
    from tests.test_teacher_sglang import mixed_batch

    one = TeacherGroup("hf", str(tp_teacher_dir), TeacherConfig(threads=1, topk=4))
    two = TeacherGroup("hf", str(tp_teacher_dir), TeacherConfig(threads=1, topk=4, tp_size=2))
    assert len(two.actors) == 1 and len(two.followers[0]) == 1  # one replica of two ranks
    a, b = one.score(mixed_batch()), two.score(mixed_batch())
    m = a[B.RESPONSE_MASK]
    torch.testing.assert_close(
        b[B.TEACHER_TOPK_LOGPROBS][m], a[B.TEACHER_TOPK_LOGPROBS][m], rtol=1e-4, atol=1e-5
    )
    assert (b[B.TEACHER_TOPK_IDS][m][:, 0] == a[B.TEACHER_TOPK_IDS][m][:, 0]).all()
    one.kill(), two.kill()
    hidden = TeacherGroup("hf", str(tp_teacher_dir), TeacherConfig(threads=1, tp_size=2))
    two_h = hidden.score(mixed_batch())[B.TEACHER_HIDDEN][m]
    hidden.kill()
    ref = TeacherGroup("hf", str(tp_teacher_dir), TeacherConfig(threads=1))
    one_h = ref.score(mixed_batch())[B.TEACHER_HIDDEN][m]
    ref.kill()
    assert one_h.abs().mean() > 0.1
    torch.testing.assert_close(two_h, one_h, rtol=1e-4, atol=1e-5 * float(one_h.abs().max()))
