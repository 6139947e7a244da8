"""``forge models``: the Ollama models forge registered, with where each came from."""

from __future__ import annotations

import argparse
import json

HELP = "list Ollama models made by forge, with lineage"
DESCRIPTION = ("List the models registered in Ollama that forge pushed (recognised by the manifest digest recorded "
               "at push time, so copies count and models re-created by others do not), with their lineage: base "
               "model, chat format, quantization, data and recipe hashes.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", help="Ollama address (default: OLLAMA_HOST, else 127.0.0.1:11434)")
    p.add_argument("--json", action="store_true", help="print every field as JSON")


def _short(value: object, width: int) -> str:
    text = "-" if value in (None, "") else str(value)
    return text if len(text) <= width else "…" + text[-(width - 1):]


def run(args: argparse.Namespace) -> int:
    from ..ollama import forge_models

    models = forge_models(host=args.host)
    if args.json:
        print(json.dumps(models, indent=2, default=str))
        return 0
    if not models:
        print("no models pushed by forge are registered in this Ollama (forge push NAME RUN_DIR registers one)")
        return 0
    rows = [("NAME", "QUANT", "SIZE", "FORMAT", "BASE", "DATA", "PUSHED")]
    for m in models:
        lin = m.get("lineage") or {}
        rows.append((m["name"], str(m.get("quantization_level") or "-"), f"{m['size'] / 1e6:.1f} MB",
                     str(lin.get("chat_format") or "-"), _short(lin.get("base_model"), 40),
                     _short((lin.get("data_hash") or "")[:12], 12), str(m.get("pushed_at") or "-")))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0
