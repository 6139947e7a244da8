"""Generation for the stand-in: llama.cpp (llama-cpp-python) on the registered GGUF blob, options as Ollama takes them.

Ollama's option handling, mirrored: defaults (api.DefaultOptions) <- the model's stored parameters <- the request's
``options``; unknown keys are ignored, a value of the wrong type is an error (``option "stop" must be of type
array``). Generation ends at an end-of-generation token or a stop string (done_reason "stop", the stop string cut
from the text) or after ``num_predict`` tokens (done_reason "length"). Pieces are rendered with special tokens
shown, as Ollama's runner does, so a stop list holding ``<|im_start|>`` stops on it.
"""

from __future__ import annotations

import codecs
import dataclasses
import threading
import time
from typing import Any, Iterator

# api.DefaultOptions in Ollama (reference §2). num_ctx: 4096 when OLLAMA_CONTEXT_LENGTH is unset (docs say 2048 for
# older versions); capped at the model's trained context below.
DEFAULTS: dict[str, Any] = {
    "num_keep": 4, "seed": -1, "num_predict": -1, "top_k": 40, "top_p": 0.9, "min_p": 0.0, "typical_p": 1.0,
    "repeat_last_n": 64, "temperature": 0.8, "repeat_penalty": 1.0, "presence_penalty": 0.0,
    "frequency_penalty": 0.0, "stop": [], "num_ctx": 4096, "num_batch": 512, "num_gpu": -1, "main_gpu": 0,
    "use_mmap": True, "num_thread": 0,
}
INTS = {"num_keep", "seed", "num_predict", "top_k", "repeat_last_n", "num_ctx", "num_batch", "num_gpu", "main_gpu",
        "num_thread", "draft_num_predict"}
FLOATS = {"top_p", "min_p", "typical_p", "temperature", "repeat_penalty", "presence_penalty", "frequency_penalty"}
BOOLS = {"use_mmap"}
LISTS = {"stop"}


class OptionError(ValueError):
    pass


def merge_options(model_params: dict[str, Any], request: dict[str, Any] | None) -> dict[str, Any]:
    """Options as Ollama's ``FromMap`` builds them: unknown keys dropped, JSON types checked."""
    opts = dict(DEFAULTS)
    for source in (model_params or {}, request or {}):
        for k, v in source.items():
            if v is None:
                continue
            if k in INTS or k in FLOATS:
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise OptionError(f'option "{k}" must be of type {"integer" if k in INTS else "float"}')
                opts[k] = int(v) if k in INTS else float(v)
            elif k in BOOLS:
                if not isinstance(v, bool):
                    raise OptionError(f'option "{k}" must be of type boolean')
                opts[k] = v
            elif k in LISTS:
                if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
                    raise OptionError(f'option "{k}" must be of type array')
                opts[k] = list(v)
            # anything else: Ollama logs "invalid option provided" and ignores it
    return opts


@dataclasses.dataclass
class Loaded:
    llm: Any
    path: str
    n_ctx: int
    load_seconds: float
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)


class Engine:
    """Loaded llama.cpp models, keyed by (blob path, n_ctx). One generation per model at a time."""

    def __init__(self) -> None:
        self._models: dict[tuple[str, int], Loaded] = {}
        self._lock = threading.Lock()

    def load(self, path: str, n_ctx: int, n_threads: int | None = None) -> tuple[Loaded, float]:
        """The loaded model and the seconds spent loading it now (0 when it was already loaded)."""
        key = (path, n_ctx)
        with self._lock:
            if key in self._models:
                return self._models[key], 0.0
            t = time.perf_counter()
            threads = {"n_threads": n_threads, "n_threads_batch": n_threads} if n_threads else {}
            llm = _llama(path, n_ctx=n_ctx, verbose=False, **threads)
            loaded = Loaded(llm, path, n_ctx, time.perf_counter() - t)
            self._models[key] = loaded
            return loaded, loaded.load_seconds

    def unload(self, path: str) -> None:
        with self._lock:
            for key in [k for k in self._models if k[0] == path]:
                loaded = self._models.pop(key)
                with loaded.lock:
                    loaded.llm.close()

    def close_all(self) -> None:
        """Free every model now (llama-cpp-python's own finalizer can fail at interpreter exit)."""
        with self._lock:
            for loaded in self._models.values():
                with loaded.lock:
                    loaded.llm.close()
            self._models.clear()

    def loaded_paths(self) -> set[str]:
        with self._lock:
            return {k[0] for k in self._models}


