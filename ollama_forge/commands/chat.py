"""``forge chat MODEL [--vs MODEL2]``: a REPL that streams one model's answers, or two side by side."""

from __future__ import annotations

import argparse
import json
import queue
import shutil
import sys
import threading
from typing import Any, TextIO

HELP = "chat with one model, or two side by side"
DESCRIPTION = (
    "Chat with a model: an Ollama name (through Ollama's /api/chat), a GGUF file (in-process llama.cpp with the "
    "registry chat format and stops, as the pushed Modelfile makes Ollama do), or a run directory (Ollama if it "
    "answers and has the run's pushed model, else the run's GGUF in-process). --vs streams a second model side by "
    "side; each keeps its own history. In the REPL: /reset clears the history, /system TEXT sets the system "
    "prompt, /bye quits. -p PROMPT (repeatable) answers those prompts as one conversation and exits; without a "
    "terminal, prompts are read one per line from stdin.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..backends import BACKENDS

    p.add_argument("model", metavar="MODEL", help="Ollama model name, GGUF file or run directory")
    p.add_argument("--vs", metavar="MODEL2", help="a second model to answer the same prompts, side by side")
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="auto (default): Ollama for Ollama names and pushed runs, in-process llama.cpp for GGUFs")
    p.add_argument("--format", "--chat-format", dest="chat_format", metavar="NAME",
                   help="chat format for a GGUF run in-process (default: detected from its chat template)")
    p.add_argument("--system", help="system prompt (in-process: replaces the format's default)")
    p.add_argument("-p", "--prompt", action="append", metavar="TEXT", help="answer this prompt and exit (repeatable)")
    p.add_argument("--temperature", type=float, help="sampling temperature (0: greedy)")
    p.add_argument("--num-predict", type=int, metavar="N", help="stop after N tokens")
    p.add_argument("--seed", type=int, help="sampling seed")
    p.add_argument("--ctx", type=int, metavar="N", help="context length for in-process models (default 4096)")
    p.add_argument("--host", help="Ollama address (default: OLLAMA_HOST, else 127.0.0.1:11434)")
    p.add_argument("--no-stats", action="store_true", help="do not print tokens, tokens/s and time to first token")
    p.add_argument("--json", action="store_true", help="one JSON line per answer (model, text, stats)")


def _options(args: argparse.Namespace) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    if args.temperature is not None:
        opts["temperature"] = args.temperature
    if args.num_predict is not None:
        opts["num_predict"] = args.num_predict
    if args.seed is not None:
        opts["seed"] = args.seed
    return opts


def _prompts(args: argparse.Namespace, out: TextIO) -> Any:
    """Prompts from -p, else an interactive REPL, else stdin lines."""
    if args.prompt:
        yield from args.prompt
        return
    interactive = sys.stdin.isatty()
    while True:
        try:
            line = input(">>> " if interactive else "")
        except EOFError:
            if interactive:
                out.write("\n")
            return
        if line.strip():
            yield line


def run(args: argparse.Namespace) -> int:
    from ..backends import open_backend

    out = sys.stdout
    backends = []
    try:
        for model in [args.model] + ([args.vs] if args.vs else []):
            backends.append(open_backend(model, args.backend, host=args.host, chat_format=args.chat_format,
                                         system=args.system, n_ctx=args.ctx))
        histories: list[list[dict[str, Any]]] = [[] for _ in backends]
        system: list[dict[str, Any]] = [{"role": "system", "content": args.system}] if args.system else []
        opts = _options(args)
        for prompt in _prompts(args, out):
            cmd = prompt.strip()
            if cmd in ("/bye", "/exit", "/quit"):
                break
            if cmd == "/reset":
                histories = [[] for _ in backends]
                print("(history cleared)", file=sys.stderr)
                continue
            if cmd.startswith("/system"):
                text = cmd[len("/system"):].strip()
                system = [{"role": "system", "content": text}] if text else []
                print(f"(system prompt {'set' if text else 'cleared'})", file=sys.stderr)
                continue
            if cmd.startswith("/"):
                print("commands: /reset, /system TEXT, /bye", file=sys.stderr)
                continue
            for h in histories:
                h.append({"role": "user", "content": prompt})
            convs = [system + h for h in histories]
            if len(backends) == 1:
                answers = [_single(backends[0], convs[0], opts, out, args)]
            else:
                answers = _side_by_side(backends, convs, opts, out, args)
            for h, (text, _) in zip(histories, answers):
                h.append({"role": "assistant", "content": text})
    finally:
        for b in backends:
            b.close()
    return 0


def _stats_line(stats: Any) -> str:
    return f"[{stats.summary()}]" if stats is not None else "[no stats]"


