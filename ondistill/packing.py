"""Ragged batches without paying for padding: token-budget micro-batches, rows balanced over
ranks by token count, and packed (variable-length) forwards.

Real on-policy batches are ragged (some answers stop after 20 tokens, others run to the limit),
and a padded micro-batch computes every row at its widest row's length. Three levers:

- `micro_batches(lengths, budget, packed)`: rows grouped so that a micro-batch holds at most
  `budget` tokens: real tokens when packed, rows x the longest row when padded (rows sorted by
  length, so a micro-batch's rows are of similar length). Loss weights do not change: each token
  keeps the weight of the whole batch's mean, whatever micro-batch it lands in.
- `balance(lengths, parts)`: rows over ranks / replicas by token count (longest first, each to
  the least loaded part), so no rank waits for another; every part ends within one row of the
  mean.
- `pack(ids, mask, span)`: a micro-batch's rows concatenated into one row of real tokens, with
  position ids that restart at 0 for each row; transformers then builds the block-diagonal
  causal mask from the position ids (flex attention on CUDA runs only the diagonal blocks), so
  the hidden states equal the padded computation's. `forward_columns` is the padded path,
  trimmed to the columns some row of the micro-batch uses.

Batches are laid out as in ondistill/batch.py: prompts LEFT-padded, responses RIGHT-padded, so a
row's real tokens are contiguous and every response mask is a prefix.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


def micro_batches(lengths: list[int], budget: int, packed: bool) -> list[list[int]]:
    """Row indices per micro-batch, each within `budget` tokens (a row longer than the budget
    gets one of its own). packed: a micro-batch costs its rows' total length (first-fit
    decreasing); else rows x its longest row (consecutive rows in order of length)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    bins: list[list[int]] = []
    if packed:
        room: list[int] = []
        for i in order:
            fit = next((b for b, r in enumerate(room) if r >= lengths[i]), None)
            if fit is None:
                bins.append([i])
                room.append(budget - lengths[i])
            else:
                bins[fit].append(i)
                room[fit] -= lengths[i]
        return bins
    for i in order:  # sorted longest first: a bin's first row is its widest
        if bins and (len(bins[-1]) + 1) * lengths[bins[-1][0]] <= budget:
            bins[-1].append(i)
        else:
            bins.append([i])
    return bins


def even_out(bins: list[list[int]], count: int) -> list[list[int]]:
    """`bins` split further until there are `count` of them (FSDP ranks must run the same
    number of forwards): the bin with the most rows is halved each time; [] when no bin has
    two rows left (the caller runs an empty micro-batch)."""
    bins = [list(b) for b in bins]
    while len(bins) < count:
        widest = max(range(len(bins)), key=lambda b: len(bins[b]), default=None)
        if widest is None or len(bins[widest]) < 2:
            bins.append([])
            continue
        rows = bins.pop(widest)
        bins += [rows[: len(rows) // 2], rows[len(rows) // 2 :]]
    return bins


def balance(lengths: list[int], parts: int) -> list[list[int]]:
    """Row indices per part, longest row first to the least loaded part; each part's rows in
    their original order."""
    load, out = [0] * parts, [[] for _ in range(parts)]  # type: list[int], list[list[int]]
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        p = min(range(parts), key=lambda p: (load[p], p))
        out[p].append(i)
        load[p] += lengths[i]
    return [sorted(rows) for rows in out]


def attention(packing: bool, device: torch.device) -> str | None:
    """The transformers attention for a model that runs packed rows: flex attention on CUDA
    computes only the diagonal blocks of the packed causal mask; elsewhere the default (SDPA,
    given the packed mask dense, which is correct and fine for CPU-sized rows)."""
    return "flex_attention" if packing and device.type == "cuda" else None


def row_lengths(mask: torch.Tensor) -> list[int]:
    """Real tokens per row of a [b, L] attention mask."""
    return mask.sum(1).tolist()


@dataclass
class Packed:
    ids: torch.Tensor  # [1, T] the rows' real tokens, one after another (then filler)
    pos: torch.Tensor  # [1, T] position ids, restarting at 0 for every row
    index: torch.Tensor  # [b, width] where in T each wanted position of each row landed


def pack(
    ids: torch.Tensor, mask: torch.Tensor, span: slice, pad_to: int = 0, pad_id: int = 0
) -> Packed:
    """ids, mask [b, L] -> one packed row; `index` maps columns `span` of each row (the
    positions whose hidden states are wanted) to the packed row; positions that are padding
    map to 0 (their outputs must carry zero weight). pad_to: filler tokens (a sequence of their
    own, never attended from the rows) up to this length, for static shapes on CUDA."""
    keep = mask.bool()
    pos = (keep.long().cumsum(1) - 1).clamp(min=0)
    flat_ids, flat_pos = ids[keep], pos[keep]
    where = torch.full(ids.shape, -1, dtype=torch.long, device=ids.device)
    where[keep] = torch.arange(flat_ids.numel(), device=ids.device)
    index = where[:, span].clamp(min=0)
    filler = pad_to - flat_ids.numel()
    if filler > 0:
        flat_ids = torch.cat([flat_ids, flat_ids.new_full((filler,), pad_id)])
        flat_pos = torch.cat([flat_pos, torch.arange(filler, device=ids.device)])
    return Packed(flat_ids[None], flat_pos[None], index)


Decoder = Callable[..., torch.Tensor]  # (input_ids, attention_mask, position_ids) -> [b, L, H]


def forward_packed(
    decoder: Decoder, ids: torch.Tensor, mask: torch.Tensor, span: slice, pad_to: int = 0
) -> torch.Tensor:
    """Hidden states [b, width, H] of columns `span`, computed on the packed rows (no
    attention mask: transformers reads the row boundaries off the position ids)."""
    p = pack(ids, mask, span, pad_to)
    # no cache: transformers reads row boundaries off the position ids only without one
    out = decoder(input_ids=p.ids, attention_mask=None, position_ids=p.pos, use_cache=False)
    return out[0][0][p.index]  # the one packed row's states, gathered back to [b, width, H]


def forward_columns(
    decoder: Decoder, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, span: slice
) -> torch.Tensor:
    """Hidden states [b, width, H] of columns `span`, the padded forward run only over the
    columns some row uses (zeros where none does: their outputs carry zero weight)."""
    used = mask.bool().any(0).nonzero()
    lo, hi = int(used.min()), int(used.max()) + 1
    cols = slice(lo, hi)
    out = decoder(
        input_ids=ids[:, cols],
        attention_mask=mask[:, cols],
        position_ids=pos[:, cols],
        use_cache=False,  # training and scoring: a KV cache would only cost memory
    )[0]
    start, stop = span.start - lo, span.stop - lo
    kept = out[:, max(0, start) : min(stop, hi - lo)]
    return torch.nn.functional.pad(
        kept, (0, 0, max(0, -start), max(0, stop - (hi - lo))), value=0.0
    )
