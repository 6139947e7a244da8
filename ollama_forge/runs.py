"""The run directory: where every artifact of one recipe lives, and the stage manifest that makes reruns cheap.

Layout (paths are properties of ``RunDir`` so no module spells them twice)::

    run/recipe.resolved.yaml   every default filled in
    run/manifest.json          per stage: input hashes, config hash, output hashes, finished time
    run/metrics.jsonl          training metrics, one JSON object per line
    run/checkpoints/step-N/    atomic training checkpoints
    run/adapter/               final LoRA adapter (SFT, then DPO on top when configured)
    run/merged/                merged full-precision HF model (kept only if asked)
    run/model-f16.gguf, run/model-q4_k_m.gguf, run/Modelfile
    run/logs/                  llama.cpp logs and other captured output

A stage is *current* when the manifest holds an entry whose input and config hashes equal the ones computed now
and whose outputs still exist with the recorded hashes. Manifest writes are atomic, and a stage's entry is written
only after its outputs were renamed into place, so a crash at any point never makes an unfinished stage look done.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Iterable

from .atomic import write_text
from .testhooks import kill_point


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def hash_path(path: str | os.PathLike) -> str:
    """sha256 of a file, or of a directory's relative names and file hashes (sorted; hidden .partial names skipped)."""
    p = Path(path)
    if p.is_file():
        return sha256_file(p)
    h = hashlib.sha256()
    for f in sorted(q for q in p.rglob("*") if q.is_file() and not q.name.endswith(".partial")):
        h.update(str(f.relative_to(p)).encode() + b"\0" + sha256_file(f).encode() + b"\n")
    return h.hexdigest()


def hash_config(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


class RunDir:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def ensure(self) -> "RunDir":
        self.root.mkdir(parents=True, exist_ok=True)
        return self

    # --- paths ---
    @property
    def recipe(self) -> Path:
        return self.root / "recipe.resolved.yaml"

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def adapter(self) -> Path:
        return self.root / "adapter"

    @property
    def sft_adapter(self) -> Path:
        return self.root / "adapter-sft"

    @property
    def merged(self) -> Path:
        return self.root / "merged"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def modelfile(self) -> Path:
        return self.root / "Modelfile"

    def gguf(self, kind: str) -> Path:
        return self.root / f"model-{kind.lower()}.gguf"

    # --- manifest ---
    def manifest(self) -> dict[str, Any]:
        try:
            return json.loads(self.manifest_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {"stages": {}}

    def record(self, stage: str, inputs: dict[str, str], config: Any, outputs: Iterable[str | os.PathLike]) -> None:
        """Record a finished stage: call only after its outputs are in place."""
        kill_point("manifest", f"{self.root.name}/{stage}")
        m = self.manifest()
        m.setdefault("stages", {})[stage] = {
            "inputs": inputs,
            "config": hash_config(config),
            "outputs": {str(Path(o).relative_to(self.root) if Path(o).is_relative_to(self.root) else o):
                        hash_path(o) for o in outputs},
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        self.ensure()
        write_text(self.manifest_path, json.dumps(m, indent=2, sort_keys=True) + "\n")

    def is_current(self, stage: str, inputs: dict[str, str], config: Any) -> bool:
        entry = self.manifest().get("stages", {}).get(stage)
        if not entry or entry["inputs"] != inputs or entry["config"] != hash_config(config):
            return False
        dropped = set(entry.get("dropped", []))
        for rel, digest in entry["outputs"].items():
            if rel in dropped:  # removed on purpose by the retention policy: what was made from it still stands
                continue
            p = Path(rel) if Path(rel).is_absolute() else self.root / rel
            if not p.exists() or hash_path(p) != digest:
                return False
        return True

    def mark_dropped(self, stage: str, paths: Iterable[str | os.PathLike]) -> None:
        """Note that outputs of a finished stage were deleted on purpose (retention policy): the stage stays current
        and its recorded hashes stay the inputs of later stages."""
        m = self.manifest()
        entry = m.get("stages", {}).get(stage)
        if not entry:
            return
        rels = [str(Path(p).relative_to(self.root)) if Path(p).is_relative_to(self.root) else str(p) for p in paths]
        entry["dropped"] = sorted(set(entry.get("dropped", [])) | set(rels))
        write_text(self.manifest_path, json.dumps(m, indent=2, sort_keys=True) + "\n")

    def forget(self, stage: str) -> None:
        m = self.manifest()
        if m.get("stages", {}).pop(stage, None) is not None:
            write_text(self.manifest_path, json.dumps(m, indent=2, sort_keys=True) + "\n")
