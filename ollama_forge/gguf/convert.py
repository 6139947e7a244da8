"""Stream an HF model directory (config.json, *.safetensors, tokenizer files) into a GGUF file llama.cpp loads.

Tensor by tensor and chunk by chunk: each safetensors shard is memory-mapped, a tensor's rows are converted a few
megabytes at a time by worker threads (numpy releases the GIL) while the previous chunk is written, and the pages
just written are dropped from this process (``madvise``). Peak memory is a few chunks plus the largest tensor that
needs a whole-tensor transform (a Q/K projection), never the model: on a Qwen2.5-0.5B-shaped bf16 model (988 MB)
about 100 MB, and about 2.5x the time of ``cp`` + fsync of the same bytes (bench/convert.py).
bf16 -> f16 is exact bit arithmetic (numpy has no bfloat16, and its float32 -> float16 cast is scalar). The file is
written to a temporary name and renamed when complete. Everything that can fail on the inputs (architecture, files,
tokenizer, tensor names) fails before the output is created.
"""
from __future__ import annotations

import dataclasses
import json
import mmap
import os
import re
import struct
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from ollama_forge.atomic import atomic_path
from ollama_forge.errors import ForgeError, disk_space
from ollama_forge.events import Sink, choice, emit
from ollama_forge.gguf import archs
from ollama_forge.gguf.vocab import Vocab, read_vocab

OUTTYPES = ("f16", "bf16", "f32", "q8_0")
# general.file_type (llama_ftype): ALL_F32 0, MOSTLY_F16 1, MOSTLY_Q8_0 7, MOSTLY_BF16 32.
FILE_TYPE = {"f32": 0, "f16": 1, "q8_0": 7, "bf16": 32}
# Tensors the HF checkpoints carry that no GGUF model reads (llama.cpp's converter skips them too).
SKIP = re.compile(r"(\.rotary_emb\.inv_freq|\.attention\.masked_bias|\.attention\.bias)$")
# Rows converted per step (counted as float32). On the 0.5B bench, 8 MiB peaks at ~100 MB RSS where 16 MiB took
# ~135 MB, at the same speed: each numpy call still runs for milliseconds, so per-call overhead is noise.
CHUNK_BYTES = 8 << 20
F16_MAX = 65504.0


@dataclasses.dataclass
class ConvertConfig:
    outtype: str = dataclasses.field(default="f16", metadata={
        "help": "tensor type for 2-D weights: f16 (default, what llama-quantize expects), bf16, f32, q8_0; "
                "norms, biases and 1-D tensors are always f32"})
    name: str | None = dataclasses.field(default=None, metadata={
        "help": "general.name; default: the model directory's name"})
    chunk_bytes: int = dataclasses.field(default=CHUNK_BYTES, metadata={
        "help": "bytes of float32 converted per step (memory vs. per-call overhead)"})


@dataclasses.dataclass
class ConvertReport:
    output: Path
    architecture: str  # our table row name
    gguf_architecture: str
    outtype: str
    n_tensors: int
    bytes_in: int  # tensor bytes read from safetensors
    bytes_out: int  # size of the GGUF file
    seconds: float
    vocab_source: str
    n_tokens: int
    choices: list[str]


# ---------------------------------------------------------------------------------------------------------------
# safetensors, read lazily


@dataclasses.dataclass
class SourceTensor:
    name: str
    file: Path
    dtype: str  # safetensors dtype: F32, F16, BF16
    shape: tuple[int, ...]
    start: int  # absolute byte offsets in the file
    end: int


ST_DTYPES = {"F32": ("<f4", 4), "F16": ("<f2", 2), "BF16": ("<u2", 2)}


