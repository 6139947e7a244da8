"""``forge modelfile GGUF``: write the Modelfile whose TEMPLATE and stops come from the model's chat format."""

from __future__ import annotations

import argparse
import sys

HELP = "write an Ollama Modelfile for a GGUF from its chat format"
DESCRIPTION = ("Write an Ollama Modelfile for a GGUF (or HF model directory): TEMPLATE and stop strings from the chat "
               "format detected in the model's own chat template (or --chat-format), PARAMETER num_ctx so Ollama does "
               "not silently truncate, and SYSTEM if given. Prints to stdout unless -o is given.")


def _param(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"--param {text!r}: expected KEY=VALUE (e.g. temperature=0.7)")
    return key.strip(), value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="GGUF", help="GGUF file (or HF model directory) the Modelfile points FROM")
    p.add_argument("--chat-format", help="chat format to use instead of detecting it (forge formats)")
    p.add_argument("--system", help="SYSTEM prompt")
    p.add_argument("--param", action="append", type=_param, default=[], metavar="KEY=VALUE",
                   help="PARAMETER to set (repeatable; stop=... adds a stop string)")
    p.add_argument("--adapter", help="GGUF LoRA adapter to apply (ADAPTER)")
    p.add_argument("--max-length", type=int, help="training max length: num_ctx is at least this")
    p.add_argument("-o", "--output", metavar="PATH", help="write here (atomically) instead of printing")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..errors import ForgeError
    from ..modelfile import for_model
    from ..modelref import resolve

    ref = resolve(args.model)
    if ref.kind not in ("gguf", "hf_dir"):
        raise ForgeError(f"{args.model}: a Modelfile needs a local GGUF file or HF model directory ({ref.reason})",
                         "convert the model first (forge convert) or give its path")
    params: dict[str, object] = {}
    for key, value in args.param:
        if key == "stop":
            params.setdefault("stop", []).append(value)  # type: ignore[union-attr]
        else:
            params[key] = value
    out_dir = Path(args.output).resolve().parent if args.output else Path.cwd()
    mf, det = for_model(ref.value, chat_format=args.chat_format, system=args.system, params=params,
                        adapter=args.adapter, train_max_length=args.max_length, modelfile_dir=out_dir)
    text = mf.render()
    if args.output:
        mf.write(args.output)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
