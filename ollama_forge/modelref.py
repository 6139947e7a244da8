"""One rule, shared by every command, for telling what a model reference names.

1. An existing path: a GGUF file (by its magic bytes) or a Hugging Face model directory (has ``config.json``).
2. An Ollama name: it has a tag (``name:tag``, the last ``:`` after the last ``/``), or the running Ollama knows it.
3. Otherwise a Hugging Face Hub id (``org/name`` or ``name``).
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Callable, Literal

from .errors import ForgeError

Kind = Literal["gguf", "hf_dir", "ollama", "hf_id"]

GGUF_MAGIC = b"GGUF"
_HF_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


@dataclasses.dataclass(frozen=True)
class ModelRef:
    kind: Kind
    value: str
    reason: str

    @property
    def path(self) -> Path:
        return Path(self.value)


def is_gguf_file(path: str | os.PathLike) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


def has_ollama_tag(ref: str) -> bool:
    colon, slash = ref.rfind(":"), ref.rfind("/")
    return colon > slash and colon != len(ref) - 1


def resolve(ref: str, ollama_knows: Callable[[str], bool] | None = None) -> ModelRef:
    """Classify ``ref``; ``ollama_knows(name)`` asks the running Ollama (skipped when None)."""
    if not ref or not ref.strip():
        raise ForgeError("model reference is empty", "give a GGUF file, an HF model directory, an Ollama name or an HF id")
    p = Path(ref).expanduser()
    if p.exists():
        if p.is_file():
            if is_gguf_file(p):
                return ModelRef("gguf", str(p), "existing file with GGUF magic")
            raise ForgeError(f"{p}: not a GGUF file (no GGUF magic bytes)",
                             "pass a .gguf model file, or an HF model directory holding config.json")
        if (p / "config.json").is_file():
            return ModelRef("hf_dir", str(p), "existing directory with config.json")
        raise ForgeError(f"{p}: directory has no config.json", "pass a Hugging Face model directory (config.json, "
                         "*.safetensors, tokenizer files) or a GGUF file")
    if has_ollama_tag(ref):
        return ModelRef("ollama", ref, "name has an Ollama tag")
    if ollama_knows is not None:
        try:
            known = ollama_knows(ref)
        except Exception:  # Ollama down or slow: fall through to the HF id rule.
            known = False
        if known:
            return ModelRef("ollama", ref, "the running Ollama knows this name")
    if looks_like_path(ref):
        raise ForgeError(f"{ref}: no such file or directory", "check the path")
    if not _HF_ID.match(ref):
        raise ForgeError(f"{ref!r} is not a path, an Ollama name or a Hugging Face id",
                         "use a local path, name:tag for Ollama, or org/name for the Hub")
    return ModelRef("hf_id", ref, "not a local path or an Ollama name: Hugging Face Hub id")


def looks_like_path(ref: str) -> bool:
    return ref.startswith((".", "/", "~")) or ref.endswith(".gguf") or os.sep + os.sep in ref or ref.count("/") > 1
