"""The stand-in's model store, laid out as Ollama lays out ~/.ollama/models.

    blobs/sha256-<hex>                                  content-addressed layers (GGUF, template, params, ...)
    manifests/<host>/<namespace>/<model>/<tag>          one JSON manifest per name (config + layers)

Blobs are written to a temporary name while hashed and renamed only when the digest checks out, so a dropped
upload leaves nothing behind that ``HEAD`` would report. Deleting or replacing a manifest prunes the layers no
other manifest references (Ollama's ``RemoveLayers``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any, Iterable

from . import names

DIGEST_RE = re.compile(r"^sha256[:-][0-9a-fA-F]{64}$")
MANIFEST_MEDIA = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_MEDIA = "application/vnd.docker.container.image.v1+json"
MEDIA = "application/vnd.ollama.image."


class DigestMismatch(Exception):
    pass


@dataclasses.dataclass
class Entry:
    """One registered name: its parts, manifest, and where the manifest lives."""

    name: names.Name
    manifest: dict[str, Any]
    path: Path
    raw: bytes

    @property
    def digest(self) -> str:
        """Bare hex sha256 of the manifest bytes: what /api/tags reports as ``digest``."""
        return hashlib.sha256(self.raw).hexdigest()

    @property
    def modified(self) -> float:
        return self.path.stat().st_mtime

    def layers(self, kind: str) -> list[dict[str, Any]]:
        return [la for la in self.manifest.get("layers", []) if la.get("mediaType") == MEDIA + kind]

    def layer(self, kind: str) -> dict[str, Any] | None:
        found = self.layers(kind)
        return found[0] if found else None

    @property
    def size(self) -> int:
        return sum(int(la["size"]) for la in self.manifest.get("layers", [])) + int(self.manifest["config"]["size"])


class Store:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.blobs = self.root / "blobs"
        self.manifests = self.root / "manifests"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.manifests.mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()

    # ---- blobs ----
    def blob_path(self, digest: str) -> Path:
        return self.blobs / digest.replace(":", "-", 1)

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def write_blob(self, expected: str, body: Iterable[bytes]) -> str:
        """Hash ``body`` while writing it; store it under its actual digest. Returns ``sha256:<hex>``.

        Raises ``DigestMismatch`` (nothing kept) when the computed digest differs from ``expected`` as given: the
        comparison is of strings, so an upper-case or ``sha256-`` form never matches, as in Ollama.
        """
        h = hashlib.sha256()
        fd, tmp = tempfile.mkstemp(prefix=".upload-", suffix=".partial", dir=self.blobs)
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in body:
                    h.update(chunk)
                    f.write(chunk)
            got = f"sha256:{h.hexdigest()}"
            if got != expected:
                raise DigestMismatch(f'digest mismatch, expected "{expected}", got "{got}"')
            os.replace(tmp, self.blob_path(got))
            return got
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def put_bytes(self, data: bytes, kind: str) -> dict[str, Any]:
        """Store ``data`` as a layer of media type ``kind`` (``template``, ``params``...); return its descriptor."""
        digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
        path = self.blob_path(digest)
        if not path.is_file():
            fd, tmp = tempfile.mkstemp(prefix=".layer-", suffix=".partial", dir=self.blobs)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        media = kind if "/" in kind else MEDIA + kind
        return {"mediaType": media, "digest": digest, "size": len(data)}

    def read_blob(self, digest: str) -> bytes:
        return self.blob_path(digest).read_bytes()

    def open_blob(self, digest: str) -> IO[bytes]:
        return open(self.blob_path(digest), "rb")

    # ---- manifests ----
    def _manifest_path(self, n: names.Name) -> Path:
        return self.manifests / n.host / n.namespace / n.model / n.tag

    def find(self, name: names.Name) -> Entry | None:
        """The manifest for ``name``, matched case-insensitively as Ollama does."""
        path = self._manifest_path(name)
        if not path.is_file():
            path = None
            want = [p.lower() for p in (name.host, name.namespace, name.model, name.tag)]
            for p in self.manifests.glob("*/*/*/*"):
                if [x.lower() for x in p.relative_to(self.manifests).parts] == want and p.is_file():
                    path = p
                    break
            if path is None:
                return None
        raw = path.read_bytes()
        host, ns, model, tag = path.relative_to(self.manifests).parts
        return Entry(names.Name(host, ns, model, tag), json.loads(raw), path, raw)

    def entries(self) -> list[Entry]:
        out = []
        for p in self.manifests.glob("*/*/*/*"):
            if p.is_file() and not p.name.startswith("."):
                host, ns, model, tag = p.relative_to(self.manifests).parts
                try:
                    raw = p.read_bytes()
                    out.append(Entry(names.Name(host, ns, model, tag), json.loads(raw), p, raw))
                except (OSError, json.JSONDecodeError):
                    continue
        return out

    def write_manifest(self, name: names.Name, config: dict[str, Any], layers: list[dict[str, Any]]) -> Entry:
        """Write (or replace) the manifest for ``name``; prune layers only the replaced manifest used."""
        with self.lock:
            old = self.find(name)
            target = old.name if old is not None else name  # an existing name keeps its case
            manifest = {"schemaVersion": 2, "mediaType": MANIFEST_MEDIA, "config": config, "layers": layers}
            raw = json.dumps(manifest, separators=(",", ":")).encode()
            path = self._manifest_path(target)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".manifest-", suffix=".partial", dir=path.parent)
            with os.fdopen(fd, "wb") as f:
                f.write(raw)
            os.replace(tmp, path)
            now = time.time()
            os.utime(path, (now, now))
            if old is not None:
                self._prune(old)
            return Entry(target, manifest, path, raw)

    def delete(self, entry: Entry) -> None:
        with self.lock:
            entry.path.unlink()
            for d in (entry.path.parent, entry.path.parent.parent, entry.path.parent.parent.parent):
                try:
                    d.rmdir()
                except OSError:
                    break
            self._prune(entry)

    def _prune(self, old: Entry) -> None:
        used = set()
        for e in self.entries():
            used.add(e.manifest["config"]["digest"])
            used.update(la["digest"] for la in e.manifest.get("layers", []))
        for desc in [old.manifest["config"], *old.manifest.get("layers", [])]:
            if desc["digest"] not in used:
                try:
                    self.blob_path(desc["digest"]).unlink()
                except FileNotFoundError:
                    pass
