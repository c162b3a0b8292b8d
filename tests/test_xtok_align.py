"""Alignment and shared vocabulary on real tokenizers: SmolLM2 (byte-level BPE, 49k) against
Gemma-3 (SentencePiece with byte fallback, 262k) and against GPT-2 (byte-level BPE, 50k)."""

import pytest
from transformers import AutoTokenizer

from ondistill.xtok.align import align
from ondistill.xtok.vocab import end_of_turn_id, scheme, shared_vocab, token_bytes


@pytest.fixture(scope="module")
def tables(smollm2_dir, gemma_dir, gpt2_tokenizer):
    toks = {
        "smol": AutoTokenizer.from_pretrained(smollm2_dir),
        "gemma": AutoTokenizer.from_pretrained(gemma_dir),
        "gpt2": gpt2_tokenizer,
    }
    return {k: (t, token_bytes(t)) for k, t in toks.items()}


def _chunks(tables, a, b, text, ends=False):
    (ta, ba), (tb, bb) = tables[a], tables[b]
    ia, ib = (
        ta(text, add_special_tokens=False).input_ids,
        tb(text, add_special_tokens=False).input_ids,
    )
    if ends:
        ia, ib = ia + [end_of_turn_id(ta)], ib + [end_of_turn_id(tb)]
    al = align(ia, ib, ba, bb, ends, ends)

    def show(ids, table, ch):
        return [(table[i].decode("utf-8", "replace"), c) for i, c in zip(ids, ch, strict=True)]

    return show(ia, ba, al.student_chunk), show(ib, bb, al.teacher_chunk), al.num_chunks


def test_schemes_and_byte_round_trip(tables):
    assert [scheme(tables[k][0]) for k in ("smol", "gemma", "gpt2")] == [
        "byte_level",
        "sentencepiece",
        "byte_level",
    ]
    for text in [
        "Hello world",
        " two  spaces\n\nnew",
        "héllo 日本語 ✓",
        "12345.678",
        "emoji 🦙!",
        "tab\there",
        "<b>bold</b> &amp; 'quotes'",
    ]:
        for tok, table in tables.values():
            ids = tok(text, add_special_tokens=False).input_ids
            assert b"".join(table[i] for i in ids) == text.encode(), (type(tok).__name__, text)


def test_whitespace_smollm2_vs_gemma(tables):
    s, t, n = _chunks(tables, "smol", "gemma", " two  spaces\n\nnew", ends=True)
    # SmolLM2 splits '\n\n' into two tokens and keeps the double space's second ' ' with
    # 'spaces'; Gemma keeps '▁▁' whole: n:m chunks, then the end-of-turn tokens pair up.
    assert s == [(" two", 0), (" ", 1), (" spaces", 1), ("\n", 2), ("\n", 2), ("new", 3), ("", 4)]
    assert t == [(" two", 0), ("  ", 1), ("spaces", 1), ("\n\n", 2), ("new", 3), ("", 4)]
    assert n == 5


def test_unicode_and_byte_fallback_smollm2_vs_gemma(tables):
    s, t, _ = _chunks(tables, "smol", "gemma", "emoji 🦙!")
    # Gemma has no token for the llama emoji: byte fallback <0xF0><0x9F><0xA6><0x99>.
    # SmolLM2's byte-level pieces are partial UTF-8 (shown as U+FFFD here).
    assert [c for _, c in s] == [0, 0, 1, 2, 3, 4] and [c for _, c in t] == [0, 1, 1, 1, 2, 3, 4]
    assert t[1:3] == [(" ", 1), ("\ufffd", 1)]
    s, t, _ = _chunks(tables, "smol", "gemma", "héllo 日本語")
    assert [c for _, c in s] == [0, 1, 1, 2, 2, 2, 2, 3, 3, 3]
    assert t == [("h", 0), ("él", 1), ("lo", 1), (" 日本", 2), ("語", 3)]


def test_numbers_smollm2_vs_gpt2(tables):
    # SmolLM2 writes digits one per token; GPT-2 merges them: 1:n chunks.
    s, t, n = _chunks(tables, "smol", "gpt2", "3.14159 + 2024 = 2027.14159")
    assert [x for x, _ in t] == [
        "3",
        ".",
        "14",
        "159",
        " +",
        " 2024",
        " =",
        " 20",
        "27",
        ".",
        "14",
        "159",
    ]
    assert [c for _, c in t] == list(range(12)) and n == 12
    assert [c for _, c in s] == [
        0,
        1,
        2,
        2,
        3,
        3,
        3,
        4,
        5,
        5,
        5,
        5,
        5,
        6,
        7,
        7,
        7,
        8,
        8,
        9,
        10,
        10,
        11,
        11,
        11,
    ]


def test_unicode_and_whitespace_smollm2_vs_gpt2(tables):
    s, t, _ = _chunks(tables, "smol", "gpt2", "naïve café 日本語")
    assert [c for _, c in s] == [0, 1, 2, 3, 4, 5, 6, 7, 7, 8]
    assert [c for _, c in t] == [0, 1, 2, 3, 4, 5, 6, 6, 7, 8]
    s, t, _ = _chunks(tables, "smol", "gpt2", "  indented\tcode()\n")
    assert s == t  # same pieces, one chunk each


