"""Chat with a GGUF in this process (llama-cpp-python), prompted exactly as the pushed Modelfile prompts Ollama.

The prompt is the registry chat format's rendering (``formats.render_prompt``: the Jinja side of a template pair the
parity tests prove byte-identical to the Go TEMPLATE), tokenized with special tokens parsed and BOS added when the
GGUF says so, as llama.cpp does under Ollama. Sampling starts from Ollama's defaults, then the format's PARAMETERs,
then the caller's options; generation ends at an end-of-generation token or a stop string (cut from the text), or
after ``num_predict`` tokens. The loop calls llama.cpp's sampler directly and decodes each token once (incremental
UTF-8), so it adds almost nothing to llama.cpp's own time (bench/chat.py measures it against the raw library).
"""

from __future__ import annotations

import codecs
import ctypes
import os
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from ..errors import ForgeError
from ..events import Sink, choice
from . import StopFilter
from . import ChatStats, ChatStream, Message

STAGE = "chat"
# Ollama's api.DefaultOptions (shared/reference/ollama.md §2): in-process chat samples as Ollama would.
OLLAMA_DEFAULTS: dict[str, Any] = {"temperature": 0.8, "top_k": 40, "top_p": 0.9, "min_p": 0.0, "typical_p": 1.0,
                                   "repeat_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0,
                                   "seed": -1, "num_predict": -1}
DEFAULT_CTX = 4096  # Ollama's default num_ctx without OLLAMA_CONTEXT_LENGTH; capped at the model's trained context


def amx_advertised() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return " amx_tile" in f.read()
    except OSError:
        return False


def choose_repack(repack: bool | None, sink: Sink | None = None) -> bool:
    """Whether llama.cpp may repack weights into its extra CPU buffer types (AMX / AVX-512 layouts).

    Off when the CPU advertises AMX: the native build then repacks quantized weights for AMX, and on VMs that
    advertise AMX without enabling its register state (this project's CI machines) the first matmul dies with
    SIGILL (seen for Q4_K and Q8_0). Repacking changes speed, never results. FORGE_LLAMA_REPACK=0/1 overrides.
    """
    env = os.environ.get("FORGE_LLAMA_REPACK")
    if repack is None and env in ("0", "1"):
        repack, why = env == "1", f"FORGE_LLAMA_REPACK={env}"
    elif repack is None:
        repack = not amx_advertised()
        why = ("the CPU advertises AMX, and VMs that do not enable it crash on AMX-repacked weights"
               if not repack else "no AMX advertised")
    else:
        why = "asked for"
    choice("llama_repack", repack, why, sink=sink, stage=STAGE)
    return repack


def load_llama(path: str, *, repack: bool, **kwargs: Any) -> Any:
    """``llama_cpp.Llama(path, **kwargs)`` with llama.cpp's extra buffer types on or off (``use_extra_bufts``, which
    llama-cpp-python does not expose: its default model params are swapped for the duration of the load)."""
    import llama_cpp
    import llama_cpp.llama_cpp as C

    if repack:
        return llama_cpp.Llama(model_path=path, **kwargs)
    real = C.llama_model_default_params

    def params():
        p = real()
        p.use_extra_bufts = False
        return p

    with _LOAD_LOCK:
        C.llama_model_default_params = params
        try:
            return llama_cpp.Llama(model_path=path, **kwargs)
        finally:
            C.llama_model_default_params = real


_LOAD_LOCK = threading.Lock()


def default_threads() -> int:
    n = os.cpu_count() or 1
    # llama.cpp runs best on physical cores; above 4 logical CPUs assume 2-way SMT (llama-cpp-python's own rule),
    # below that (small VMs, CI runners) every CPU is a core and halving would waste half the machine.
    return n if n <= 4 else n // 2


