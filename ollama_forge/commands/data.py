"""``forge data check``: format and why, counts, token lengths, then every problem as file:line: field: what."""

from __future__ import annotations

import argparse
import json
import sys

HELP = "check and inspect training data (formats, validation, token lengths)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    c = sub.add_parser("check", help="validate a dataset and report what training would see")
    c.add_argument("paths", nargs="+", metavar="PATH", help="data file(s) (.jsonl .json .csv .parquet), a datasets "
                   "directory, or a Hugging Face dataset id")
    c.add_argument("--model", help="tokenizer to measure token lengths with (HF directory or id)")
    c.add_argument("--format", choices=["messages", "prompt-completion", "alpaca", "text", "preference"],
                   help="skip auto-detection")
    c.add_argument("--max-length", type=int, default=None, help="training max length to check against")
    c.add_argument("--split", help="split of a dataset directory or Hub id (default: train)")
    c.add_argument("--subset", help="subset (config name) of a Hub dataset")
    c.add_argument("--skip-invalid", action="store_true", help="drop invalid records (and say how many) instead of failing")
    c.add_argument("-o", "--output", help="write the valid, normalised records as JSONL here")
    c.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    from ..atomic import atomic_open
    from ..data import DataSource, load_data, token_report
    from ..errors import ForgeError

    sources = [DataSource(p, split=args.split, subset=args.subset) for p in args.paths]
    data = load_data(sources, fmt=args.format)
    report = None
    if args.model and data.records:
        from ..modelref import resolve

        ref = resolve(args.model)
        if ref.kind not in ("hf_dir", "hf_id"):
            raise ForgeError(f"--model {args.model}: token lengths need a Hugging Face tokenizer ({ref.kind} given)",
                             "pass the HF model directory or id")
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(ref.value)
        report = token_report(data.records, tok, args.max_length)
    invalid = len(data.problems)
    if args.json:
        print(json.dumps({
            "format": data.format, "reason": data.reason, "records": data.total, "valid": len(data.records),
            "invalid": invalid, "notes": dict(data.notes),
            "tokens": None if report is None else {
                "p50": report.percentile(50), "p95": report.percentile(95), "max": max(report.lengths),
                "over_max_length": report.over, "dropped_tokens": report.dropped_tokens},
            "problems": [{"location": str(p.loc), "field": p.field, "message": p.message} for p in data.problems],
        }, indent=2, ensure_ascii=False))
    else:
        print(f"format: {data.format} ({data.reason})")
        print(f"records: {data.total} read, {len(data.records)} valid, {invalid} invalid")
        for note, n in data.notes.items():
            print(f"normalised: {n} records: {note}")
        if report is not None:
            print(report.summary())
        for p in data.problems:
            print(p)
    if invalid and not args.skip_invalid:
        more = f" (and {invalid - 1} more, listed above)" if invalid > 1 else ""
        print(f"forge data check: error: {data.problems[0]}{more}: fix the record(s) or pass --skip-invalid",
              file=sys.stderr)
        return 2
    if invalid:
        print(f"skipping {invalid} invalid record(s)", file=sys.stderr)
    if args.output:
        from ..errors import disk_space

        with disk_space(args.output, "the records"), atomic_open(args.output) as f:
            for rec in data.records:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        print(f"wrote {len(data.records)} records to {args.output}")
    return 0
