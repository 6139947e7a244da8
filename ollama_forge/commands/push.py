"""``forge push NAME [RUN_DIR | --gguf FILE --modelfile FILE]``: register a model with Ollama, then verify it."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

HELP = "register a model with Ollama (upload, create, verify)"
DESCRIPTION = (
    "Register a GGUF with Ollama under NAME: the GGUF is uploaded only if Ollama lacks it, the model is created "
    "from the run's Modelfile (TEMPLATE, stops, SYSTEM, PARAMETERs; written now if the run has none), and "
    "/api/show is checked to report the template, stops and quantization level sent. Pushing the same thing again "
    "uploads and creates nothing. Replacing a model forge did not make needs --force; a replaced model is first "
    "copied to NAME's tag + '-forge-backup' and `forge push --rollback NAME` restores it. Lineage (base, data, "
    "recipe, chat format, quantization, GGUF digest, tool versions) goes to RUN_DIR/lineage.json and to forge's "
    "record of pushed models (`forge models`). Ollama is found at --host, else OLLAMA_HOST, else 127.0.0.1:11434.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME", help="Ollama model name, e.g. my-assistant:v1 (Ollama's naming rules)")
    p.add_argument("run_dir", nargs="?", metavar="RUN_DIR",
                   help="run directory holding model-*.gguf (and Modelfile, written if missing)")
    p.add_argument("--gguf", metavar="FILE", help="GGUF to register (default: the run's, or the Modelfile's FROM)")
    p.add_argument("--modelfile", metavar="FILE", help="Modelfile whose TEMPLATE/SYSTEM/PARAMETERs to use")
    p.add_argument("--chat-format", metavar="NAME",
                   help="chat format when a Modelfile has to be written (default: detected from the GGUF)")
    p.add_argument("--system", help="SYSTEM prompt when a Modelfile has to be written")
    p.add_argument("--force", action="store_true",
                   help="replace NAME even if forge did not make it (it is backed up first)")
    p.add_argument("--rollback", action="store_true", help="restore the model the last push of NAME replaced")
    p.add_argument("--host", help="Ollama address (default: OLLAMA_HOST, else 127.0.0.1:11434)")
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="seconds of silence allowed per request (default 120)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


class Printer:
    """Renders push events on stderr: statuses and choices as lines, byte progress as one updating line."""

    def __init__(self, stream: Any = None, quiet: bool = False):
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.quiet = quiet
        self._last = 0.0
        self._open = False
        self._step: dict[str, int] = {}

    def __call__(self, event: Any) -> None:
        if event.kind == "progress":
            self._progress(event.message, int(event.data.get("done", 0)), int(event.data.get("total", 0) or 0))
            return
        if self.quiet and event.kind not in ("stage",):
            return
        self._end_line()
        print(event.message, file=self.stream, flush=True)

    def _progress(self, what: str, done: int, total: int) -> None:
        if self.quiet or total <= 0:
            return
        pct = int(100 * done / total)
        if self.tty:
            now = time.monotonic()
            if done < total and now - self._last < 0.1:
                return
            self._last = now
            self.stream.write(f"\r{what}: {pct:3d}% {done / 1e6:.1f}/{total / 1e6:.1f} MB")
            self._open = done < total
            if not self._open:
                self.stream.write("\n")
            self.stream.flush()
        else:
            step = pct // 25
            if step > self._step.get(what, -1) or done == total:
                if done == total and self._step.get(what) == 4:
                    return
                self._step[what] = 4 if done == total else step
                print(f"{what}: {pct}% of {total / 1e6:.1f} MB", file=self.stream, flush=True)

    def _end_line(self) -> None:
        if self._open:
            self.stream.write("\n")
            self._open = False


def run(args: argparse.Namespace) -> int:
    from ..errors import ForgeError
    from ..ollama import DEFAULT_TIMEOUT, push, rollback, spec_from

    timeout = args.timeout or DEFAULT_TIMEOUT
    printer = Printer(quiet=args.json)
    if args.rollback:
        if args.run_dir or args.gguf or args.modelfile:
            raise ForgeError("--rollback takes only NAME", f"run: forge push --rollback {args.name}")
        backup = rollback(args.name, host=args.host, timeout=timeout, sink=printer)
        if args.json:
            print(json.dumps({"name": args.name, "restored_from": backup}))
        else:
            print(f"ollama run {args.name}")
        return 0
    if args.run_dir is None and args.gguf is None and args.modelfile is None:
        raise ForgeError("forge push needs something to register",
                         f"forge push {args.name} RUN_DIR, or forge push {args.name} --gguf FILE [--modelfile FILE]")
    from ..ollama_names import parse as parse_name

    parse_name(args.name)  # an invalid name fails before anything is written (spec_from may write a Modelfile)
    spec = spec_from(args.run_dir, args.gguf, args.modelfile, chat_format=args.chat_format, system=args.system,
                     sink=printer)
    result = push(args.name, spec, host=args.host, force=args.force, timeout=timeout, sink=printer)
    if args.json:
        print(json.dumps({"name": result.name, "host": result.host, "uploaded_bytes": result.uploaded_bytes,
                          "created": result.created, "backup": result.backup, "gguf_digest": result.gguf_digest,
                          "manifest_digest": result.manifest_digest, "quant_type": result.quant_type,
                          "modelfile": str(result.modelfile or ""), "lineage": result.lineage}, indent=2))
        return 0
    sent = f"uploaded {result.uploaded_bytes / 1e6:.1f} MB" if result.uploaded_bytes else "uploaded nothing"
    done = "created" if result.created else "unchanged (Ollama already had exactly this model)"
    print(f"{result.name}: {sent}; {done}; verified template, stops and {result.quant_type} with /api/show",
          file=sys.stderr)
    if result.backup:
        print(f"the previous {result.name} is kept as {result.backup} (forge push --rollback {result.name})",
              file=sys.stderr)
    if result.modelfile:
        print(f"by hand: ollama create {result.name} -f {result.modelfile}", file=sys.stderr)
    print(f"ollama run {result.name}")
    return 0
