"""The SGLang (CPU) teacher sends every signal the HF teacher sends: top-k log-probs with the
tail bucket, and cross-tokenizer scoring (the teacher's hidden states in its own positions)."""

from __future__ import annotations

import torch
from transformers import AutoTokenizer

from ondistill import batch as B
from ondistill.config import DataConfig, TeacherConfig
from ondistill.data import PromptSet, collate_prompts, collate_responses
from ondistill.xtok.teacher import CrossTokenizerTeacher
from ondistill.xtok.translate import Translator
from tests.test_teacher_sglang import mixed_batch
from workers.group import TeacherGroup


def test_topk_from_sglang_equals_hf(ray_local, tiny_dirs):
    teacher_dir = str(tiny_dirs[0])
    cfg = TeacherConfig(topk=8, threads=1)
    sgl = TeacherGroup("sglang", teacher_dir, cfg)
    hf = TeacherGroup("hf", teacher_dir, cfg)
    a, b = sgl.score(mixed_batch()), hf.score(mixed_batch())
    sgl.kill(), hf.kill()
    assert B.signal_of(a) is B.signal_of(b) is B.Signal.TOPK
    assert B.TEACHER_HIDDEN not in a.keys()
    m = a[B.RESPONSE_MASK]
    ids_a, ids_b = a[B.TEACHER_TOPK_IDS][m], b[B.TEACHER_TOPK_IDS][m]
    assert ids_a.shape == (int(m.sum()), 8)
    # float32 engines summing in other orders: a near-tie may swap two neighbours, no more
    assert (ids_a == ids_b).float().mean() > 0.97
    assert (ids_a[:, 0] == ids_b[:, 0]).all()
    lp_a, lp_b = a[B.TEACHER_TOPK_LOGPROBS][m], b[B.TEACHER_TOPK_LOGPROBS][m]
    torch.testing.assert_close(lp_a, lp_b, rtol=1e-4, atol=1e-4)
    assert (lp_a.exp().sum(-1) < 1).all() and (lp_a <= 0).all()  # a proper top-k: tail > 0


def test_cross_tokenizer_scoring_from_sglang_equals_hf(
    ray_local, tiny_gemma_teacher, tiny_dirs, prompts_file
):
    s_tok, t_tok = (AutoTokenizer.from_pretrained(d) for d in (tiny_dirs[1], tiny_gemma_teacher))
    ps = PromptSet(
        DataConfig(prompts=str(prompts_file), eval_size=4), s_tok, teacher_tokenizer=t_tok
    )
    ex = ps.train[:3]
    td = collate_prompts(ex, ps.pad_id, ps.teacher_pad_id)
    td = collate_responses(td, [e.response_ids for e in ex], ps.pad_id, 32)
    td.set(B.ROLLOUT_LOGPROBS, torch.zeros(td[B.RESPONSE_IDS].shape))
    scored = {}
    for backend in ("sglang", "hf"):
        group = TeacherGroup(backend, str(tiny_gemma_teacher), TeacherConfig(threads=1))
        scored[backend] = CrossTokenizerTeacher(group, Translator(s_tok, t_tok)).score(td.clone())
        group.kill()
    a, b = scored["sglang"], scored["hf"]
    assert B.signal_of(a) is B.signal_of(b) is B.Signal.ALIGNED
    torch.testing.assert_close(a[B.STUDENT_CHUNK], b[B.STUDENT_CHUNK])
    m = a[B.XT_RESPONSE_MASK]
    assert int(m.sum()) > 10
    h_a, h_b = a[B.XT_HIDDEN][m], b[B.XT_HIDDEN][m]
    assert h_a.abs().mean() > 0.1  # real states, not padding
    scale = float(h_b.abs().max())
    torch.testing.assert_close(h_a, h_b, rtol=1e-4, atol=1e-5 * scale)
