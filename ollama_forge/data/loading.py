"""Read training data from files, dataset directories and Hub ids, keeping where each record came from.

Every record comes with a ``Location`` so validation can say ``file:line``: the physical line of the file
(JSONL: the record's line; JSON array: the line where the object starts; CSV: the header is line 1), or the row
index for Parquet files and ``datasets`` directories. Problems found while reading (invalid JSON, not UTF-8) are
returned as records whose ``error`` is set, so one pass reports every problem in the file.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from pathlib import Path
from typing import Any, Iterator

from ..errors import ForgeError

SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet"}


@dataclasses.dataclass(frozen=True)
class Location:
    source: str
    line: int | None = None  # physical line, 1-based
    row: int | None = None  # row index, 0-based (Parquet, datasets)

    def __str__(self) -> str:
        if self.line is not None:
            return f"{self.source}:{self.line}"
        if self.row is not None:
            return f"{self.source}:row {self.row}"
        return self.source


@dataclasses.dataclass
class RawRecord:
    loc: Location
    value: Any = None
    error: str | None = None  # set when the record could not be read at all
    field: str = "record"


@dataclasses.dataclass(frozen=True)
class DataSource:
    """Where data comes from: a local path, or a Hub dataset id with optional subset and split."""

    path: str
    split: str | None = None
    subset: str | None = None


def read_records(src: DataSource | str) -> list[RawRecord]:
    if isinstance(src, str):
        src = DataSource(src)
    p = Path(src.path).expanduser()
    if p.is_dir():
        return _read_dataset_dir(p, src)
    if p.is_file():
        kind = SUFFIXES.get(p.suffix.lower())
        if kind is None:
            raise ForgeError(f"{p}: unknown data file type {p.suffix!r}",
                             "use .jsonl, .json, .csv, .parquet, or a datasets directory")
        raw = p.read_bytes()
        if not raw.strip(b"\xef\xbb\xbf \t\r\n"):
            raise ForgeError(f"{p}: file is empty", "add records, one JSON object per line for .jsonl")
        records = {"jsonl": _read_jsonl, "json": _read_json, "csv": _read_csv, "parquet": _read_parquet}[kind](p, raw)
        if not records:
            raise ForgeError(f"{p}: no records found", "check the file holds data rows")
        return records
    if src.path.startswith((".", "/", "~")) or os.sep in src.path.strip("/").replace("/", "", 1) \
            or Path(src.path).suffix.lower() in SUFFIXES:
        raise ForgeError(f"{src.path}: no such file or directory", "check the data path")
    return _read_hub(src)


def _decode_lines(path: Path, raw: bytes) -> Iterator[tuple[int, str | None, str | None]]:
    """Yield (line number, text, error) for each physical line; BOM and CRLF accepted."""
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    for i, bline in enumerate(raw.split(b"\n"), start=1):
        try:
            yield i, bline.decode("utf-8").rstrip("\r"), None
        except UnicodeDecodeError as e:
            yield i, None, f"not valid UTF-8 (byte 0x{bline[e.start]:02x} at column {e.start + 1}); re-save the file as UTF-8"


def _read_jsonl(path: Path, raw: bytes) -> list[RawRecord]:
    out = []
    for line, text, err in _decode_lines(path, raw):
        loc = Location(str(path), line=line)
        if err:
            out.append(RawRecord(loc, error=err))
            continue
        if not text.strip():
            continue
        try:
            out.append(RawRecord(loc, json.loads(text)))
        except json.JSONDecodeError as e:
            out.append(RawRecord(loc, error=f"invalid JSON: {e.msg} at column {e.colno}"))
        except RecursionError:
            out.append(RawRecord(loc, error=TOO_DEEP))
    return out


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


TOO_DEEP = "invalid JSON: nested too deeply to read (arrays or objects over ~1000 levels deep)"


def _read_json(path: Path, raw: bytes) -> list[RawRecord]:
    try:
        return _read_json_text(path, raw)
    except RecursionError:
        return [RawRecord(Location(str(path), line=1), error=TOO_DEEP)]


def _read_json_text(path: Path, raw: bytes) -> list[RawRecord]:
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        return [RawRecord(Location(str(path), line=line), error="not valid UTF-8; re-save the file as UTF-8")]
    stripped = text.lstrip()
    if stripped.startswith("{"):
        try:
            json.loads(text)
        except json.JSONDecodeError as e:
            if e.msg == "Extra data":  # one object per line under a .json name: read it as JSON Lines
                return _read_jsonl(path, raw)
            return [RawRecord(Location(str(path), line=e.lineno), error=f"invalid JSON: {e.msg} at column {e.colno}")]
        return [RawRecord(Location(str(path), line=_line_of(text, len(text) - len(stripped))), json.loads(text))]
    if not stripped.startswith("["):
        line = _line_of(text, len(text) - len(stripped))
        return [RawRecord(Location(str(path), line=line), error="expected a JSON array of records or JSON Lines")]
    try:
        json.loads(text)
    except json.JSONDecodeError as e:  # report the first syntax error's line and stop: nothing after it is reliable
        return [RawRecord(Location(str(path), line=e.lineno), error=f"invalid JSON: {e.msg} at column {e.colno}")]
    # Walk the array with raw_decode to learn the line where each element starts.
    dec = json.JSONDecoder()
    i = text.index("[") + 1
    out: list[RawRecord] = []
    n = len(text)
    while True:
        while i < n and text[i] in " \t\r\n,":
            i += 1
        if i >= n or text[i] == "]":
            break
        value, end = dec.raw_decode(text, i)
        out.append(RawRecord(Location(str(path), line=_line_of(text, i)), value))
        i = end
    return out


def _read_csv(path: Path, raw: bytes) -> list[RawRecord]:
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        return [RawRecord(Location(str(path), line=line), error="not valid UTF-8; re-save the file as UTF-8")]
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        return []
    header = [h.strip() for h in header]
    out = []
    prev_end = reader.line_num
    for row in reader:
        start = prev_end + 1
        prev_end = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        loc = Location(str(path), line=start)
        if len(row) != len(header):
            out.append(RawRecord(loc, error=f"{len(row)} columns, header has {len(header)}"))
            continue
        rec: dict[str, Any] = {}
        for k, v in zip(header, row):
            if k in ("messages", "conversations", "chosen", "rejected", "prompt", "completion") and v.lstrip()[:1] in ("[", "{"):
                try:
                    v = json.loads(v)  # conversational columns hold JSON
                except json.JSONDecodeError as e:
                    out.append(RawRecord(loc, error=f"invalid JSON in CSV cell: {e.msg}", field=k))
                    break
                except RecursionError:
                    out.append(RawRecord(loc, error=TOO_DEEP, field=k))
                    break
            rec[k] = v
        else:
            out.append(RawRecord(loc, rec))
    return out


def _read_parquet(path: Path, raw: bytes) -> list[RawRecord]:
    import pyarrow.parquet as pq

    try:
        # use_threads=False: pyarrow's reader thread pool can abort the interpreter at exit ("terminate called
        # without an active exception", apache/arrow#34314): seen in 9 of 30 `forge data check x.parquet` runs.
        table = pq.read_table(io.BytesIO(raw), use_threads=False)
    except Exception as e:
        raise ForgeError(f"{path}: not a readable Parquet file ({' '.join(str(e).split())[:120]})",
                         "re-export the data as Parquet or JSONL") from None
    return [RawRecord(Location(str(path), row=i), rec) for i, rec in enumerate(table.to_pylist())]


def _rows_of(ds, source: str) -> list[RawRecord]:
    return [RawRecord(Location(source, row=i), dict(rec)) for i, rec in enumerate(ds)]


def _pick_split(dsd, src: DataSource, where: str):
    splits = list(dsd.keys())
    split = src.split or ("train" if "train" in splits else splits[0] if len(splits) == 1 else None)
    if split is None or split not in splits:
        raise ForgeError(f"{where}: split {src.split or '(none given)'!r} not found; it has {', '.join(splits)}",
                         "pick one with --split")
    return dsd[split]


def _read_dataset_dir(p: Path, src: DataSource) -> list[RawRecord]:
    import datasets

    if not (p / "dataset_info.json").exists() and not (p / "dataset_dict.json").exists():
        # A folder of data files: let `datasets` read it the way it reads a Hub repo.
        return _read_hub(DataSource(str(p), src.split, src.subset))
    try:
        ds = datasets.load_from_disk(str(p))
    except Exception as e:
        raise ForgeError(f"{p}: not a readable datasets directory ({' '.join(str(e).split())[:120]})",
                         "save it with Dataset.save_to_disk, or pass a .jsonl file") from None
    if isinstance(ds, datasets.DatasetDict):
        ds = _pick_split(ds, src, str(p))
    return _rows_of(ds, str(p))


def _read_hub(src: DataSource) -> list[RawRecord]:
    """A Hub dataset id (or a local folder of data files), via ``datasets.load_dataset``."""
    import datasets

    try:
        dsd = datasets.load_dataset(src.path, name=src.subset)
    except Exception as e:
        msg = " ".join(str(e).split())[:160]
        hint = "check the id, or log in with `hf auth login` for a gated dataset" if "401" in msg or "403" in msg \
            else "check the dataset id, --subset and your network"
        raise ForgeError(f"{src.path}: could not load dataset ({msg})", hint) from None
    ds = _pick_split(dsd, src, src.path)
    where = src.path + (f"[{src.subset}]" if src.subset else "") + f"/{src.split or 'train'}"
    return _rows_of(ds, where)