def _single(backend: Any, conv: list[dict[str, Any]], opts: dict[str, Any], out: TextIO,
            args: argparse.Namespace) -> tuple[str, Any]:
    stream = backend.chat(conv, opts)
    if args.json:
        text = stream.text()
        out.write(json.dumps({"model": backend.model, "text": text, "stats": _stats_dict(stream.stats)}) + "\n")
        out.flush()
        return text, stream.stats
    for piece in stream:
        out.write(piece)
        out.flush()
    out.write("\n")
    if not args.no_stats:
        print(_stats_line(stream.stats), file=sys.stderr)
    out.flush()
    return "".join(stream.pieces), stream.stats


def _stats_dict(stats: Any) -> dict[str, Any] | None:
    import dataclasses

    return dataclasses.asdict(stats) if stats is not None else None


def _side_by_side(backends: list[Any], convs: list[list[dict[str, Any]]], opts: dict[str, Any], out: TextIO,
                  args: argparse.Namespace) -> list[tuple[str, Any]]:
    """Run both models at once; print their answers in two columns as the rows complete."""
    from ..errors import ForgeError

    events: queue.Queue = queue.Queue()
    streams: list[Any] = [None, None]

    def work(i: int) -> None:
        try:
            streams[i] = backends[i].chat(convs[i], opts)
            for piece in streams[i]:
                events.put((i, "piece", piece))
            events.put((i, "done", None))
        except ForgeError as e:
            events.put((i, "error", e))
        except Exception as e:  # noqa: BLE001 - shown in its column; the other model keeps going
            events.put((i, "error", ForgeError(f"{type(e).__name__}: {e}")))

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(2)]
    for t in threads:
        t.start()
    texts = ["", ""]
    errors: list[ForgeError | None] = [None, None]
    finished = [False, False]
    cols = Columns([b.model for b in backends], out, live=out.isatty() and not args.json)
    while not all(finished):
        i, kind, value = events.get()
        if kind == "piece":
            texts[i] += value
        else:
            finished[i] = True
            if kind == "error":
                errors[i] = value
        if not args.json:
            cols.update(texts, finished)
    for t in threads:
        t.join()
    stats = [s.stats if s is not None else None for s in streams]
    if args.json:
        for b, text, st, err in zip(backends, texts, stats, errors):
            out.write(json.dumps({"model": b.model, "text": text, "stats": _stats_dict(st),
                                  "error": err.one_line() if err else None}) + "\n")
        out.flush()
    else:
        cols.finish(texts, [err.one_line() if err else (None if args.no_stats else _stats_line(st))
                            for st, err in zip(stats, errors)])
    return list(zip(texts, stats))


class Columns:
    """Two columns printed row by row: a row is printed once both columns have moved past it (or ended).

    On a terminal the row still being written is redrawn in place (carriage return), so both answers visibly
    stream; elsewhere only finished rows are printed, which keeps logs and pipes clean.
    """

    def __init__(self, titles: list[str], out: TextIO, live: bool):
        self.out = out
        self.live = live
        width = shutil.get_terminal_size((100, 24)).columns
        self.w = max(20, (width - 3) // 2)
        self.printed = 0
        self._partial = False
        self._row([t[-self.w:] for t in titles])
        self._row(["─" * self.w, "─" * self.w])

    def _wrap(self, text: str) -> list[str]:
        lines: list[str] = []
        for para in text.split("\n"):
            if not para:
                lines.append("")
                continue
            lines.extend(para[i:i + self.w] for i in range(0, len(para), self.w))
        return lines

    def _row(self, cells: list[str]) -> None:
        self._clear()
        self.out.write(f"{cells[0]:<{self.w}} │ {cells[1]}".rstrip() + "\n")

    def _clear(self) -> None:
        if self._partial:
            self.out.write("\r\x1b[K")
            self._partial = False

    def update(self, texts: list[str], finished: list[bool]) -> None:
        wrapped = [self._wrap(t) for t in texts]
        # A column's last line may still grow unless that column is finished.
        stable = [len(w) if done else max(0, len(w) - 1) for w, done in zip(wrapped, finished)]
        ready = min(s if not done else 10 ** 9 for s, done in zip(stable, finished))
        ready = min(ready, max(len(w) for w in wrapped))
        while self.printed < ready:
            r = self.printed
            self._row([w[r] if r < len(w) else "" for w in wrapped])
            self.printed += 1
        if self.live:
            r = self.printed
            cells = [w[r] if r < len(w) else "" for w in wrapped]
            self._clear()
            self.out.write(f"{cells[0]:<{self.w}} │ {cells[1]}".rstrip())
            self._partial = True
        self.out.flush()

    def finish(self, texts: list[str], footers: list[str | None]) -> None:
        self.update(texts, [True, True])
        self._clear()
        if any(footers):
            wrapped = [self._wrap(f or "") for f in footers]
            for r in range(max(len(w) for w in wrapped)):
                self._row([w[r] if r < len(w) else "" for w in wrapped])
        self.out.write("\n")
        self.out.flush()