def _read_header(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                raise ForgeError(f"{path}: truncated safetensors file ({len(head)} bytes)", "re-download the weights")
            (n,) = struct.unpack("<Q", head)
            if n > 100 << 20:
                raise ForgeError(f"{path}: not a safetensors file (header length {n})", "re-download the weights")
            header = json.loads(f.read(n))
    except json.JSONDecodeError as e:
        raise ForgeError(f"{path}: safetensors header is not valid JSON ({e.msg})", "re-download the weights") from None
    header["__data_start__"] = 8 + n
    return header


def index_safetensors(model_dir: Path) -> list[SourceTensor]:
    """Every tensor of the checkpoint with where its bytes are; reads headers only."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        with open(index, encoding="utf-8") as f:
            weight_map = json.load(f).get("weight_map") or {}
        files = sorted({model_dir / v for v in weight_map.values()})
    elif (model_dir / "model.safetensors").is_file():
        files = [model_dir / "model.safetensors"]
    else:
        files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        other = [p.name for p in model_dir.glob("*.bin")] + [p.name for p in model_dir.glob("*.pt")]
        found = f" (found {', '.join(other[:3])})" if other else ""
        raise ForgeError(f"{model_dir}: no *.safetensors weights{found}",
                         "save the model with save_pretrained(safe_serialization=True)")
    out: list[SourceTensor] = []
    for path in files:
        if not path.is_file():
            raise ForgeError(f"{index}: lists {path.name}, which is missing", "re-download the weights")
        header = _read_header(path)
        start0, size = header.pop("__data_start__"), path.stat().st_size
        header.pop("__metadata__", None)
        for name, info in header.items():
            dtype = info.get("dtype")
            if dtype not in ST_DTYPES:
                raise ForgeError(f"{path}: tensor {name} is {dtype}; only F32, F16 and BF16 checkpoints convert",
                                 "dequantize the model first (load it in transformers and save in bf16)")
            a, b = info["data_offsets"]
            if start0 + b > size:
                raise ForgeError(f"{path}: tensor {name} runs past the end of the file (truncated download?)",
                                 "re-download the weights")
            out.append(SourceTensor(name, path, dtype, tuple(int(d) for d in info["shape"]), start0 + a, start0 + b))
    out.sort(key=lambda t: (str(t.file), t.start))  # file order: sequential reads
    return out


class _Mapped:
    """One read-only mmap per shard; pages already converted are dropped from this process's memory."""

    def __init__(self) -> None:
        self.maps: dict[Path, tuple[Any, mmap.mmap]] = {}
        self.page = mmap.PAGESIZE

    def view(self, t: SourceTensor, row_start: int, row_end: int):
        import numpy as np

        if t.file not in self.maps:
            f = open(t.file, "rb")
            self.maps[t.file] = (f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))
        mm = self.maps[t.file][1]
        np_dtype, size = ST_DTYPES[t.dtype]
        row = (size * _prod(t.shape[1:])) if len(t.shape) > 1 else size
        a, b = t.start + row_start * row, t.start + row_end * row
        arr = np.frombuffer(mm, dtype=np_dtype, count=(b - a) // size, offset=a)
        shape = ((row_end - row_start), *t.shape[1:]) if t.shape else ()
        return arr.reshape(shape), (a, b)

    def release(self, t: SourceTensor, span: tuple[int, int]) -> None:
        # MADV_DONTNEED on a read-only file mapping only unmaps the pages here; they stay in the page cache.
        mm = self.maps[t.file][1]
        a = (span[0] // self.page) * self.page
        b = min(((span[1] + self.page - 1) // self.page) * self.page, len(mm))
        if b > a and hasattr(mm, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
            mm.madvise(mmap.MADV_DONTNEED, a, b - a)

    def close(self) -> None:
        for f, mm in self.maps.values():
            try:
                mm.close()
            except BufferError:  # a numpy view still alive somewhere; the OS unmaps it at exit
                pass
            f.close()
        self.maps.clear()


def _prod(xs: tuple[int, ...]) -> int:
    n = 1
    for x in xs:
        n *= x
    return n


def _to_f32(raw, dtype: str):
    import numpy as np

    if dtype == "BF16":
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return raw.astype(np.float32, copy=False)


# ---------------------------------------------------------------------------------------------------------------
# transforms (named in archs.py rows) and extra tensors


@dataclasses.dataclass
class Ctx:
    config: dict[str, Any]
    arch: archs.Arch
    pool: Any = None  # ThreadPoolExecutor converting parts of a chunk at once
    workers: int = 1
    # HF tensor name -> function returning that tensor as float32 numpy, used instead of the checkpoint's bytes
    # (a LoRA merge done on the fly by `forge export`: the merged model is never written as safetensors).
    override: dict[str, Callable[[], Any]] = dataclasses.field(default_factory=dict)


def _permute(w, n_head: int):
    # (rows, ...) = (heads * head_dim, ...) -> rows reordered per head from [x0..x(d/2-1), y0..] to [x0 y0 x1 y1 ..]
    shape = w.shape
    return w.reshape(n_head, 2, shape[0] // n_head // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def _permute_q(w, ctx: Ctx):
    return _permute(w, int(ctx.config["num_attention_heads"]))


def _permute_k(w, ctx: Ctx):
    return _permute(w, archs.n_kv_heads(ctx.config))


def _norm_plus_one(w, ctx: Ctx):
    return w + 1.0


def _attn_scale_fold(w, ctx: Ctx):
    return w * archs.attention_scale_fold(ctx.arch, ctx.config)


TRANSFORMS: dict[str, Callable[[Any, Ctx], Any]] = {
    "permute_q": _permute_q,
    "permute_k": _permute_k,
    "norm_plus_one": _norm_plus_one,
    "attn_scale_fold": _attn_scale_fold,
}


def _rope_freqs_llama3(ctx: Ctx) -> Iterator[tuple[str, Any]]:
    """Llama 3.1 rope scaling as llama.cpp wants it: one factor per rotary frequency (rope_freqs.weight)."""
    import numpy as np

    r = archs.rope(ctx.config)
    if (r.get("rope_type") or "").lower() != "llama3":
        return
    base = float(r.get("rope_theta") or 10000.0)
    dim = archs.head_dim(ctx.config)
    factor = float(r.get("factor", 8.0))
    low, high = float(r.get("low_freq_factor", 1.0)), float(r.get("high_freq_factor", 4.0))
    old_ctx = float(r.get("original_max_position_embeddings", 8192))
    freqs = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    wavelen = 2 * np.pi / freqs
    smooth = (old_ctx / wavelen - low) / (high - low)
    out = np.where(wavelen < old_ctx / high, 1.0,
                   np.where(wavelen > old_ctx / low, factor, 1.0 / ((1 - smooth) / factor + smooth)))
    yield "rope_freqs.weight", out.astype(np.float32)


def _rope_factors_longrope(ctx: Ctx) -> Iterator[tuple[str, Any]]:
    import numpy as np

    r = archs.rope(ctx.config)
    if (r.get("rope_type") or "").lower() not in ("longrope", "su") or not r.get("long_factor"):
        return
    yield "rope_factors_long.weight", np.asarray(r["long_factor"], dtype=np.float32)
    yield "rope_factors_short.weight", np.asarray(r["short_factor"], dtype=np.float32)


EXTRA_TENSORS: dict[str, Callable[[Ctx], Iterator[tuple[str, Any]]]] = {
    "rope_freqs_llama3": _rope_freqs_llama3,
    "rope_factors_longrope": _rope_factors_longrope,
}


# ---------------------------------------------------------------------------------------------------------------
# the plan: every output tensor, its type and where its data comes from, decided before writing


@dataclasses.dataclass
class Planned:
    name: str  # GGUF name
    shape: tuple[int, ...]  # numpy (row-major) shape
    qtype: Any  # gguf.GGMLQuantizationType
    nbytes: int
    source: SourceTensor | None = None
    ops: tuple[str, ...] = ()
    data: Any = None  # generated tensors (rope factors)


def _out_type(gguf_name: str, shape: tuple[int, ...], outtype: str, notes: list[str]):
    import gguf

    Q = gguf.GGMLQuantizationType
    # llama.cpp's rule (prepare_tensors): 1-D tensors, norms and biases stay F32; llama.cpp expects norms in F32.
    if len(shape) < 2 or gguf_name.endswith("_norm.weight") or not gguf_name.endswith(".weight"):
        return Q.F32
    if outtype == "q8_0":
        if shape[-1] % 32:
            notes.append(f"{gguf_name}: F16 instead of Q8_0: row size {shape[-1]} not a multiple of 32")
            return Q.F16
        return Q.Q8_0
    return {"f16": Q.F16, "bf16": Q.BF16, "f32": Q.F32}[outtype]


def _nbytes(shape: tuple[int, ...], qtype) -> int:
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[qtype]
    return _prod(shape[:-1]) * (shape[-1] // block) * size if shape else size


def plan_tensors(tensors: list[SourceTensor], arch: archs.Arch, config: dict[str, Any], outtype: str,
                 where: Path) -> tuple[list[Planned], list[str]]:
    import gguf

    arch_enum = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch.gguf_arch)
    name_map = gguf.get_tensor_name_map(arch_enum, int(config["num_hidden_layers"]))
    ctx = Ctx(config, arch)
    notes: list[str] = []
    planned: list[Planned] = []
    for gen in arch.extra_tensors:
        for name, data in EXTRA_TENSORS[gen](ctx):
            planned.append(Planned(name, tuple(data.shape), gguf.GGMLQuantizationType.F32, data.nbytes, data=data))
    seen: dict[str, str] = {}
    for t in tensors:
        if SKIP.search(t.name):
            continue
        ops = tuple(archs.rules_for(arch, t.name))
        if "drop" in ops:
            notes.append(f"{t.name}: dropped (llama.cpp's {arch.gguf_arch} ties the output to token_embd)")
            continue
        new = name_map.get_name(t.name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise ForgeError(f"{where}: tensor {t.name} has no {arch.gguf_arch} GGUF name",
                             f"the {arch.name} architecture does not use it; is config.json's architecture right?")
        if new in seen:
            raise ForgeError(f"{where}: tensors {seen[new]} and {t.name} both map to {new}", "remove the duplicate")
        seen[new] = t.name
        for op in ops:
            if op not in TRANSFORMS:
                raise ForgeError(f"archs.py: unknown transform {op!r} for {t.name}", "fix the architecture table")
        qtype = _out_type(new, t.shape, outtype, notes)
        planned.append(Planned(new, t.shape, qtype, _nbytes(t.shape, qtype), source=t, ops=ops))
    names = {p.name for p in planned}
    if "token_embd.weight" not in names:
        raise ForgeError(f"{where}: no embedding tensor (model.embed_tokens.weight)", "is the checkpoint complete?")
    tied = config.get("tie_word_embeddings")
    if "output.weight" not in names and tied is False and arch.gguf_arch not in ("gemma2", "gemma3"):
        raise ForgeError(f"{where}: tie_word_embeddings is false but there is no lm_head.weight",
                         "the checkpoint is incomplete; re-save it")
    n_layers = int(config["num_hidden_layers"])
    blocks = {int(m.group(1)) for p in planned if (m := re.match(r"blk\.(\d+)\.", p.name))}
    if blocks != set(range(n_layers)):
        missing = sorted(set(range(n_layers)) - blocks)
        raise ForgeError(f"{where}: config.json says {n_layers} layers, the weights have layers "
                         f"{sorted(blocks)[:3]}...{'' if not missing else f' (missing {missing[:5]})'}",
                         "the config and the weights do not match")
    return planned, notes


# ---------------------------------------------------------------------------------------------------------------
# encoding f32 rows to the output type


def _overflow(where: str) -> ForgeError:
    return ForgeError(f"{where} has values beyond float16's range (|x| > 65504, or inf/nan)",
                      "convert with --outtype bf16 (or f32)")


_scratch = threading.local()  # per worker thread: reused temporaries (fresh 4 MB arrays cost their page faults)


def _scratch_array(name: str, n: int, dtype):
    import numpy as np

    a = getattr(_scratch, name, None)
    if a is None or a.size < n:
        a = np.empty(n, dtype)
        setattr(_scratch, name, a)
    return a[:n]


def _bf16_to_f16(raw, where: str):
    """bf16 bits -> float16, exactly as a correctly rounded cast would give.

    Every bf16 value in float16's normal range is exact in float16 (7 mantissa bits fit in 10), so the bits are
    re-biased (exponent -112) with integer arithmetic, in place; numpy's float32 -> float16 cast is scalar and took
    twice as long (6 ns/value). The few values below float16's normal range (|x| < 2**-14, ~0.3% of a std-0.02
    tensor) take numpy's rounded cast.
    """
    import numpy as np

    flat = raw.reshape(-1)
    n = flat.size
    out = np.bitwise_and(flat, 0x7FFF)  # |x| bits
    if n and int(out.max()) >= 143 << 7:  # exponent >= 2**16 (or inf/nan): no float16 holds it
        raise _overflow(where)
    tiny = np.less(out, 113 << 7, out=_scratch_array("tiny", n, np.bool_))
    np.subtract(out, 112 << 7, out=out)  # wraps for the tiny ones, which are redone below
    np.left_shift(out, 3, out=out)
    np.bitwise_or(out, np.bitwise_and(flat, 0x8000, out=_scratch_array("sign", n, np.uint16)), out=out)
    idx = np.flatnonzero(tiny)
    if idx.size:
        out[idx] = (flat[idx].astype(np.uint32) << 16).view(np.float32).astype(np.float16).view(np.uint16)
    return out.view(np.float16).reshape(raw.shape)


def _encode(x, qtype, where: str):
    """float32 rows -> the output type's bytes (numpy array)."""
    import gguf
    import numpy as np

    Q = gguf.GGMLQuantizationType
    if qtype == Q.F32:
        return np.ascontiguousarray(x, dtype=np.float32)
    if qtype == Q.F16:
        m = float(np.abs(x).max()) if x.size else 0.0
        if not m <= F16_MAX:
            raise _overflow(where)
        return x.astype(np.float16)
    if qtype in (Q.BF16, Q.Q8_0):
        return gguf.quants.quantize(np.ascontiguousarray(x, dtype=np.float32), qtype)
    raise AssertionError(qtype)


def _convert_rows(raw, dtype: str, qtype, where: str):
    """One block of source rows (numpy view of the mapping) -> output bytes. Runs in worker threads: numpy
    releases the GIL in these loops, so the two halves of a chunk convert at once."""
    import gguf
    import numpy as np

    Q = gguf.GGMLQuantizationType
    if (dtype, qtype) in (("F16", Q.F16), ("BF16", Q.BF16), ("F32", Q.F32)):
        return np.array(raw)  # same type: a copy, so the caller can drop the mapped pages
    if dtype == "BF16" and qtype == Q.F16:
        return _bf16_to_f16(raw, where)
    return _encode(_to_f32(raw, dtype), qtype, where)


class _Done:
    """A finished result with the Future interface (work done inline)."""

    def __init__(self, value: Any):
        self.value = value

    def result(self) -> Any:
        return self.value


@dataclasses.dataclass
class _Piece:
    """Rows [r0, r1) of one planned tensor (r0 = r1 = None: the whole tensor), being converted."""

    index: int
    planned: Planned
    r0: int | None = None
    r1: int | None = None
    last: bool = True  # the tensor's last piece: padding follows it
    parts: list = dataclasses.field(default_factory=list)  # Futures of numpy arrays, in file order
    span: tuple[int, int] | None = None  # mapped bytes to drop once written


def _piece_plan(planned: list[Planned], chunk_bytes: int, override: dict[str, Any]) -> Iterator[_Piece]:
    for i, p in enumerate(planned):
        t = p.source
        if p.data is not None or t is None or p.ops or len(t.shape) < 2 or t.name in override:
            yield _Piece(i, p)
            continue
        rows = t.shape[0]
        step = max(1, chunk_bytes // (4 * _prod(t.shape[1:])))
        for r0 in range(0, rows, step):
            yield _Piece(i, p, r0, min(rows, r0 + step), last=r0 + step >= rows)


def _whole_tensor(raw, dtype: str, ops: tuple[str, ...], ctx: Ctx, qtype, where: str):
    # Whole-tensor transforms (Q/K permutation, norm shifts): these tensors are at most hidden x hidden.
    x = _to_f32(raw, dtype)
    for op in ops:
        x = TRANSFORMS[op](x, ctx)
    return _encode(x, qtype, where)


def _whole_override(fn: Callable[[], Any], ops: tuple[str, ...], ctx: Ctx, qtype, where: str):
    x = fn()
    for op in ops:
        x = TRANSFORMS[op](x, ctx)
    return _encode(x, qtype, where)


def _start_piece(piece: _Piece, src: _Mapped, ctx: Ctx) -> _Piece:
    """Submit the conversion of one piece to the worker threads (views of the mapping are taken here)."""
    p, t = piece.planned, piece.planned.source
    run = ctx.pool.submit if ctx.pool is not None else (lambda fn, *a: _Done(fn(*a)))
    if p.data is not None:
        piece.parts = [_Done(_encode(p.data, p.qtype, p.name))]
        return piece
    assert t is not None
    where = f"{t.file.name}: tensor {t.name}"
    if t.name in ctx.override:
        piece.parts = [run(_whole_override, ctx.override[t.name], p.ops, ctx, p.qtype, where)]
        return piece
    if piece.r0 is None:
        raw, piece.span = src.view(t, 0, t.shape[0] if t.shape else 1)
        piece.parts = [run(_whole_tensor, raw, t.dtype, p.ops, ctx, p.qtype, where)]
        return piece
    r0, r1, n = piece.r0, piece.r1, max(1, ctx.workers)
    bounds = sorted({r0 + (r1 - r0) * i // n for i in range(n + 1)})
    views = [src.view(t, a, b) for a, b in zip(bounds, bounds[1:])]
    piece.parts = [run(_convert_rows, v, t.dtype, p.qtype, where) for v, _span in views]
    piece.span = (views[0][1][0], views[-1][1][1])
    return piece


LOOKAHEAD = 2  # pieces converting while one is written: overlaps the write with the next conversion


def _write_tensors(f, planned: list[Planned], src: _Mapped, ctx: Ctx, chunk_bytes: int, align: int,
                   sink: Sink | None) -> None:
    from collections import deque

    plan = _piece_plan(planned, chunk_bytes, ctx.override)
    pending: deque[_Piece] = deque()

    def fill() -> None:
        while len(pending) < LOOKAHEAD:
            piece = next(plan, None)
            if piece is None:
                return
            pending.append(_start_piece(piece, src, ctx))

    fill()
    written = 0
    while pending:
        piece = pending.popleft()
        fill()
        for part in piece.parts:
            out = part.result()
            out.tofile(f)
            written += out.nbytes
        piece.parts = []
        if piece.span is not None:
            src.release(piece.planned.source, piece.span)  # written: these pages are not read again
        if piece.last:
            p = piece.planned
            if written != p.nbytes:
                raise AssertionError(f"{p.name}: wrote {written} bytes, planned {p.nbytes}")
            f.write(b"\0" * (-written % align))
            written = 0
            emit(sink, "progress", "convert", p.name, done=piece.index + 1, total=len(planned))


# ---------------------------------------------------------------------------------------------------------------
# metadata


def _readme_front_matter(model_dir: Path) -> dict[str, Any]:
    readme = model_dir / "README.md"
    if not readme.is_file():
        return {}
    text = readme.read_text(encoding="utf-8", errors="replace")
    if not text.startswith("---"):
        return {}
    end = text.find("\n---", 3)
    if end < 0:
        return {}
    import yaml

    try:
        data = yaml.safe_load(text[3:end])
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


# generation_config.json -> the sampling defaults llama.cpp reads (general.sampling.*), as its converter writes them.
SAMPLING = {"temperature": "add_sampling_temp", "top_k": "add_sampling_top_k", "top_p": "add_sampling_top_p",
            "min_p": "add_sampling_min_p", "repetition_penalty": "add_sampling_penalty_repeat"}


def _generation_config(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "generation_config.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except json.JSONDecodeError:
        return {}  # not all models ship a valid one; it only carries defaults
    return data if isinstance(data, dict) else {}


def _model_name(cfg: ConvertConfig, model_dir: Path, arch: archs.Arch, vocab: Vocab, choices: list) -> str:
    name = cfg.name or model_dir.resolve().name
    low = name.lower()
    if arch.gguf_arch == "phi3" and vocab.rstrip_specials and "phi3" not in low and "phi-3" not in low:
        # llama.cpp strips the whitespace after Phi-3's chat tokens (as transformers does, rstrip=True) only when
        # general.name contains "phi3"/"phi-3" (llama-vocab.cpp); without it chat prompts tokenize differently.
        new = f"{name} (phi-3)"
        choices.append(("general.name", new, "llama.cpp applies Phi-3's rstrip on chat tokens only when the name "
                                             "contains 'phi-3', and this tokenizer's special tokens rstrip"))
        return new
    return name


def writer_class():
    """gguf.GGUFWriter whose metadata arrays pack in bulk: the stock one packs each of a real vocabulary's 150k
    tokens (and their types and merges) with its own struct call, about a second for a Qwen-size vocabulary.
    Output bytes are identical (tests/test_convert.py checks)."""
    import struct

    import gguf
    import numpy as np

    V = gguf.GGUFValueType

    class Writer(gguf.GGUFWriter):
        def _pack_val(self, val, vtype, add_vtype, sub_type=None):  # noqa: ANN001 - gguf's signature
            if vtype != V.ARRAY or not isinstance(val, (list, tuple)) or not val \
                    or self.endianess != gguf.GGUFEndian.LITTLE or sub_type is not None:
                return super()._pack_val(val, vtype, add_vtype, sub_type)
            kind = type(val[0])
            if not all(type(v) is kind for v in val):
                return super()._pack_val(val, vtype, add_vtype, sub_type)
            if kind is str:
                ltype = V.STRING
                body = b"".join(len(e).to_bytes(8, "little") + e for e in (v.encode("utf-8") for v in val))
            elif kind is int:
                ltype, body = V.INT32, np.asarray(val, dtype="<i4").tobytes()
            elif kind is float:
                ltype, body = V.FLOAT32, np.asarray(val, dtype="<f4").tobytes()
            else:
                return super()._pack_val(val, vtype, add_vtype, sub_type)
            head = struct.pack("<I", int(vtype)) if add_vtype else b""
            return head + struct.pack("<IQ", int(ltype), len(val)) + body

    return Writer


def _write_kv(w, arch: archs.Arch, config: dict[str, Any], hparams: list[tuple[str, str, Any]], vocab: Vocab,
              name: str, outtype: str, model_dir: Path, n_params: int) -> None:
    import gguf

    w.add_type("model")
    w.add_name(name)
    w.add_size_label(gguf.size_label(n_params, 0, 0, 0))
    front = _readme_front_matter(model_dir)
    if isinstance(front.get("license"), str):
        w.add_license(front["license"])
    bases = front.get("base_model")
    bases = [bases] if isinstance(bases, str) else [b for b in (bases or []) if isinstance(b, str)]
    if bases:
        w.add_base_model_count(len(bases))
        for i, b in enumerate(bases):
            w.add_base_model_name(i, b)
            if re.fullmatch(r"[\w.-]+/[\w.-]+", b):
                w.add_base_model_repo_url(i, f"https://huggingface.co/{b}")
    generation = _generation_config(model_dir)
    for key, adder in SAMPLING.items():
        value = generation.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            getattr(w, adder)(int(value) if key == "top_k" else float(value))
    w.add_file_type(FILE_TYPE[outtype])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for key, kind, value in hparams:
        if kind == "u32":
            w.add_uint32(key, int(value))
        elif kind == "f32":
            w.add_float32(key, float(value))
        elif kind == "str":
            w.add_string(key, str(value))
        elif kind == "bool_array":
            w.add_array(key, [bool(x) for x in value])
        else:
            raise AssertionError(kind)
    w.add_tokenizer_model(vocab.model)
    w.add_tokenizer_pre(vocab.pre)
    w.add_token_list(vocab.tokens)
    w.add_token_types(vocab.token_types)
    if vocab.scores is not None:
        w.add_token_scores(vocab.scores)
    if vocab.merges:
        w.add_token_merges(vocab.merges)
    if vocab.add_space_prefix is not None:
        w.add_add_space_prefix(vocab.add_space_prefix)
    adders = {"bos": w.add_bos_token_id, "eos": w.add_eos_token_id, "unk": w.add_unk_token_id,
              "pad": w.add_pad_token_id, "sep": w.add_sep_token_id, "mask": w.add_mask_token_id}
    for typ, tid in vocab.special_ids.items():
        adders[typ](tid)
    w.add_add_bos_token(vocab.add_bos)
    w.add_add_eos_token(vocab.add_eos)
    if vocab.chat_template is not None or vocab.named_templates:
        templates: Any = vocab.chat_template
        if vocab.named_templates:
            templates = ([{"name": "default", "template": vocab.chat_template}] if vocab.chat_template else []) + \
                [{"name": k, "template": t} for k, t in vocab.named_templates.items()]
        w.add_chat_template(templates)


# ---------------------------------------------------------------------------------------------------------------


def load_config(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "config.json"
    if not model_dir.is_dir():
        raise ForgeError(f"{model_dir}: no such directory", "pass a Hugging Face model directory")
    if not path.is_file():
        raise ForgeError(f"{model_dir}: no config.json", "pass a Hugging Face model directory (config.json, "
                         "*.safetensors, tokenizer files)")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ForgeError(f"{path}:{e.lineno}: not valid JSON: {e.msg}", "fix or re-download config.json") from None


def convert_hf_to_gguf(model_dir: str | os.PathLike, output: str | os.PathLike, config: ConvertConfig | None = None,
                       sink: Sink | None = None, *,
                       tensor_override: dict[str, Callable[[], Any]] | None = None) -> ConvertReport:
    """Convert ``model_dir`` to the GGUF file ``output`` (written to a temporary name, renamed when complete).

    ``tensor_override`` maps HF tensor names to functions that return the tensor (float32 numpy, same shape) to
    write instead of the checkpoint's: how ``forge export`` merges a LoRA adapter in the same streaming pass.
    """
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    cfg = config or ConvertConfig()
    t0 = time.perf_counter()
    model_dir, output = Path(model_dir), Path(output)
    if cfg.outtype not in OUTTYPES:
        raise ForgeError(f"--outtype {cfg.outtype!r} is not supported", f"choose one of {', '.join(OUTTYPES)}")
    raw_config = load_config(model_dir)
    hf_config = archs.flat_config(raw_config)
    arch = archs.lookup(hf_config, str(model_dir / "config.json"))
    archs.run_checks(arch, hf_config)
    hparams = archs.resolve_hparams(arch, hf_config, str(model_dir / "config.json"))
    emit(sink, "stage", "convert", f"{model_dir} -> {output} ({arch.name}, {cfg.outtype})")

    tensors = index_safetensors(model_dir)
    planned, notes = plan_tensors(tensors, arch, hf_config, cfg.outtype, model_dir)
    n_vocab = next(p.shape[0] for p in planned if p.name == "token_embd.weight")
    if hf_config.get("vocab_size") not in (None, n_vocab):
        notes.append(f"vocab size {n_vocab} from the embedding (config.json says {hf_config.get('vocab_size')})")
        hparams = [(k, kind, n_vocab if k.endswith(".vocab_size") else v) for k, kind, v in hparams]
    vocab = read_vocab(model_dir, hf_config, n_vocab)
    choices: list[tuple[str, Any, str]] = list(vocab.choices)
    name = _model_name(cfg, model_dir, arch, vocab, choices)
    if arch.gguf_arch in ("gemma2", "gemma3"):
        fold = archs.attention_scale_fold(arch, hf_config)
        if abs(fold - 1.0) > 1e-12:
            choices.append(("attention scale", f"queries x {fold:.6g}",
                            f"query_pre_attn_scalar {hf_config.get('query_pre_attn_scalar')} differs from the head "
                            "size llama.cpp divides by; folded into the query weights so scores match"))
    if hf_config.get("sliding_window") and arch.gguf_arch in ("llama", "qwen2") and \
            hf_config.get("use_sliding_window", True):
        choices.append(("sliding window", "none", f"llama.cpp's {arch.gguf_arch} has no sliding window; prompts "
                                                  f"longer than {hf_config['sliding_window']} tokens attend further"))
    for what, value, reason in choices:
        choice(what, value, reason, sink, "convert")
    for n in notes:
        choice("tensor", n.split(":", 1)[0], n.split(":", 1)[-1].strip(), sink, "convert")

    n_params = sum(_prod(p.shape) for p in planned if p.source is not None)
    src = _Mapped()
    # One worker per core, at most 4: conversion is memory-bound beyond that.
    workers = max(1, min(4, os.cpu_count() or 1))
    pool = ThreadPoolExecutor(max_workers=workers)
    ctx = Ctx(hf_config, arch, pool, workers, dict(tensor_override or {}))
    try:
        with disk_space(output, "the GGUF"), atomic_path(output) as tmp:
            w = writer_class()(tmp, arch.gguf_arch)
            _write_kv(w, arch, hf_config, hparams, vocab, name, cfg.outtype, model_dir, n_params)
            for p in planned:
                w.add_tensor_info(p.name, p.shape, np.dtype(np.float32), p.nbytes, raw_dtype=p.qtype)
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_ti_data_to_file()
            align = w.data_alignment
            w.close()
            with open(tmp, "r+b") as f:
                f.seek(0, os.SEEK_END)
                f.write(b"\0" * (-f.tell() % align))
                _write_tensors(f, planned, src, ctx, cfg.chunk_bytes, align, sink)
    finally:
        pool.shutdown(wait=True)
        src.close()
    seconds = time.perf_counter() - t0
    report = ConvertReport(
        output=output, architecture=arch.name, gguf_architecture=arch.gguf_arch, outtype=cfg.outtype,
        n_tensors=len(planned), bytes_in=sum(t.end - t.start for t in tensors), bytes_out=output.stat().st_size,
        seconds=seconds, vocab_source=vocab.source, n_tokens=len(vocab.tokens),
        choices=[f"{w_}={v}: {r}" for w_, v, r in choices] + notes)
    emit(sink, "metric", "convert", f"wrote {output} ({report.bytes_out / 1e6:.1f} MB) in {seconds:.1f}s",
         bytes_out=report.bytes_out, seconds=seconds, n_tensors=report.n_tensors)
    return report
