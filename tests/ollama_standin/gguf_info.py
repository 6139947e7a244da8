"""What Ollama reads out of a registered GGUF: details (family, parameter size, quantization), model_info, tensors.

Read with the ``gguf`` package's reader (the file is memory-mapped; only the header is touched unless ``verbose``
asks for whole arrays). Formatting follows Ollama: ``format.HumanNumber`` for the parameter count and the
``general.file_type`` name, where 0 (F32) and absent both read as "unknown".
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path
from typing import Any

GGUF_MAGIC = b"GGUF"

# general.file_type -> Ollama's FileType name (fs/ggml). 0 is F32 but Ollama treats a zero file_type as unset.
FILE_TYPES = {
    1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M",
    13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS",
    21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S",
    29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 38: "MXFP4",
}


def human_number(n: int) -> str:
    """Ollama's format.HumanNumber: 494032768 -> "494.03M", 135000000 -> "135M", 7000000000 -> "7B"."""
    if n >= 1_000_000_000:
        x = n / 1_000_000_000
        return f"{x:.0f}B" if x == math.floor(x) else f"{x:.1f}B"
    if n >= 1_000_000:
        x = n / 1_000_000
        return f"{x:.0f}M" if x == math.floor(x) else f"{x:.2f}M"
    if n >= 1_000:
        return f"{n / 1000:.0f}K"
    return str(n)


def is_gguf(path: str | Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


@dataclasses.dataclass
class GGUFInfo:
    architecture: str
    kind: str  # general.type: "model" or "adapter"
    file_type: str
    parameter_count: int
    context_length: int
    kv: dict[str, Any]  # scalars and strings as values; arrays as ("array", length) markers
    tensors: list[dict[str, Any]]
    path: Path

    @property
    def parameter_size(self) -> str:
        return human_number(self.parameter_count)

    def model_info(self, verbose: bool = False) -> dict[str, Any]:
        """Every KV pair except general.name and tokenizer.chat_template, plus general.parameter_count.

        Without ``verbose`` a non-empty array reads as null (Ollama's loader keeps no array values); an empty one
        stays ``[]``.
        """
        out: dict[str, Any] = {}
        full = _arrays(str(self.path)) if verbose else {}
        for k, v in self.kv.items():
            if k in ("general.name", "tokenizer.chat_template"):
                continue
            if isinstance(v, _Array):
                out[k] = full.get(k) if verbose else ([] if v.length == 0 else None)
            else:
                out[k] = v
        out["general.parameter_count"] = self.parameter_count
        return dict(sorted(out.items()))


@dataclasses.dataclass(frozen=True)
class _Array:
    length: int


def _field_value(field: Any) -> Any:
    from gguf import GGUFValueType

    if not field.types:
        return None
    if field.types[0] == GGUFValueType.ARRAY:
        return _Array(len(field.data))
    return field.contents()


@functools.lru_cache(maxsize=32)
def read(path: str) -> GGUFInfo:
    """Header facts of one GGUF (cached per path: blobs are content-addressed, so a path never changes)."""
    from gguf import GGUFReader

    reader = GGUFReader(path, "r")
    kv: dict[str, Any] = {}
    for name, field in reader.fields.items():
        if name.startswith("GGUF."):  # the reader's own header fields (version, counts), not KV pairs
            continue
        kv[name] = _field_value(field)
    arch = str(kv.get("general.architecture") or "")
    ft = kv.get("general.file_type")
    tensors = [{"name": t.name, "type": t.tensor_type.name, "shape": [int(d) for d in t.shape]}
               for t in reader.tensors]
    count = sum(int(t.n_elements) for t in reader.tensors)
    return GGUFInfo(
        architecture=arch,
        kind=str(kv.get("general.type") or "model"),
        file_type=FILE_TYPES.get(int(ft), "unknown") if isinstance(ft, int) and ft > 0 else "unknown",
        parameter_count=count,
        context_length=int(kv.get(f"{arch}.context_length") or 0),
        kv=kv,
        tensors=tensors,
        path=Path(path),
    )


@functools.lru_cache(maxsize=4)
def _arrays(path: str) -> dict[str, Any]:
    from gguf import GGUFReader, GGUFValueType

    reader = GGUFReader(path, "r")
    return {name: f.contents() for name, f in reader.fields.items()
            if f.types and f.types[0] == GGUFValueType.ARRAY}
