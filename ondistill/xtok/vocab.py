"""Tokens as bytes, and the vocabulary two tokenizers share.

Tokenizers write the same text differently: byte-level BPE (GPT-2, SmolLM2) maps every byte to
a printable character ('Ġ' is a space); SentencePiece (Gemma, Mistral) writes spaces as '▁' and
falls back to byte tokens like <0x41>. Undoing each scheme gives every token the exact bytes it
decodes to, so tokens compare by what they mean, and partial UTF-8 byte tokens compare too.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache

import torch

_BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@lru_cache(maxsize=1)
def _gpt2_byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode: printable char -> byte."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


def scheme(tokenizer) -> str:
    """'byte_level' or 'sentencepiece', read from the fast tokenizer's decoder."""
    decoder = json.loads(tokenizer.backend_tokenizer.to_str()).get("decoder") or {}
    text = json.dumps(decoder)
    if "ByteLevel" in text:
        return "byte_level"
    if "ByteFallback" in text or "▁" in text or "Metaspace" in text:
        return "sentencepiece"
    raise ValueError(
        f"tokenizer {type(tokenizer).__name__} uses a decoder ondistill cannot map "
        f"to bytes ({text[:120]}); cross-tokenizer KD supports byte-level BPE and "
        "SentencePiece-style tokenizers."
    )


def _special_ids(tokenizer) -> set[int]:
    return set(tokenizer.all_special_ids) | {
        i for i, t in tokenizer.added_tokens_decoder.items() if t.special
    }


def token_bytes(tokenizer) -> list[bytes]:
    """The bytes each id decodes to, indexed by id. Special tokens are b'' (they are no text)."""
    kind = scheme(tokenizer)
    special = _special_ids(tokenizer)
    size = max(len(tokenizer), max(tokenizer.get_vocab().values()) + 1)
    out = [b""] * size
    decode = _gpt2_byte_decoder()
    for piece, i in tokenizer.get_vocab().items():
        if i in special:
            continue
        if kind == "byte_level":
            if all(c in decode for c in piece):
                out[i] = bytes(decode[c] for c in piece)
            else:  # an added plain-text token, stored as its text
                out[i] = piece.encode()
        else:
            m = _BYTE_TOKEN.match(piece)
            out[i] = bytes([int(m.group(1), 16)]) if m else piece.replace("▁", " ").encode()
    return out


@dataclass(frozen=True)
class SharedVocab:
    """Pairs of ids, one per side, that decode to the same bytes. student_ids[k] and
    teacher_ids[k] are the same token; each id appears at most once per side (a byte string
    with several ids on one side keeps the first: byte-fallback duplicates such as <0x41> vs
    'A' go to the tail bucket). The end-of-turn tokens are paired explicitly."""

    student_ids: torch.Tensor  # [k] int64
    teacher_ids: torch.Tensor  # [k] int64

    def __len__(self) -> int:
        return int(self.student_ids.numel())


def shared_vocab(
    student_bytes: list[bytes], teacher_bytes: list[bytes], end_pair: tuple[int, int] | None = None
) -> SharedVocab:
    """Shared vocabulary of two tokenizers given as token_bytes() lists. end_pair: (student
    end-of-turn id, teacher end-of-turn id), paired although both decode to b''."""
    first_teacher: dict[bytes, int] = {}
    for i, b in enumerate(teacher_bytes):
        if b and b not in first_teacher:
            first_teacher[b] = i
    pairs, seen = [], set()
    for i, b in enumerate(student_bytes):
        if b and b in first_teacher and b not in seen:
            seen.add(b)
            pairs.append((i, first_teacher[b]))
    if end_pair is not None:
        pairs.append(end_pair)
    ids = torch.tensor(pairs, dtype=torch.long).view(-1, 2)
    return SharedVocab(ids[:, 0].contiguous(), ids[:, 1].contiguous())


def end_of_turn_id(tokenizer) -> int:
    """The token that closes an assistant turn in the tokenizer's chat template (<|im_end|>,
    <end_of_turn>, ...), else its EOS: what a response ends with on that side."""
    if tokenizer.chat_template:
        marker = "\x00ondistill\x00"
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "u"}, {"role": "assistant", "content": marker}],
            tokenize=False,
        )
        after = text[text.index(marker) + len(marker) :]
        ids = tokenizer(after, add_special_tokens=False).input_ids
        special = _special_ids(tokenizer)
        for i in ids:
            if i in special:
                return i
    return tokenizer.eos_token_id


def shared_vocab_of(student_tokenizer, teacher_tokenizer) -> SharedVocab:
    """The shared vocabulary of two tokenizers, their end-of-turn tokens paired."""
    return shared_vocab(
        token_bytes(student_tokenizer),
        token_bytes(teacher_tokenizer),
        (end_of_turn_id(student_tokenizer), end_of_turn_id(teacher_tokenizer)),
    )
