"""``forge formats``: list the chat formats, show one (``--json`` for tools), or detect a model's format."""

from __future__ import annotations

import argparse
import json

HELP = "list chat formats, or show one (Jinja, Ollama TEMPLATE, stops)"
DESCRIPTION = ("Chat formats live in modelfiles/, one file each: the Jinja template training uses, the Ollama TEMPLATE "
               "serving uses, the stop strings and default parameters. 'proven' means the parity test showed the two "
               "templates render byte-identical prompts.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="formats_command", metavar="ACTION")
    sub.add_parser("list", help="list the formats (the default)").add_argument(
        "--json", action="store_true", help="print a JSON list")
    s = sub.add_parser("show", help="show one format")
    s.add_argument("name", help="format name (forge formats list)")
    s.add_argument("--json", action="store_true",
                   help='print {"name", "jinja", "ollama_template", "stop", "parameters", ...} as JSON')
    d = sub.add_parser("detect", help="say which format a model's chat template is, and why")
    d.add_argument("model", help="HF model directory, GGUF file, or a chat-template file")
    d.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--json", action="store_true", help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    from .. import formats

    action = args.formats_command or "list"
    if action == "list":
        fmts = formats.all_formats()
        if args.json:
            print(json.dumps([{"name": f.name, "description": f.description, "stop": list(f.stop),
                               "proven": f.proven} for f in fmts], indent=2, ensure_ascii=False))
            return 0
        width = max(len(f.name) for f in fmts)
        for f in fmts:
            print(f"{f.name:<{width}}  {'proven  ' if f.proven else 'UNPROVEN'}  {f.description}")
        return 0
    if action == "show":
        fmt = formats.load(args.name)
        if args.json:
            print(json.dumps(fmt.to_dict(), indent=2, ensure_ascii=False))
            return 0
        print(f"name: {fmt.name} ({'proven' if fmt.proven else 'NOT proven'} template pair)")
        print(f"description: {fmt.description}")
        print(f"stop: {', '.join(fmt.stop)}")
        print(f"end of turn: {', '.join(fmt.end_of_turn)}")
        print(f"special tokens: {', '.join(fmt.special_tokens)}")
        if fmt.parameters:
            print("parameters: " + ", ".join(f"{k}={v}" for k, v in fmt.parameters.items()))
        print("\n--- jinja (training) ---\n" + fmt.jinja)
        print("\n--- ollama TEMPLATE (serving) ---\n" + fmt.ollama_template)
        return 0
    # detect
    from pathlib import Path

    from ..errors import ForgeError

    if not Path(args.model).exists():
        raise ForgeError(f"{args.model}: no such file or directory", "give an HF model directory, a GGUF file or a "
                         "chat-template file")
    det = formats.detect(Path(args.model), log=False)
    name = det.format.name if det.format else None
    if args.json:
        print(json.dumps({"format": name, "how": det.how, "variant": det.variant, "reason": det.reason,
                          "proven": bool(det.format and det.format.proven)}, indent=2, ensure_ascii=False))
    else:
        print(f"{name or 'unknown'}: {det.reason}")
    return 0 if det.format else 2
