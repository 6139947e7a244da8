"""Chat backends behind one protocol: a stream of text pieces, then the stats of the answer.

- ``ollama``: a model registered in Ollama, through ``/api/chat`` with the official client (backends/ollama.py).
- ``llamacpp``: a GGUF run in this process by llama-cpp-python, prompted with the registry's chat format and
  stopped on its stop strings, exactly as the pushed Modelfile makes Ollama do (backends/llamacpp.py).

``open_backend(model, "auto")`` picks: an Ollama name goes to Ollama; a GGUF file runs in-process; a run directory
goes to Ollama when Ollama answers and has the model pushed from that run, else its GGUF runs in-process. Each
choice is logged with its reason.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Iterator, Protocol

from ..errors import ForgeError
from ..events import Sink, choice

Message = dict[str, Any]
BACKENDS = ("auto", "ollama", "llamacpp")


@dataclasses.dataclass
class ChatStats:
    """What one answer cost. ``tokens_per_s`` is the decode rate: Ollama's eval_count / eval_duration, or in-process
    the tokens after the first over the time after the first."""

    backend: str
    model: str
    prompt_tokens: int
    tokens: int
    tokens_per_s: float
    ttft_s: float  # request sent -> first token (in-process) or first streamed piece (Ollama)
    total_s: float
    done_reason: str  # "stop" (end of turn or stop string) | "length" (num_predict reached) | ...

    def summary(self) -> str:
        return (f"{self.tokens} tokens, {self.tokens_per_s:.1f} tok/s, first token {self.ttft_s:.2f} s, "
                f"{self.done_reason}")


class ChatStream:
    """Iterate for text pieces; ``stats`` is set once the iteration ends. ``text()`` drains and joins."""

    def __init__(self, gen: Iterator[Any]):
        self._gen = gen
        self.stats: ChatStats | None = None
        self.pieces: list[str] = []

    def __iter__(self) -> "ChatStream":
        return self

    def __next__(self) -> str:
        while True:
            item = next(self._gen)  # StopIteration ends the stream
            if isinstance(item, ChatStats):
                self.stats = item
                continue
            self.pieces.append(item)
            return item

    def text(self) -> str:
        for _ in self:
            pass
        return "".join(self.pieces)

    def close(self) -> None:
        close = getattr(self._gen, "close", None)
        if close:
            close()


class StopFilter:
    """Generated text streamed out as it comes, cut at the first stop string, with any tail that could still grow
    into a stop string held back until it cannot (so a stop split across tokens never leaks out)."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.pending = ""
        self.hit = False  # a stop string was found: ``pending`` holds the text before it

    def feed(self, text: str) -> str:
        """Add newly decoded text; return what can be shown now."""
        self.pending += text
        if not self.stops:
            out, self.pending = self.pending, ""
            return out
        hit = min((i for i in (self.pending.find(s) for s in self.stops) if i >= 0), default=-1)
        if hit >= 0:
            self.pending, self.hit = self.pending[:hit], True
            return ""
        cut = len(self.pending) - _held(self.pending, self.stops)
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out

    def flush(self, text: str = "") -> str:
        """Generation ended: what was held back (plus ``text``) is answer text."""
        out, self.pending = self.pending + text, ""
        return out


