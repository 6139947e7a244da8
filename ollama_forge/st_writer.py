"""Stream tensors into a .safetensors file one at a time (safetensors' own ``save_file`` needs them all in memory).

The header (names, dtypes, shapes, offsets) is computed from a plan before any data is written, then each tensor's
bytes are appended as it is produced, so peak memory is one tensor, not one shard.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any, BinaryIO

# torch dtype name -> (safetensors dtype, bytes per element)
DTYPES = {"float32": ("F32", 4), "float16": ("F16", 2), "bfloat16": ("BF16", 2), "int64": ("I64", 8),
          "int32": ("I32", 4), "int8": ("I8", 1), "uint8": ("U8", 1), "bool": ("BOOL", 1)}


def dtype_name(t: Any) -> str:
    return str(t.dtype).removeprefix("torch.")


class StreamingWriter:
    """``plan`` is [(name, torch dtype name, shape)] in file order; then ``write(name, tensor)`` in that order."""

    def __init__(self, path: str | Path, plan: list[tuple[str, str, tuple[int, ...]]], metadata: dict[str, str] | None = None):
        self.path = Path(path)
        self.order = [p[0] for p in plan]
        header: dict[str, Any] = {"__metadata__": metadata or {"format": "pt"}}
        offset = 0
        self.sizes: dict[str, int] = {}
        for name, dt, shape in plan:
            st, size = DTYPES[dt]
            n = size
            for s in shape:
                n *= s
            header[name] = {"dtype": st, "shape": list(shape), "data_offsets": [offset, offset + n]}
            self.sizes[name] = n
            offset += n
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned, as safetensors writes it
        self.f: BinaryIO = open(self.path, "wb")
        self.f.write(struct.pack("<Q", len(raw)))
        self.f.write(raw)
        self.i = 0

    def write(self, name: str, tensor: Any) -> None:
        import torch

        if self.i >= len(self.order) or self.order[self.i] != name:
            raise RuntimeError(f"tensor {name!r} written out of plan order")  # a bug in the caller
        t = tensor.detach().contiguous().cpu()
        data = t.reshape(-1).view(torch.uint8).numpy().data if t.numel() else b""  # a view: no copy
        if len(data) != self.sizes[name]:
            raise RuntimeError(f"tensor {name!r}: {len(data)} bytes, planned {self.sizes[name]}")
        self.f.write(data)
        self.i += 1

    def copy_raw(self, name: str, src: str | Path, start: int, end: int, chunk: int = 16 << 20) -> None:
        """Copy a tensor's bytes unchanged from another file, a chunk at a time (an embedding can be 270 MB)."""
        if self.i >= len(self.order) or self.order[self.i] != name:
            raise RuntimeError(f"tensor {name!r} written out of plan order")
        if end - start != self.sizes[name]:
            raise RuntimeError(f"tensor {name!r}: {end - start} bytes, planned {self.sizes[name]}")
        with open(src, "rb") as f:
            f.seek(start)
            left = end - start
            while left:
                block = f.read(min(chunk, left))
                if not block:
                    raise RuntimeError(f"{src}: ends inside tensor {name!r}")
                self.f.write(block)
                left -= len(block)
        self.i += 1

    def close(self) -> None:
        if self.i != len(self.order):
            self.f.close()
            raise RuntimeError(f"{self.path}: {len(self.order) - self.i} planned tensors never written")
        self.f.flush()
        self.f.close()