class LlamaCppBackend:
    name = "llamacpp"

    def __init__(self, gguf: str, *, chat_format: str | None = None, system: str | None = None,
                 n_ctx: int | None = None, n_threads: int | None = None, repack: bool | None = None,
                 sink: Sink | None = None):
        from .. import formats

        self.model = gguf
        path = Path(gguf)
        if not path.is_file():
            raise ForgeError(f"{gguf}: no such GGUF file", "check the path")
        meta = _metadata(path)  # a truncated or foreign file fails here, before any choice is announced
        threads = n_threads or default_threads()
        if n_threads is None:
            choice("n_threads", threads, f"{os.cpu_count()} CPUs; physical-core estimate", sink=sink, stage=STAGE)
        arch = meta.get("general.architecture", "")
        trained = int(meta.get(f"{arch}.context_length", 0) or 0)
        ctx = n_ctx or (min(DEFAULT_CTX, trained) if trained else DEFAULT_CTX)
        # Prompt batches get the same threads as decoding (llama-cpp-python would use every CPU for them).
        self.llm = load_llama(str(path), repack=choose_repack(repack, sink), n_ctx=ctx, n_threads=threads,
                              n_threads_batch=threads, verbose=False)
        self.n_ctx = ctx
        self.lock = threading.Lock()
        eos_id = self.llm.token_eos()
        self.eos_text = _piece(self.llm, eos_id).decode("utf-8", "replace") if eos_id >= 0 else None
        det = formats.detect(meta.get("tokenizer.chat_template"), chat_format, sink=sink)
        if det.format is None:
            raise ForgeError(f"{gguf}: chat format unknown ({det.reason})",
                             f"pass --format NAME (one of: {', '.join(formats.names())})")
        self.format = det.format
        self.bound = det.format.bind(add_bos=False, eos_token=self.eos_text)
        self.stops = [s for s in self.bound.stop if s]
        self.system = system if system is not None else self.format.default_system
        self.defaults = {**OLLAMA_DEFAULTS, **dict(self.format.parameters)}

    def close(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            with self.lock:
                llm.close()  # free now: llama-cpp-python's finalizer can fail at interpreter exit

    def prompt(self, messages: list[Message]) -> str:
        from .. import formats

        return formats.render_prompt(self.format, messages, system=self.system, eos_token=self.eos_text)

    def tokens(self, messages: list[Message]) -> list[int]:
        ids = self.llm.tokenize(self.prompt(messages).encode("utf-8"), add_bos=True, special=True)
        if len(ids) >= self.n_ctx:
            raise ForgeError(f"the conversation is {len(ids)} tokens, the context holds {self.n_ctx}",
                             "start over (/reset in forge chat) or pass a larger --ctx")
        return ids

    def chat(self, messages: list[Message], options: dict[str, Any] | None = None) -> ChatStream:
        t0 = time.perf_counter()
        opts = {**self.defaults, **(options or {})}
        stops = list(self.stops) + [s for s in opts.pop("stop", None) or [] if s not in self.stops]
        return ChatStream(self._run(self.tokens(messages), opts, stops, t0))

    def _run(self, prompt: list[int], opts: dict[str, Any], stops: list[str], t0: float) -> Iterator[Any]:
        import llama_cpp

        llm = self.llm
        limit = int(opts.get("num_predict", -1))
        room = self.n_ctx - len(prompt)
        limit = room if limit < 0 else min(limit, room)
        seed = int(opts.get("seed", -1))
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        vocab = llm._model.vocab  # noqa: SLF001 - the vocab handle llama_vocab_is_eog needs
        buf = ctypes.create_string_buffer(256)
        filt = StopFilter(stops)
        count = 0
        first = None
        reason = "length"
        with self.lock:
            llm.set_seed(seed if seed >= 0 else int(time.time_ns() & 0x7FFFFFFF))
            gen = llm.generate(prompt, top_k=int(opts["top_k"]), top_p=float(opts["top_p"]),
                               min_p=float(opts["min_p"]), typical_p=float(opts["typical_p"]),
                               temp=float(opts["temperature"]), repeat_penalty=float(opts["repeat_penalty"]),
                               frequency_penalty=float(opts["frequency_penalty"]),
                               presence_penalty=float(opts["presence_penalty"]), reset=True)
            try:
                while count < limit:
                    tok = next(gen)
                    count += 1
                    if first is None:
                        first = time.perf_counter()
                    if llama_cpp.llama_vocab_is_eog(vocab, tok):
                        reason = "stop"
                        break
                    n = llama_cpp.llama_token_to_piece(vocab, tok, buf, len(buf), 0, True)
                    raw = buf.raw[:n] if n >= 0 else _piece(llm, tok)
                    out = filt.feed(decoder.decode(raw))
                    if out:
                        yield out
                    if filt.hit:
                        reason = "stop"
                        break
            finally:
                gen.close()
        tail = filt.flush(decoder.decode(b"", final=True) if reason == "length" else "")
        if tail:
            yield tail
        end = time.perf_counter()
        first = first or end
        yield ChatStats(backend=self.name, model=self.model, prompt_tokens=len(prompt), tokens=count,
                        tokens_per_s=(count - 1) / (end - first) if count > 1 and end > first else 0.0,
                        ttft_s=first - t0,
                        total_s=end - t0, done_reason=reason)


def _metadata(path: Path) -> dict[str, Any]:
    """The GGUF's scalar and string KV pairs (arrays skipped): what picking n_ctx and the chat format needs."""
    from gguf import GGUFReader, GGUFValueType

    out = {}
    try:
        reader = GGUFReader(str(path), "r")
    except Exception as e:  # truncated, or GGUF magic on something else: gguf raises ValueError/IndexError/...
        raise ForgeError(f"{path}: cannot read GGUF metadata ({' '.join(str(e).split())[:120]})",
                         "pass a complete .gguf file (re-create it with forge convert)") from None
    for name, field in reader.fields.items():
        if field.types and field.types[0] != GGUFValueType.ARRAY:
            out[name] = field.contents()
    return out


def _piece(llm: Any, tok: int) -> bytes:
    """A token's bytes with special tokens rendered, for any length (the buffer grows when llama.cpp asks)."""
    import llama_cpp

    size = 64
    while True:
        buf = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_token_to_piece(llm._model.vocab, tok, buf, size, 0, True)  # noqa: SLF001
        if n >= 0:
            return buf.raw[:n]
        size = -n


