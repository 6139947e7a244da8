"""Training data: load (files, dataset dirs, Hub ids), detect the format, validate every record, normalise.

Library entry points: ``load_data`` (records + problems, nothing written) and ``token_report`` (lengths after
tokenisation). ``forge data check`` is a thin wrapper over both.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
from typing import Any, Sequence

from ..errors import ForgeError
from ..events import choice
from .loading import DataSource, Location, RawRecord, read_records
from .schema import FORMATS, Invalid, canonical_format, detect, normalize, normalize_conversation

__all__ = ["DataSource", "Location", "Problem", "LoadedData", "load_data", "token_report", "TokenReport",
           "FORMATS", "normalize_conversation", "canonical_format"]

log = logging.getLogger("ollama_forge.data")


@dataclasses.dataclass(frozen=True)
class Problem:
    loc: Location
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.loc}: {self.field}: {self.message}"


@dataclasses.dataclass
class LoadedData:
    format: str  # the input format (alpaca stays "alpaca" here; records are canonical)
    reason: str
    records: list[dict[str, Any]]
    locations: list[Location]
    problems: list[Problem]
    notes: collections.Counter
    total: int  # records read, valid or not

    @property
    def canonical_format(self) -> str:
        return canonical_format(self.format)

    def raise_if_invalid(self) -> None:
        if self.problems:
            first = self.problems[0]
            more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
            raise ForgeError(f"{first}{more}", "run `forge data check` to list every problem, or use --skip-invalid")


def load_data(sources: Sequence[DataSource | str] | DataSource | str, fmt: str | None = None) -> LoadedData:
    """Read every source, detect (or check) the format, validate and normalise every record. Writes nothing."""
    if isinstance(sources, (str, DataSource)):
        sources = [sources]
    raw: list[RawRecord] = []
    for s in sources:
        raw.extend(read_records(s))
    problems: list[Problem] = []
    readable = [r for r in raw if r.error is None]
    for r in raw:
        if r.error is not None:
            problems.append(Problem(r.loc, r.field, r.error))
    if fmt is not None:
        if fmt not in FORMATS:
            raise ForgeError(f"--format {fmt}: unknown format", f"use one of {', '.join(FORMATS)}")
        reason = "given with --format"
    else:
        fmt, reason = detect([r.value for r in readable])
        if fmt is None:
            where = str(readable[0].loc) if readable else str(raw[0].loc) if raw else "data"
            if not readable and problems:
                fmt, reason = "unknown", reason
            else:
                raise ForgeError(f"{where}: cannot tell the data format: {reason}",
                                 f"use fields of one of {', '.join(FORMATS)}, or pass --format")
    choice("data_format", fmt, reason, stage="data")
    records, locs, notes = [], [], collections.Counter()
    seen: dict[str, Location] = {}
    for r in readable:
        if fmt == "unknown":
            break
        try:
            rec, rec_notes = normalize(r.value, fmt)
        except Invalid as e:
            problems.append(Problem(r.loc, e.field, e.message))
            continue
        key = json.dumps(rec, sort_keys=True, ensure_ascii=False)
        if key in seen:
            problems.append(Problem(r.loc, "record", f"duplicate of {seen[key]}; drop one"))
            continue
        seen[key] = r.loc
        notes.update(rec_notes)
        records.append(rec)
        locs.append(r.loc)
    problems.sort(key=lambda p: (p.loc.source, p.loc.line or 0, p.loc.row or 0))
    return LoadedData(fmt, reason, records, locs, problems, notes, total=len(raw))


@dataclasses.dataclass
class TokenReport:
    lengths: list[int]
    max_length: int | None
    over: int  # records longer than max_length
    dropped_tokens: int  # tokens right-truncation would cut
    lose_end_of_turn: int  # over-length records whose final end-of-turn token would be cut

    def percentile(self, q: float) -> int:
        s = sorted(self.lengths)
        return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))] if s else 0

    def summary(self) -> str:
        if not self.lengths:
            return "tokens: no records"
        line = f"tokens: p50 {self.percentile(50)}, p95 {self.percentile(95)}, max {max(self.lengths)}"
        if self.max_length:
            if self.over:
                line += (f"; {self.over} of {len(self.lengths)} records over --max-length {self.max_length}: "
                         f"right-truncation would drop {self.dropped_tokens} tokens and the final end-of-turn "
                         f"token of {self.lose_end_of_turn} (training drops such records by default)")
            else:
                line += f"; none over --max-length {self.max_length}"
        return line


def render_record(rec: dict[str, Any], tokenizer) -> list[int]:
    """Token ids of one canonical record as training will see them (chat template for conversations)."""
    def chat(msgs):
        ids = tokenizer.apply_chat_template(msgs, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return list(ids)

    has_template = bool(getattr(tokenizer, "chat_template", None))
    if "messages" in rec:
        if has_template:
            return chat(rec["messages"])
        return tokenizer("\n\n".join(m["content"] for m in rec["messages"]))["input_ids"]
    if "text" in rec:
        return tokenizer(rec["text"])["input_ids"] + ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])
    if "chosen" in rec:
        prompt = rec.get("prompt", "")
        longer = max((rec["chosen"], rec["rejected"]), key=lambda x: len(json.dumps(x)))
        if isinstance(longer, list):
            msgs = (prompt if isinstance(prompt, list) else []) + longer
            return chat(msgs) if has_template else tokenizer(json.dumps(msgs))["input_ids"]
        return tokenizer(str(prompt) + longer)["input_ids"]
    prompt, completion = rec["prompt"], rec["completion"]
    if isinstance(prompt, list) and has_template:
        return chat(prompt + completion)
    return tokenizer(str(prompt) + str(completion))["input_ids"]


def token_report(records: list[dict[str, Any]], tokenizer, max_length: int | None) -> TokenReport:
    lengths = [len(render_record(r, tokenizer)) for r in records]
    over = [n for n in lengths if max_length and n > max_length]
    return TokenReport(lengths, max_length, len(over), sum(n - max_length for n in over) if max_length else 0,
                       len(over))
