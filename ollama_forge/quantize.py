"""Quantize a GGUF with llama.cpp (``llama_cpp.llama_model_quantize``), in a child process, with a report.

The work runs through ``llama_child`` so an abort inside llama.cpp is one clear line and its log stays in a file.
Before running, the tensor types llama.cpp will choose are computed here from its rules (llama-quant.cpp
``llama_tensor_get_type``: the mix per file type, then the row-size fallback), which gives the report (how many
tensors fell back to another type, and why) and, read back from the output with ``gguf``, a check that the file
holds what the rules say.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

from ollama_forge.atomic import atomic_path
from ollama_forge.errors import LOW_SPACE_BYTES, ForgeError, disk_space, free_bytes, out_of_space_error
from ollama_forge.events import Sink, choice, emit


@dataclasses.dataclass(frozen=True)
class QuantType:
    ftype: int  # llama_ftype (LLAMA_FTYPE_MOSTLY_*)
    base: str  # ggml type most weights get
    help: str


# llama_ftype ids from llama.h; quality figures are llama.cpp's quantize help (ppl increase vs F16, Llama-3-8B).
QUANT_TYPES: dict[str, QuantType] = {
    "Q4_K_M": QuantType(15, "Q4_K", "4-bit K-quant mix, attn_v/ffn_down partly Q6_K (+0.18 ppl) - the default"),
    "Q4_K_S": QuantType(14, "Q4_K", "4-bit K-quant, smaller mix (+0.27 ppl)"),
    "Q4_0": QuantType(2, "Q4_0", "legacy 4-bit, 32-blocks (+0.47 ppl)"),
    "Q5_K_M": QuantType(17, "Q5_K", "5-bit K-quant mix (+0.06 ppl)"),
    "Q6_K": QuantType(18, "Q6_K", "6-bit K-quant (+0.02 ppl)"),
    "Q8_0": QuantType(7, "Q8_0", "8-bit (+0.003 ppl)"),
}
DEFAULT_TYPE = "Q4_K_M"
# ggml block sizes (elements per block) for the types these mixes use.
BLOCK = {"Q4_0": 32, "Q4_1": 32, "Q5_0": 32, "Q5_1": 32, "Q8_0": 32, "Q4_K": 256, "Q5_K": 256, "Q6_K": 256,
         "F16": 1, "BF16": 1, "F32": 1}
FALLBACK = {"Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}  # tensor_type_fallback for 256-block types


@dataclasses.dataclass
class QuantizeConfig:
    type: str = dataclasses.field(default=DEFAULT_TYPE, metadata={"help": f"one of {', '.join(QUANT_TYPES)}"})
    nthread: int = dataclasses.field(default=0, metadata={"help": "threads for llama.cpp; 0 = all cores"})
    log_path: str | None = dataclasses.field(default=None, metadata={
        "help": "where llama.cpp's log goes; default: logs/<output name>.quantize.log beside the output"})
    timeout: float | None = dataclasses.field(default=None, metadata={"help": "seconds before giving up"})


@dataclasses.dataclass(frozen=True)
class TensorType:
    name: str
    ne0: int  # row length (ggml ne[0])
    source: str  # type in the input
    intended: str  # what the mix wants for it
    chosen: str  # after the row-size rule
    reason: str  # why chosen != intended ("" when equal)


@dataclasses.dataclass
class QuantizeReport:
    input: Path
    output: Path
    type: str
    bytes_in: int
    bytes_out: int
    seconds: float
    n_tensors: int
    fallbacks: list[str]  # "3 tensors: Q4_K -> Q5_0: row size 320 not a multiple of 256"
    types: dict[str, int]  # ggml type name -> tensor count in the output
    log_path: Path

    def summary(self) -> str:
        lines = [f"{self.input.name} ({self.bytes_in / 1e6:.1f} MB) -> {self.output.name} "
                 f"({self.bytes_out / 1e6:.1f} MB, {self.bytes_out / max(1, self.bytes_in):.2f}x) "
                 f"{self.type} in {self.seconds:.1f}s",
                 "tensor types: " + ", ".join(f"{k} {v}" for k, v in sorted(self.types.items()))]
        if self.fallbacks:
            lines += ["fell back to another type:"] + [f"  {f}" for f in self.fallbacks]
        else:
            lines.append("no tensor fell back to another type")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# llama.cpp's type rules, in Python


def _category(name: str) -> str:
    # tensor_get_category: order matters (attn_qkv before attn_v, exact names for output/token_embd)
    if name == "output.weight":
        return "output"
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    for key, cat in (("attn_qkv.weight", "attn_qkv"), ("attn_kv_b.weight", "attn_kv_b"), ("attn_v.weight", "attn_v"),
                     ("attn_k.weight", "attn_k"), ("attn_q.weight", "attn_q"), ("attn_output.weight", "attn_output"),
                     ("ffn_up", "ffn_up"), ("ffn_gate", "ffn_gate"), ("ffn_down", "ffn_down")):
        if key in name:
            return cat
    return "other"


def _use_more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _layer_key(name: str) -> tuple[int, str]:
    m = re.match(r"blk\.(\d+)\.", name)  # llama-model-loader weight_name_comparer: layer, then name
    return (int(m.group(1)) if m else -1, name)


def _n_dims(shape: list[int]) -> int:
    n = len(shape)
    while n > 1 and shape[n - 1] == 1:
        n -= 1
    return n


def plan_types(tensors: list[tuple[str, list[int], str]], qtype: str, n_layer: int, *,
               arch: str = "", n_head: int = 0, n_head_kv: int = 0) -> list[TensorType]:
    """The type llama.cpp gives each tensor for ``qtype``. ``tensors``: (name, ggml shape ne[], input type name)."""
    ftype = QUANT_TYPES[qtype]
    base = ftype.base
    ordered = sorted(tensors, key=lambda t: _layer_key(t[0]))
    cats = {name: _category(name) for name, _s, _t in ordered}
    n_attention_wv = sum(1 for c in cats.values() if c in ("attn_v", "attn_qkv", "attn_kv_b"))
    tied = "output.weight" not in cats
    # LLM_TYPE_70B bumps attn_v: llama with 80 layers and GQA, qwen2 with 80 layers.
    is_70b = n_layer == 80 and ((arch == "llama" and n_head != n_head_kv) or arch == "qwen2")
    i_attention_wv = i_ffn_down = 0
    out: list[TensorType] = []
    for name, shape, src in ordered:
        cat = cats[name]
        allowed = (_n_dims(shape) >= 2 and name.endswith("weight") and "_norm.weight" not in name
                   and "ffn_gate_inp.weight" not in name)
        if not allowed:
            out.append(TensorType(name, shape[0], src, src, src, ""))
            continue
        new = base
        ne0 = shape[0]
        if cat == "output" or (tied and cat == "token_embd"):
            if ne0 % BLOCK[new]:
                new = "Q8_0"
            elif new != "Q8_0":
                new = "Q6_K"
        elif cat == "token_embd":
            pass
        elif cat in ("attn_v", "attn_qkv", "attn_kv_b"):  # category_is_attn_v: catches attn_qkv too
            if qtype in ("Q4_K_M", "Q5_K_M") and _use_more_bits(i_attention_wv, n_attention_wv):
                new = "Q6_K"
            elif qtype == "Q4_K_S" and i_attention_wv < 4:
                new = "Q5_K"
            if is_70b and new in ("Q3_K", "Q4_K"):
                new = "Q5_K"
            i_attention_wv += 1
        elif cat == "ffn_down":
            i_layer = i_ffn_down
            if qtype == "Q4_K_M" and _use_more_bits(i_layer, n_layer):
                new = "Q6_K"
            elif qtype == "Q5_K_M" and _use_more_bits(i_layer, n_layer):
                new = "Q6_K"
            elif qtype == "Q4_K_S" and i_layer < n_layer // 8:
                new = "Q5_K"
            i_ffn_down += 1
        intended, reason = new, ""
        if cat == "output" or (tied and cat == "token_embd"):
            mix = "Q8_0" if base == "Q8_0" else "Q6_K"
            if new != mix:
                intended, reason = mix, f"row size {ne0} not a multiple of {BLOCK[mix]}"
        if ne0 % BLOCK[new]:  # tensor_type_fallback
            reason = f"row size {ne0} not a multiple of {BLOCK[new]}"
            fb = FALLBACK.get(new, new)
            if ne0 % BLOCK[fb]:
                if BLOCK[fb] != BLOCK[new]:
                    reason += f" nor {BLOCK[fb]}"
                fb = "F16"
            new = fb
        out.append(TensorType(name, ne0, src, intended, new, reason))
    return out


def fallback_groups(plan: list[TensorType]) -> list[tuple[str, str, str, list[str]]]:
    """(intended type, chosen type, why, tensor names) for the tensors whose rows did not fit the block size."""
    groups: dict[tuple[str, str, str], list[str]] = {}
    for t in plan:
        if t.chosen != t.intended:
            groups.setdefault((t.intended, t.chosen, t.reason), []).append(t.name)
    return [(a, b, why, names) for (a, b, why), names in sorted(groups.items(), key=lambda kv: -len(kv[1]))]


def fallback_lines(plan: list[TensorType]) -> list[str]:
    """Grouped: "3 tensors: Q4_K -> Q5_0: row size 320 not a multiple of 256 (blk.0.ffn_down.weight, ...)"."""
    lines = []
    for a, b, why, names in fallback_groups(plan):
        n = len(names)
        some = ", ".join(names[:3]) + (", ..." if n > 3 else "")
        lines.append(f"{n} tensor{'s' if n != 1 else ''}: {a} -> {b}: {why} ({some})")
    return lines


def read_tensor_types(path: str | os.PathLike) -> tuple[dict[str, Any], list[tuple[str, list[int], str]]]:
    """(metadata we need, [(tensor name, ggml shape, type name)]) of a GGUF file, read with ``gguf``."""
    import gguf

    try:
        r = gguf.GGUFReader(path)
    except (ValueError, OSError, KeyError, IndexError) as e:
        raise ForgeError(f"{path}: not a readable GGUF ({' '.join(str(e).split())[:160]})",
                         "re-create it with forge convert") from None

    def field(key: str) -> Any:
        f = r.get_field(key)
        return f.contents() if f is not None else None

    arch = field("general.architecture") or ""
    meta = {"arch": arch, "n_layer": int(field(f"{arch}.block_count") or 0),
            "n_head": int(field(f"{arch}.attention.head_count") or 0),
            "n_head_kv": int(field(f"{arch}.attention.head_count_kv") or field(f"{arch}.attention.head_count") or 0),
            "file_type": field("general.file_type")}
    tensors = [(t.name, [int(x) for x in t.shape], gguf.GGMLQuantizationType(t.tensor_type).name) for t in r.tensors]
    return meta, tensors


# ---------------------------------------------------------------------------------------------------------------


def default_output(inp: Path, qtype: str) -> Path:
    stem = re.sub(r"[-_.](f16|bf16|f32)$", "", inp.stem, flags=re.IGNORECASE)
    return inp.with_name(f"{stem}-{qtype.lower()}.gguf")


def _child_quantize(inp: str, out: str, ftype: int, nthread: int) -> dict[str, Any]:
    """Runs in the child process (llama_child)."""
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = nthread
    rc = llama_cpp.llama_model_quantize(inp.encode(), out.encode(), ctypes.byref(params))
    return {"rc": int(rc)}


def quantize_gguf(inp: str | os.PathLike, out: str | os.PathLike | None = None, config: QuantizeConfig | None = None,
                  sink: Sink | None = None) -> QuantizeReport:
    """Quantize ``inp`` (an F16/BF16/F32 GGUF) to ``out`` with llama.cpp; returns sizes, time and the fallbacks."""
    from ollama_forge.llama_child import run_in_child
    from ollama_forge.modelref import is_gguf_file

    cfg = config or QuantizeConfig()
    qtype = cfg.type.upper()
    if qtype not in QUANT_TYPES:
        raise ForgeError(f"--type {cfg.type}: not a supported quantization", f"choose one of {', '.join(QUANT_TYPES)}")
    inp = Path(inp)
    if not inp.is_file():
        raise ForgeError(f"{inp}: no such file", "pass the F16 GGUF written by forge convert")
    if not is_gguf_file(inp):
        raise ForgeError(f"{inp}: not a GGUF file (no GGUF magic bytes)", "pass the F16 GGUF written by forge convert")
    out = Path(out) if out is not None else default_output(inp, qtype)
    if out.resolve() == inp.resolve():
        raise ForgeError(f"{out}: output would overwrite the input", "choose another -o")
    log_path = Path(cfg.log_path) if cfg.log_path else out.parent / "logs" / f"{out.name}.quantize.log"

    meta, tensors = read_tensor_types(inp)
    already = sorted({t for _n, s, t in tensors if t not in ("F32", "F16", "BF16") and _n_dims(s) >= 2})
    if already:
        raise ForgeError(f"{inp}: already quantized ({', '.join(already)} tensors)",
                         "quantize the F16/BF16 GGUF instead; requantizing loses quality")
    plan = plan_types(tensors, qtype, meta["n_layer"], arch=meta["arch"], n_head=meta["n_head"],
                      n_head_kv=meta["n_head_kv"])
    fallbacks = fallback_lines(plan)
    for a, b, why, names in fallback_groups(plan):
        choice("tensor type", f"{b} instead of {a} for {len(names)} tensor(s)", why, sink, "quantize")
    emit(sink, "stage", "quantize", f"{inp} -> {out} ({qtype})", log=str(log_path))
    t0 = time.perf_counter()
    with disk_space(out, f"the {qtype} GGUF"), atomic_path(out) as tmp:
        result = run_in_child("ollama_forge.quantize:_child_quantize",
                              {"inp": str(inp), "out": str(tmp), "ftype": QUANT_TYPES[qtype].ftype,
                               "nthread": cfg.nthread}, log_path=log_path, what=f"quantize {inp.name}",
                              timeout=cfg.timeout)
        if result.get("rc") != 0 or not tmp.is_file():
            from ollama_forge.llama_child import log_tail

            free = free_bytes(tmp.parent)
            if free is not None and free < LOW_SPACE_BYTES:  # llama.cpp only logs "iostream error" for a full disk
                raise out_of_space_error(out, f"the {qtype} GGUF (llama.cpp log: {log_path})")
            raise ForgeError(f"quantize {inp.name}: llama.cpp failed (return code {result.get('rc')}): "
                             f"{log_tail(log_path) or 'no log output'}", f"full log: {log_path}")
    seconds = time.perf_counter() - t0
    _meta_out, got = read_tensor_types(out)
    got_types = {n: t for n, _s, t in got}
    wrong = [(t.name, t.chosen, got_types.get(t.name)) for t in plan if got_types.get(t.name) != t.chosen]
    for name, want, have in wrong[:5]:
        choice("tensor type", have, f"{name}: llama.cpp chose {have}, our copy of its rules said {want}", sink,
               "quantize")
    report = QuantizeReport(input=inp, output=out, type=qtype, bytes_in=inp.stat().st_size,
                            bytes_out=out.stat().st_size, seconds=seconds, n_tensors=len(got), fallbacks=fallbacks,
                            types=dict(Counter(got_types.values())), log_path=log_path)
    emit(sink, "metric", "quantize", report.summary().splitlines()[0], bytes_in=report.bytes_in,
         bytes_out=report.bytes_out, seconds=seconds, fallbacks=len(fallbacks))
    return report
