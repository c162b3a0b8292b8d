"""Cross-tokenizer runs through the whole loop: a tiny random Gemma-3 teacher (Gemma's real
262k SentencePiece tokenizer) and a tiny student with SmolLM2's byte-level BPE."""

import json
import math

import pytest
from transformers import AutoTokenizer

from ondistill.config import ConfigError
from tests.test_run import tiny_config
from trainer.preflight import check_tokenizers
from trainer.run import run


def test_mismatch_names_the_cross_tokenizer_option(tiny_gemma_teacher, tiny_dirs):
    with pytest.raises(ConfigError, match=r"loss.cross_tokenizer=exact\|uld\|span"):
        check_tokenizers(tiny_gemma_teacher, tiny_dirs[1])
    student, teacher = check_tokenizers(tiny_gemma_teacher, tiny_dirs[1], "uld")
    assert len(teacher) == 262_144 and len(student) == 49_152


def test_translation_round_trip(tiny_gemma_teacher, tiny_dirs, prompts_file):
    from ondistill import batch as B
    from ondistill.config import DataConfig
    from ondistill.data import PromptSet, collate_prompts, collate_responses
    from ondistill.xtok.translate import Translator

    s_tok, t_tok = (AutoTokenizer.from_pretrained(d) for d in (tiny_dirs[1], tiny_gemma_teacher))
    ps = PromptSet(
        DataConfig(prompts=str(prompts_file), eval_size=4), s_tok, teacher_tokenizer=t_tok
    )
    ex = ps.train[:2]
    td = collate_prompts(ex, ps.pad_id, ps.teacher_pad_id)
    assert t_tok.decode(td[B.XT_PROMPT_IDS][1][td[B.XT_PROMPT_MASK][1]]).startswith(
        "<bos><start_of_turn>user\nSay something about the number 1.<end_of_turn>"
    )
    td = collate_responses(td, [e.response_ids for e in ex], ps.pad_id, 32)
    td.set(B.ROLLOUT_LOGPROBS, td[B.RESPONSE_IDS].float() * 0)
    tr = Translator(s_tok, t_tok)
    teacher, s_chunk, t_chunk = tr.to_teacher(td)
    row = teacher[B.RESPONSE_IDS][1][teacher[B.RESPONSE_MASK][1]]
    assert t_tok.decode(row) == "The number 1 comes after 0.<end_of_turn>"
    # every student token of these plain-ASCII rows is aligned, the end-of-turn tokens too
    assert (s_chunk[td[B.RESPONSE_MASK]] >= 0).all() and (
        t_chunk[teacher[B.RESPONSE_MASK]] >= 0
    ).all()
    assert int(s_chunk.max()) == int(t_chunk.max())


@pytest.mark.parametrize("method,fraction", [("exact", 1.0), ("span", 0.5)])
def test_cross_tokenizer_run(
    ray_local, tiny_gemma_teacher, tiny_dirs, prompts_file, tmp_path, method, fraction
):
    cfg = tiny_config(
        (tiny_gemma_teacher, tiny_dirs[1]), prompts_file, tmp_path, on_policy_fraction=fraction
    )
    cfg.rollout.backend = "hf"
    cfg.loss.cross_tokenizer = method
    cfg.trainer.steps, cfg.trainer.save_student, cfg.log.plot = 6, False, False
    out = tmp_path / "out"
    results = run(cfg, out)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "loss" in r]
    assert len(train) == 6 and all(0 < r["aligned_fraction"] <= 1 for r in train)
    # a positive divergence every step: the aligned chunks really reach the loss (a loss of
    # exactly 0 with finite gradients is what an alignment that matches nothing gives)
    assert all(math.isfinite(r["loss"]) and r["kl"] > 0 for r in train), train
    assert all(math.isfinite(v) for v in results["after"].values()), results
    if method == "exact":
        losses = [r["loss"] for r in train]
        assert sum(losses[-2:]) < sum(losses[:2]), losses
        key = "eval/xt_exact_fkl_teacher_samples"
        assert results["after"][key] < results["before"][key], results
    # span: a random teacher over 262k tokens gives every chunk a probability near e^-12, so
    # the binary chunk divergence is ~1e-5 and its trend is noise; its math is checked against
    # a reference in test_xtok_losses.py.