def _held(text: str, stops: list[str]) -> int:
    """How many trailing characters could still become a stop string (held back until they can't)."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best


class ChatBackend(Protocol):
    name: str  # "ollama" | "llamacpp"
    model: str  # what the user named (Ollama name or GGUF path)

    def chat(self, messages: list[Message], options: dict[str, Any] | None = None) -> ChatStream:
        """Answer the conversation; the stream yields text pieces as they are generated."""
        ...

    def close(self) -> None: ...


def run_dir_target(path: Path) -> tuple[str | None, Path | None]:
    """For a run directory: (the Ollama name it was pushed as, the GGUF it serves), each None when unknown."""
    name = None
    lineage = path / "lineage.json"
    if lineage.is_file():
        try:
            name = json.loads(lineage.read_text(encoding="utf-8")).get("ollama_name")
        except (OSError, json.JSONDecodeError):
            name = None
    gguf = None
    modelfile = path / "Modelfile"
    if modelfile.is_file():
        from ..modelfile import read

        mf = read(modelfile)
        cand = (path / mf.from_).resolve() if mf.from_ and not Path(mf.from_).is_absolute() else Path(mf.from_ or "")
        if cand.is_file():
            gguf = cand
    if gguf is None:
        ggufs = sorted(path.glob("*.gguf"), key=lambda p: (not p.name.startswith("model-q"), p.name))
        gguf = ggufs[0] if ggufs else None
    return name, gguf


def open_backend(model: str, backend: str = "auto", *, host: str | None = None, chat_format: str | None = None,
                 system: str | None = None, n_ctx: int | None = None, timeout: float | None = None,
                 sink: Sink | None = None) -> ChatBackend:
    """A backend for ``model`` (Ollama name, GGUF file or run directory); see the module docstring for ``auto``."""
    if backend not in BACKENDS:
        raise ForgeError(f"unknown backend {backend!r}", f"use one of: {', '.join(BACKENDS)}")
    from ..ollama import Ollama

    p = Path(model).expanduser()
    if p.is_dir() and not (p / "config.json").is_file():
        name, gguf = run_dir_target(p)
        if backend in ("auto", "ollama") and name:
            with Ollama(host, timeout=5.0) as conn:
                if (backend == "ollama" or conn.answers()) and conn.show(name) is not None:
                    choice("backend", "ollama", f"{model} was pushed as {name} and Ollama has it", sink=sink)
                    return _ollama(name, host, system, timeout)
        if backend == "ollama":
            raise ForgeError(f"{model}: this run has not been pushed to Ollama",
                             f"run `forge push NAME {model}` first, or use --backend llamacpp")
        if gguf is None:
            raise ForgeError(f"{model}: no GGUF in this run directory", "run the export stage first (forge run)")
        choice("backend", "llamacpp", f"{model}: Ollama {'lacks it' if name else 'was never pushed to'}; "
                                      f"running {gguf.name} in-process", sink=sink)
        return _llamacpp(str(gguf), chat_format, system, n_ctx, sink)

    from ..modelref import resolve

    def ollama_knows(ref: str) -> bool:
        with Ollama(host, timeout=3.0) as conn:
            return conn.show(ref) is not None

    ref = resolve(model, ollama_knows if backend != "llamacpp" else None)
    if ref.kind == "gguf":
        if backend == "ollama":
            raise ForgeError(f"{model} is a GGUF file, not an Ollama model",
                             f"register it first (forge push NAME --gguf {model} ...) or use --backend llamacpp")
        b = _llamacpp(ref.value, chat_format, system, n_ctx, sink)  # a broken file fails before the choice is told
        choice("backend", "llamacpp", f"{model} is a GGUF file ({ref.reason})", sink=sink)
        return b
    if ref.kind == "ollama" or backend == "ollama":
        if backend == "llamacpp":
            raise ForgeError(f"{model} is an Ollama model name; the in-process backend needs a GGUF file",
                             "pass the GGUF path (or the run directory), or use --backend ollama")
        choice("backend", "ollama", f"{model}: {ref.reason}", sink=sink)
        return _ollama(model, host, system, timeout)
    raise ForgeError(f"{model}: not a GGUF file, a run directory or a model Ollama has ({ref.reason})",
                     "convert it first (forge convert / forge run), push it (forge push), or check the name with "
                     "`forge models`")


def _ollama(name: str, host: str | None, system: str | None, timeout: float | None) -> ChatBackend:
    from .ollama import OllamaBackend

    return OllamaBackend(name, host=host, system=system, timeout=timeout)


def _llamacpp(path: str, chat_format: str | None, system: str | None, n_ctx: int | None,
              sink: Sink | None) -> ChatBackend:
    from .llamacpp import LlamaCppBackend

    return LlamaCppBackend(path, chat_format=chat_format, system=system, n_ctx=n_ctx, sink=sink)