def _llama(path: str, **kwargs: Any) -> Any:
    """Load as forge's in-process backend does: llama.cpp's repacking buffer types off when the CPU advertises AMX
    (VMs that advertise it without enabling it die with SIGILL on AMX-repacked quantized weights). Speed only."""
    from ollama_forge.backends.llamacpp import amx_advertised, load_llama

    return load_llama(path, repack=not amx_advertised(), **kwargs)


@dataclasses.dataclass
class Result:
    """Filled in while generating; complete once the piece iterator is exhausted."""

    prompt_tokens: int = 0
    eval_count: int = 0
    done_reason: str = "stop"
    prompt_seconds: float = 0.0
    eval_seconds: float = 0.0
    tokens: list[int] = dataclasses.field(default_factory=list)


def tokenize(llm: Any, prompt: str) -> list[int]:
    # special=True: control tokens written in the template (<|im_start|>) become their ids, as in Ollama.
    return llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)


def generate(loaded: Loaded, prompt_tokens: list[int], opts: dict[str, Any], result: Result) -> Iterator[str]:
    """Yield text pieces; ``result`` holds counts, durations and the done reason when the iterator ends."""
    import llama_cpp

    llm = loaded.llm
    stops = [s for s in opts.get("stop") or [] if s]
    limit = int(opts.get("num_predict", -1))
    result.prompt_tokens = len(prompt_tokens)
    if limit < 0 or len(prompt_tokens) + limit > loaded.n_ctx:
        limit = loaded.n_ctx - len(prompt_tokens)  # -1 (forever) and -2 (fill): until the context is full
    seed = int(opts.get("seed", -1))
    llm.set_seed(seed if seed >= 0 else int(time.time_ns() & 0x7FFFFFFF))
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    vocab = llm._model.vocab  # noqa: SLF001 - llama-cpp-python exposes the vocab handle only here
    pending = ""  # text held back because it could be the start of a stop string
    t0 = time.perf_counter()
    first = None
    result.done_reason = "length"
    with loaded.lock:
        gen = llm.generate(
            prompt_tokens, top_k=int(opts["top_k"]), top_p=float(opts["top_p"]), min_p=float(opts["min_p"]),
            typical_p=float(opts["typical_p"]), temp=float(opts["temperature"]),
            repeat_penalty=float(opts["repeat_penalty"]), frequency_penalty=float(opts["frequency_penalty"]),
            presence_penalty=float(opts["presence_penalty"]), reset=True)
        try:
            while result.eval_count < limit:
                tok = next(gen)
                if first is None:
                    first = time.perf_counter()
                result.eval_count += 1
                if llama_cpp.llama_vocab_is_eog(vocab, tok):
                    result.done_reason = "stop"
                    break
                result.tokens.append(tok)
                pending += decoder.decode(piece(vocab, tok))
                cut = _find_stop(pending, stops)
                if cut is not None:
                    pending = pending[:cut]
                    result.done_reason = "stop"
                    break
                keep = _partial_stop(pending, stops)
                out, pending = pending[: len(pending) - keep], pending[len(pending) - keep:]
                if out:
                    yield out
        finally:
            gen.close()
    if result.done_reason == "length":
        pending += decoder.decode(b"", final=True)
    if pending:
        yield pending
    end = time.perf_counter()
    first = first or end
    result.prompt_seconds = first - t0
    result.eval_seconds = end - first


def piece(vocab: Any, tok: int) -> bytes:
    """The token's bytes with special tokens rendered (llama_token_to_piece; grows the buffer when needed)."""
    import ctypes

    import llama_cpp

    size = 64
    while True:
        buf = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_token_to_piece(vocab, tok, buf, size, 0, True)
        if n >= 0:
            return buf.raw[:n]
        size = -n


def _find_stop(text: str, stops: list[str]) -> int | None:
    hits = [text.find(s) for s in stops if s in text]
    return min(hits) if hits else None


def _partial_stop(text: str, stops: list[str]) -> int:
    """Length of the longest tail of ``text`` that is a proper prefix of some stop string."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best
