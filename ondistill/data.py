"""Prompt datasets: read and check JSONL rows, tokenize once, split off a held-out set, and
collate batches in the schema of ondistill.batch.

A row is {"prompt": str, "response"?: str}, and with several teachers routed by field, the
name of its teacher under routing.key (e.g. "teacher": "math"). Responses are needed only for
off-policy batches (they are the degenerate rollout). Bad rows raise DataError naming the
file and line, or are skipped and counted with data.bad_rows=skip.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from tensordict import TensorDict

from ondistill import batch as B
from ondistill.config import DataConfig

ASSETS = Path(__file__).parent / "assets"
BUILTIN_PROMPTS = ASSETS / "prompts.jsonl"


class DataError(ValueError):
    pass


@dataclass
class Example:
    prompt_ids: list[int]
    response_ids: list[int] | None  # tokenized reference response, EOS included
    teacher_prompt_ids: list[int] | None = None  # cross-tokenizer: in the teacher's template
    prompt: str = ""  # the row's text, for reading the answers (evaluation samples)
    # a prompt only the teacher sees (the row's teacher_prompt, or data.teacher_prompt filled in)
    teacher_context_ids: list[int] | None = None
    route: int | None = None  # its teacher's index in `teachers` (routing.mode=field)


@dataclass(frozen=True)
class Routing:
    """Rows name their teacher under `key`, one of `names` (routing.mode=field)."""

    key: str
    names: tuple[str, ...]

    def index(self, row: dict, where: str) -> int:
        """The row's teacher index; DataError if it names none of the run's teachers."""
        name = row.get(self.key)
        if name is None:
            raise DataError(
                f"{where}: has no '{self.key}'; with routing.mode=field every row names its "
                f"teacher (one of: {', '.join(self.names)}), or set routing.mode=mixture."
            )
        if name not in self.names:
            raise DataError(
                f"{where}: '{self.key}' is {name!r}, not a teacher of this run; name one of: "
                f"{', '.join(self.names)}."
            )
        return self.names.index(name)


def _prompt_ids(tok, prompt: str, chat_template: bool) -> list[int]:
    if chat_template and tok.chat_template:
        ids = tok.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
        )
        return list(ids if isinstance(ids, list) else ids["input_ids"])
    return tok(prompt, add_special_tokens=True)["input_ids"]


def _check_row(raw: str, where: str) -> dict:
    try:
        row = json.loads(raw)
    except json.JSONDecodeError as e:
        raise DataError(
            f"{where}: not valid JSON ({e.msg}); each line must be one object like "
            '{"prompt": "...", "response": "..."}.'
        ) from None
    if not isinstance(row, dict):
        raise DataError(f"{where}: is a JSON {type(row).__name__}, not an object with a 'prompt'.")
    prompt = row.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise DataError(
            f"{where}: 'prompt' is a {_json_kind(prompt)}, not a string; give the "
            "prompt's text in quotes."
        )
    if not isinstance(prompt, str) or not prompt.strip():
        raise DataError(f"{where}: 'prompt' is missing or empty; give a non-empty string.")
    for key in ("response", "teacher_prompt"):
        value = row.get(key)
        if value is not None and not isinstance(value, str):
            raise DataError(
                f"{where}: '{key}' is a {type(value).__name__}; give a string or leave it out."
            )
    return row


def _json_kind(value) -> str:
    return {bool: "boolean", int: "number", float: "number", list: "list", dict: "object"}.get(
        type(value), type(value).__name__
    )


def prompts_path(prompts: str) -> Path:
    """data.prompts as a file: builtin is the shipped prompt set, builtin:NAME the shipped
    ondistill/assets/NAME.jsonl, anything else a path."""
    if prompts == "builtin":
        return BUILTIN_PROMPTS
    if prompts.startswith("builtin:"):
        return ASSETS / f"{prompts.removeprefix('builtin:')}.jsonl"
    return Path(prompts).expanduser()


def read_rows(
    cfg: DataConfig, routing: Routing | None = None
) -> tuple[list[tuple[str, dict]], int]:
    """The file's checked rows as (file:line, row), and how many bad rows were skipped. Text
    checks only (no tokenizer), so bad data stops a run before any model is prepared. Each
    line is decoded on its own: one line of bad UTF-8 names its line and can be skipped.
    routing: each row must name one of its teachers."""
    path = prompts_path(cfg.prompts)
    if not path.exists():
        raise DataError(
            f"data.prompts='{cfg.prompts}' does not exist; give a JSONL file of "
            '{"prompt": ...} rows or data.prompts=builtin.'
        )
    if path.is_dir():
        raise DataError(
            f"data.prompts='{cfg.prompts}' is a directory; give the path of a JSONL file inside it."
        )
    rows, skipped = [], 0
    for lineno, raw in enumerate(path.read_bytes().splitlines(), 1):
        where = f"{path}:{lineno}"
        try:
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(
                    f"{where}: not UTF-8 text (byte {e.start} of the line); save the "
                    "file as UTF-8 JSONL."
                ) from None
            if text.strip():
                row = _check_row(text, where)
                if routing is not None:
                    routing.index(row, where)
                rows.append((where, row))
        except DataError as e:
            if cfg.bad_rows == "error":
                raise DataError(f"{e} (or set data.bad_rows=skip to skip such rows)") from None
            skipped += 1
    return rows, skipped


class PromptSet:
    """Tokenized prompts with a held-out split. Shuffles per epoch from a seed."""

    def __init__(
        self,
        cfg: DataConfig,
        tokenizer,
        seed: int = 0,
        teacher_tokenizer=None,
        rows: tuple[list[tuple[str, dict]], int] | None = None,
        routing: Routing | None = None,
    ):
        """teacher_tokenizer: a different tokenizer of the teacher (cross-tokenizer KD); each
        prompt is then also rendered in the teacher's own chat template. rows: read_rows(cfg,
        routing), if the caller has already read them. routing: each example keeps the index
        of the teacher its row names."""
        checked, self.skipped = rows or read_rows(cfg, routing)
        self.routing = routing
        self.tokenizer, self.teacher_tokenizer = tokenizer, teacher_tokenizer
        self.pad_id = pad_id_of(tokenizer)
        examples = []
        for where, row in checked:
            try:
                examples.append(self._encode(row, cfg, where))
            except DataError as e:
                if cfg.bad_rows == "error":
                    raise DataError(f"{e} (or set data.bad_rows=skip to skip such rows)") from None
                self.skipped += 1
        if len(examples) <= cfg.eval_size:
            raise DataError(
                f"{cfg.prompts} has {len(examples)} usable rows, but data.eval_size="
                f"{cfg.eval_size} are held out; add rows or lower data.eval_size."
            )
        cut = len(examples) - cfg.eval_size
        self.train, self.eval = examples[:cut], examples[cut:]
        self.teacher_pad_id = pad_id_of(teacher_tokenizer) if teacher_tokenizer is not None else 0
        self.rng = random.Random(seed)
        self.epoch, self.position = 0, 0
        self.order = self._shuffled()

    def _encode(self, row: dict, cfg: DataConfig, where: str) -> Example:
        tok = self.tokenizer
        ids = _prompt_ids(tok, row["prompt"], cfg.chat_template)
        if len(ids) > cfg.max_prompt_tokens:
            raise DataError(
                f"{where}: prompt is {len(ids)} tokens, over data.max_prompt_tokens="
                f"{cfg.max_prompt_tokens}; shorten it or raise the limit."
            )
        response = None
        if row.get("response") is not None:
            response = tok(row["response"], add_special_tokens=False)["input_ids"]
            response.append(tok.eos_token_id)
        teacher_ids = None
        if self.teacher_tokenizer is not None:
            teacher_ids = _prompt_ids(self.teacher_tokenizer, row["prompt"], cfg.chat_template)
        context = row.get("teacher_prompt")
        if context is None and cfg.teacher_prompt:
            if "{response}" in cfg.teacher_prompt and row.get("response") is None:
                raise DataError(
                    f"{where}: data.teacher_prompt uses {{response}} but the row has no "
                    "'response'; add one or drop {response} from the template."
                )
            context = cfg.teacher_prompt.format(
                prompt=row["prompt"], response=row.get("response", "")
            )
        context_ids = _prompt_ids(tok, context, cfg.chat_template) if context else None
        route = self.routing.index(row, where) if self.routing else None
        return Example(ids, response, teacher_ids, row["prompt"], context_ids, route)

    def require_responses(self, why: str) -> None:
        """Off-policy batches need a reference response on every training row."""
        missing = sum(e.response_ids is None for e in self.train)
        if missing:
            raise DataError(
                f"{missing} of {len(self.train)} training rows have no 'response', "
                f"but {why}; add responses to the data or set "
                "trainer.on_policy_fraction=1 (on-policy only)."
            )

    def state(self) -> dict:
        """Data position, JSON-safe: epoch, position in the epoch's order, shuffle RNG."""
        rng = self.rng.getstate()
        return {
            "epoch": self.epoch,
            "position": self.position,
            "order": list(self.order),
            "rng": [rng[0], list(rng[1]), rng[2]],
        }

    def load_state(self, state: dict) -> None:
        self.epoch, self.position, self.order = state["epoch"], state["position"], state["order"]
        rng = state["rng"]
        self.rng.setstate((rng[0], tuple(rng[1]), rng[2]))

    def _shuffled(self) -> list[int]:
        order = list(range(len(self.train)))
        self.rng.shuffle(order)
        return order

    def next_examples(self, n: int) -> list[Example]:
        out = []
        for _ in range(n):
            if self.position == len(self.order):
                self.epoch, self.position, self.order = self.epoch + 1, 0, self._shuffled()
            out.append(self.train[self.order[self.position]])
            self.position += 1
        return out

    def eval_batches(self, n: int) -> Iterator[list[Example]]:
        for i in range(0, len(self.eval), n):
            yield self.eval[i : i + n]


