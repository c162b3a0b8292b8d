"""Align two tokenizations of the same text by byte offsets.

Each token covers the bytes it decodes to (vocab.token_bytes). A *shared boundary* is an offset
where a token ends on both sides. Between consecutive shared boundaries lies one aligned
chunk: a run of 1..n student tokens and 1..m teacher tokens covering the same bytes (1:1,
1:n, n:1 or n:m). Two facts the losses rely on:
  - the first token of chunk k starts at the same byte on both sides, so the two models'
    next-token distributions there are conditioned on the same text;
  - the chunk's probability on each side is the product of its tokens' probabilities.
Tokens with no bytes (special tokens) and tokens past the texts' common prefix get chunk -1,
and so does a whole chunk that a byte-less token splits; end-of-turn tokens that end both
responses form one last chunk of their own.

A teacher tokenizer may put bytes before the text it was given: SentencePiece's dummy prefix
(a Metaspace pre-tokenizer with prepend_scheme "always", as in many Llama- and Mistral-family
tokenizers) turns "Hello" into "▁Hello", i.e. b" Hello". Aligning from byte 0 would then find
no common prefix and align nothing; so the teacher's offsets are counted from where the text
it was given begins (its first token keeps its extra byte).
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass


@dataclass(frozen=True)
class Alignment:
    student_chunk: list[int]  # per student token: its chunk index, or -1 (not aligned)
    teacher_chunk: list[int]  # per teacher token: its chunk index, or -1
    num_chunks: int


def byte_ends(ids: list[int], table: list[bytes]) -> tuple[bytes, list[int]]:
    """(the bytes the ids decode to, each token's end offset in them)."""
    ends, total, parts = [], 0, []
    for i in ids:
        parts.append(table[i])
        total += len(table[i])
        ends.append(total)
    return b"".join(parts), ends


def _common_prefix(a: bytes, b: bytes) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def inserted_prefix(s_text: bytes, t_text: bytes, most: int = 4) -> int:
    """Bytes the teacher's tokenization put before the text: the smallest k <= most such that
    t_text[k:] begins like s_text (0 when the texts begin alike, or nothing matches)."""
    probe = s_text[:16]
    for k in range(most + 1):
        if probe and t_text[k : k + len(probe)] == probe:
            return k
    return 0


def _chunks(ends: list[int], sizes: list[int], bounds: list[int]) -> list[int]:
    """Chunk index per token: k where bounds[k] < end <= bounds[k + 1]; -1 if none or empty."""
    out = []
    for end, size in zip(ends, sizes, strict=True):
        k = bisect_left(bounds, end)  # bounds[k] >= end
        out.append(k - 1 if size and k < len(bounds) and k >= 1 else -1)
    return out


def _split(chunks: list[int]) -> set[int]:
    """Chunks whose tokens are not contiguous: a token without bytes (a special token a sample
    may hold mid-text) sits inside them."""
    seen, last, split = set(), -1, set()
    for k in chunks:
        if k >= 0 and k != last:
            if k in seen:
                split.add(k)
            seen.add(k)
        last = k
    return split


def _drop_split_chunks(
    s_chunk: list[int], t_chunk: list[int], num: int
) -> tuple[list[int], list[int], int]:
    """Leave out (-1) every chunk that a byte-less token splits on either side, and number the
    rest 0..n-1 on both sides alike: a split chunk has no single first token to condition on,
    and the losses count a chunk once per contiguous run (one more on that side)."""
    split = _split(s_chunk) | _split(t_chunk)
    if not split:
        return s_chunk, t_chunk, num
    new = {k: i for i, k in enumerate(k for k in range(num) if k not in split)}
    return [new.get(k, -1) for k in s_chunk], [new.get(k, -1) for k in t_chunk], len(new)


def align(
    student_ids: list[int],
    teacher_ids: list[int],
    student_table: list[bytes],
    teacher_table: list[bytes],
    student_end: bool = False,
    teacher_end: bool = False,
) -> Alignment:
    """Chunks of two tokenizations of (nearly) the same text. *_end: the last id of that side is
    an end-of-turn token (not text); both must be True for it to be aligned."""
    s_text, s_ends = byte_ends(student_ids[: len(student_ids) - student_end], student_table)
    t_text, t_ends = byte_ends(teacher_ids[: len(teacher_ids) - teacher_end], teacher_table)
    shift = inserted_prefix(s_text, t_text)
    t_text, t_ends = t_text[shift:], [max(0, e - shift) for e in t_ends]
    common = _common_prefix(s_text, t_text)
    bounds = [0] + sorted(e for e in set(s_ends) & set(t_ends) if 0 < e <= common)
    s_sizes = [len(student_table[i]) for i in student_ids[: len(s_ends)]]
    t_sizes = [len(teacher_table[i]) for i in teacher_ids[: len(t_ends)]]
    s_chunk, t_chunk = _chunks(s_ends, s_sizes, bounds), _chunks(t_ends, t_sizes, bounds)
    s_chunk, t_chunk, num = _drop_split_chunks(s_chunk, t_chunk, len(bounds) - 1)
    if student_end and teacher_end:
        same_text = common == len(s_text) == len(t_text)
        s_chunk.append(num if same_text else -1)
        t_chunk.append(num if same_text else -1)
        num += same_text
    else:
        s_chunk += [-1] * student_end
        t_chunk += [-1] * teacher_end
    return Alignment(s_chunk, t_chunk, num)