def test_texts_that_differ_align_only_their_common_prefix(tables):
    (ts, bs), (tg, bg) = tables["smol"], tables["gemma"]
    a = ts("The cat sat.", add_special_tokens=False).input_ids + [end_of_turn_id(ts)]
    b = tg("The cat ran.", add_special_tokens=False).input_ids + [end_of_turn_id(tg)]
    al = align(a, b, bs, bg, True, True)
    assert al.student_chunk == [0, 1, -1, -1, -1] and al.teacher_chunk == [0, 1, -1, -1, -1]


def test_shared_vocabulary_counts(tables):
    (ts, bs), (tg, bg), (_, b2) = tables["smol"], tables["gemma"], tables["gpt2"]
    sg = shared_vocab(bs, bg, (end_of_turn_id(ts), end_of_turn_id(tg)))
    # 49,135 SmolLM2 text tokens (17 special) against 255,785 distinct Gemma byte strings:
    # 46,145 shared, plus the end-of-turn pair <|im_end|> <-> <end_of_turn>.
    assert len(sg) == 46_146 and (2, 106) in zip(
        sg.student_ids.tolist(), sg.teacher_ids.tolist(), strict=True
    )
    assert len(shared_vocab(bs, b2)) == 36_960
    # the same counts derived independently: the byte strings both tables hold (as sets)
    assert len(sg) == len({b for b in bs if b} & {b for b in bg if b}) + 1  # + end-of-turn pair
    assert len(shared_vocab(bs, b2)) == len({b for b in bs if b} & {b for b in b2 if b})
    pairs = dict(zip(sg.student_ids.tolist(), sg.teacher_ids.tolist(), strict=True))
    # SmolLM2 has 235 single-byte tokens (no bytes that never occur in UTF-8, e.g. 0xC0); all
    # are shared through Gemma's byte fallback, e.g. SmolLM2 'Ã' (0xC3) <-> <0xC3>
    singles = [i for i, b in enumerate(bs) if len(b) == 1]
    assert len(singles) == 235 and all(i in pairs for i in singles)
    assert tg.convert_ids_to_tokens(pairs[ts.convert_tokens_to_ids("Ã")]) == "<0xC3>"
    for word in ["Ġthe", "Ġworld", "Hello", "ĊĊ"]:
        t_id = pairs[ts.convert_tokens_to_ids(word)]
        assert bg[t_id] == bs[ts.convert_tokens_to_ids(word)]
    assert tg.convert_ids_to_tokens(pairs[ts.convert_tokens_to_ids("Ġthe")]) == "▁the"


@pytest.fixture(scope="module")
def metaspace_tokenizer():
    """A SentencePiece-style BPE that prepends a space to the text (Metaspace, prepend_scheme
    "always"), as many Llama- and Mistral-family tokenizers do, trained on the test texts."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tk.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tk.train_from_iterator(
        METASPACE_TEXTS * 20,
        trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "</s>"], show_progress=False),
    )
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", eos_token="</s>")


METASPACE_TEXTS = [
    "Hello world, this is a test.",
    "def add(a, b):\n    return a + b",
    "The year 2024 had 366 days.",
    "Line one\r\nLine two",
    "  leading spaces",
    "Tea is a drink made from leaves.",
]


def test_teacher_that_prepends_a_space_still_aligns(tables, metaspace_tokenizer):
    smol, smol_bytes = tables["smol"]
    t_bytes = token_bytes(metaspace_tokenizer)
    for text in METASPACE_TEXTS:
        s_ids = smol(text, add_special_tokens=False).input_ids
        t_ids = metaspace_tokenizer(text, add_special_tokens=False).input_ids
        t_text = b"".join(t_bytes[i] for i in t_ids)
        # the tokenizer's own prefix space (not added where the text starts with one)
        assert t_text == (text if text.startswith(" ") else " " + text).encode(), t_text
        al = align(s_ids, t_ids, smol_bytes, t_bytes)
        aligned = sum(c >= 0 for c in al.student_chunk)
        # Every student token lies in some chunk (the texts agree after the prefix) and most
        # words start a chunk of their own.
        assert aligned == len(s_ids), (text, al.student_chunk)
        assert al.num_chunks >= len(text.split()) // 2, (text, al.num_chunks)


def test_a_special_token_inside_a_chunk_drops_that_chunk_on_both_sides():
    """A student sample may hold a byte-less special token mid-text: the chunk it splits is
    left out on both sides, the chunks after it keep matching indices, and each side has one
    start per chunk (a split chunk used to count twice on the student side)."""
    import torch

    from ondistill.xtok.losses import chunk_starts

    student = [b"ab", b"", b"cd", b"ef", b"gh", b"<end>"]  # id 1: a special token, no bytes
    teacher = [b"abcd", b"ef", b"gh", b"<end>"]
    a = align([0, 1, 2, 3, 4, 5], [0, 1, 2, 3], student, teacher, True, True)
    assert a.student_chunk == [-1, -1, -1, 0, 1, 2]
    assert a.teacher_chunk == [-1, 0, 1, 2]
    assert a.num_chunks == 3
    starts = [
        int(chunk_starts(torch.tensor([c])).sum()) for c in (a.student_chunk, a.teacher_chunk)
    ]
    assert starts == [3, 3]
    # a special token between chunks splits nothing: every chunk stays
    b = align([0, 2, 1, 3], [0, 1], student, teacher)
    assert b.student_chunk == [0, 0, -1, 1] and b.teacher_chunk == [0, 1] and b.num_chunks == 2