def pad_id_of(tokenizer) -> int:
    """The id that pads this tokenizer's rows: its pad token, else its EOS."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def pad_rows(
    rows: list[list[int]], pad_id: int, width: int | None = None, left: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [n, width], mask [n, width]) of rows padded to width (default: the longest row, at
    least 1); longer rows are truncated. Right-padded unless left (prompts)."""
    width = width or max(1, max(len(r) for r in rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, r in enumerate(rows):
        r = r[:width]
        span = slice(width - len(r), width) if left else slice(0, len(r))
        ids[i, span] = torch.tensor(r, dtype=torch.long)
        mask[i, span] = True
    return ids, mask


def collate_prompts(
    examples: list[Example], pad_id: int, teacher_pad_id: int = 0, responses: bool = False
) -> TensorDict:
    """Left-pad prompts into PROMPT_IDS / PROMPT_MASK / PROMPT_INDEX (and XT_PROMPT_IDS /
    XT_PROMPT_MASK when the examples carry the teacher's own prompt tokens, TEACHER_ROUTE when
    they name their teacher); responses: also
    the examples' dataset responses, right-padded (DATASET_RESPONSE_IDS / _MASK)."""
    ids, mask = pad_rows([e.prompt_ids for e in examples], pad_id, left=True)
    td = TensorDict(
        {B.PROMPT_IDS: ids, B.PROMPT_MASK: mask, B.PROMPT_INDEX: torch.arange(len(examples))},
        batch_size=[len(examples)],
    )
    if examples[0].teacher_prompt_ids is not None:
        t_rows = [e.teacher_prompt_ids or [] for e in examples]
        t_ids, t_mask = pad_rows(t_rows, teacher_pad_id, left=True)
        td.set(B.XT_PROMPT_IDS, t_ids)
        td.set(B.XT_PROMPT_MASK, t_mask)
    if examples[0].route is not None:
        td.set(B.TEACHER_ROUTE, torch.tensor([e.route for e in examples]))
    if any(e.teacher_context_ids is not None for e in examples):
        c_rows = [e.teacher_context_ids or e.prompt_ids for e in examples]  # else its own
        c_ids, c_mask = pad_rows(c_rows, pad_id, left=True)
        td.set(B.TEACHER_CONTEXT_IDS, c_ids)
        td.set(B.TEACHER_CONTEXT_MASK, c_mask)
    if responses:
        rows = [e.response_ids for e in examples]
        if any(r is None for r in rows):
            raise ValueError("an off-policy step needs every prompt's dataset response")
        r_ids, r_mask = pad_rows([r or [] for r in rows], pad_id)
        td.set(B.DATASET_RESPONSE_IDS, r_ids)
        td.set(B.DATASET_RESPONSE_MASK, r_mask)
    return td


def collate_responses(
    td: TensorDict, responses: list[list[int]], pad_id: int, max_tokens: int
) -> TensorDict:
    """Add right-padded RESPONSE_IDS / RESPONSE_MASK (truncated to max_tokens) to td."""
    ids, mask = pad_rows(responses, pad_id, max(1, min(max_tokens, max(len(r) for r in responses))))
    td.set(B.RESPONSE_IDS, ids)
    td.set(B.RESPONSE_MASK, mask)
    return td
