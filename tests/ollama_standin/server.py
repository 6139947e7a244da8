"""An Ollama stand-in: real HTTP on 127.0.0.1, answering as Ollama does (shared/reference/ollama.md is the truth).

Routes, status codes and messages follow Ollama's server/routes.go and create.go; chat and generate run llama.cpp on
the registered GGUF blob, with the prompt rendered from the *registered* TEMPLATE by the Go reference renderer
(tests/gotemplate) and only the registered parameters (plus the request's options) applied. Nothing here looks at
forge's chat-format registry, so a wrong Modelfile makes the tests fail as it would in Ollama.

Test-only control routes (no real Ollama has them; the fault tests skip against a real server):
    POST   /_standin/faults   {"create_error": {"status", "message", "after_lines", "times"},
                               "drop_upload": {"after_bytes", "times"},
                               "delay": {"seconds", "path", "times"},
                               "chat_error": {"after_chunks", "message", "times"}}
    DELETE /_standin/faults   clear every fault
    GET    /_standin/stats    {"blob_bytes_received", "blob_uploads", "creates", "requests": [[method, path], ...]}
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from . import engine as eng
from . import gguf_info, names
from .gofmt import go_v, modelfile_quote
from .store import DIGEST_RE, DigestMismatch, Entry, Store

VERSION = "0.33.0"
DEFAULT_TEMPLATE = "{{ .Prompt }}"
DEFAULT_KEEP_ALIVE = 300.0  # 5m
UNSUPPORTED_QUANT = "unsupported quantization type {} - supported types are F32, F16, Q4_K_S, Q4_K_M, Q8_0"
QUANT_TYPES = {"F32", "F16", "BF16", "Q8_0", "Q4_K_S", "Q4_K_M", "Q4_K"}


class HTTPError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


# ---------------------------------------------------------------- formatting helpers

def go_json(obj: Any) -> bytes:
    """json.Marshal's output: compact, UTF-8, with <, >, & escaped as \\u003c... (Go's HTML-safe default)."""
    s = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    s = s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    s = s.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    return s.encode("utf-8")


def rfc3339(t: float | None = None) -> str:
    """UTC RFC3339 with nanoseconds, trailing zeros trimmed (Go's time.RFC3339Nano)."""
    ns = time.time_ns() if t is None else int(t * 1e9)
    secs, frac = divmod(ns, 1_000_000_000)
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))
    frac_s = f"{frac:09d}".rstrip("0")
    return f"{base}.{frac_s}Z" if frac_s else f"{base}Z"


_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def keep_alive_seconds(value: Any) -> float:
    """api.Duration: a number is seconds; a string is a Go duration ("5m", "1h30m", "0"); negative is forever."""
    if value is None:
        return DEFAULT_KEEP_ALIVE
    if isinstance(value, bool):
        raise HTTPError(400, "json: cannot unmarshal bool into Go value of type api.Duration")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        s = value.strip()
        sign = -1.0 if s.startswith("-") else 1.0
        s = s.lstrip("+-")
        if s == "0":
            return 0.0
        total, pos = 0.0, 0
        for m in _DURATION.finditer(s):
            if m.start() != pos:
                break
            total += float(m.group(1)) * _UNITS[m.group(2)]
            pos = m.end()
        if pos != len(s) or not s:
            raise HTTPError(400, f'time: invalid duration "{value}"')
        return sign * total
    raise HTTPError(400, "json: cannot unmarshal value into Go value of type api.Duration")


def valid_file_path(p: str) -> bool:
    """Go's fs.ValidPath plus Ollama's extra rules: relative, slash-separated, no '.'/'..' elements, no \\ or :."""
    if p == "." or not p or p.startswith("/") or p.endswith("/") or "\\" in p or ":" in p:
        return False
    return all(part not in ("", ".", "..") for part in p.split("/"))


# ---------------------------------------------------------------- registered model view

@dataclasses.dataclass
class Model:
    entry: Entry
    store: Store

    @property
    def name(self) -> names.Name:
        return self.entry.name

    def _text(self, kind: str) -> str | None:
        layer = self.entry.layer(kind)
        return self.store.read_blob(layer["digest"]).decode("utf-8") if layer else None

    @property
    def template(self) -> str:
        t = self._text("template")
        return DEFAULT_TEMPLATE if t is None else t

    @property
    def has_template(self) -> bool:
        return self.entry.layer("template") is not None

    @property
    def system(self) -> str:
        return self._text("system") or ""

    @property
    def params(self) -> dict[str, Any]:
        t = self._text("params")
        return json.loads(t) if t else {}

    @property
    def messages(self) -> list[dict[str, Any]]:
        t = self._text("messages")
        return json.loads(t) if t else []

    @property
    def licenses(self) -> list[str]:
        return [self.store.read_blob(la["digest"]).decode("utf-8") for la in self.entry.layers("license")]

    @property
    def model_path(self) -> Path:
        layer = self.entry.layer("model")
        assert layer is not None
        return self.store.blob_path(layer["digest"])

    @property
    def adapter_paths(self) -> list[Path]:
        return [self.store.blob_path(la["digest"]) for la in self.entry.layers("adapter")]

    @property
    def config(self) -> dict[str, Any]:
        return json.loads(self.store.read_blob(self.entry.manifest["config"]["digest"]))

    def details(self) -> dict[str, Any]:
        c = self.config
        return {"parent_model": "", "format": c.get("model_format", ""), "family": c.get("model_family", ""),
                "families": c.get("model_families"), "parameter_size": c.get("model_type", ""),
                "quantization_level": c.get("file_type", "")}

    def capabilities(self) -> list[str]:
        caps = ["completion"]
        t = self.template
        if re.search(r"\.Tools\b", t):
            caps.append("tools")
        if re.search(r"\.Suffix\b", t):
            caps.append("insert")
        if re.search(r"\.Thinking\b", t):
            caps.append("thinking")
        return caps

    def modelfile(self) -> str:
        """What /api/show returns as ``modelfile`` (Ollama's Model.String under its two header comments)."""
        lines = ['# Modelfile generated by "ollama show"',
                 "# To build a new Modelfile based on this, replace FROM with:",
                 f"# FROM {self.name.shortest()}", "", f"FROM {self.model_path}"]
        lines += [f"ADAPTER {p}" for p in self.adapter_paths]
        if self.has_template:
            lines.append(f"TEMPLATE {modelfile_quote(self.template)}")
        if self.system:
            lines.append(f"SYSTEM {modelfile_quote(self.system)}")
        for k, v in sorted(self.params.items()):
            for item in (v if isinstance(v, list) else [v]):
                lines.append(f"PARAMETER {k} {modelfile_quote(go_v(item))}")
        lines += [f"LICENSE {modelfile_quote(lic)}" for lic in self.licenses]
        lines += [f"MESSAGE {m.get('role', '')} {modelfile_quote(m.get('content', ''))}" for m in self.messages]
        return "\n".join(lines) + "\n"

    def parameters_text(self) -> str:
        out = []
        for k, v in sorted(self.params.items()):
            for item in (v if isinstance(v, list) else [v]):
                out.append(f"{k:<30} {go_v(item, sharp=True)}")
        return "\n".join(out)


# ---------------------------------------------------------------- the server

@dataclasses.dataclass
class LoadedModel:
    name: names.Name
    digest: str
    path: str
    n_ctx: int
    size: int
    details: dict[str, Any]
    expires: float


class StandinServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], store_dir: str | os.PathLike):
        super().__init__(address, Handler)
        self.store = Store(store_dir)
        self.engine = eng.Engine()
        self.faults: dict[str, dict[str, Any]] = {}
        self.stats: dict[str, Any] = {"blob_bytes_received": 0, "blob_uploads": 0, "creates": 0, "requests": []}
        self.loaded: dict[str, LoadedModel] = {}  # model blob path -> its runner's /api/ps entry
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def take_fault(self, kind: str) -> dict[str, Any] | None:
        """The armed fault of this kind, counting one use (``times``, default 1)."""
        with self.lock:
            f = self.faults.get(kind)
            if f is None:
                return None
            f["times"] = int(f.get("times", 1)) - 1
            if f["times"] <= 0:
                del self.faults[kind]
            return f

    def expire_models(self, path: str | None = None) -> None:
        """Unload runners whose keep-alive ran out (or the one for ``path``, now)."""
        now = time.time()
        with self.lock:
            gone = [p for p, lm in self.loaded.items() if lm.expires <= now or p == path]
            for p in gone:
                del self.loaded[p]
        for p in gone:
            self.engine.unload(p)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: StandinServer
    server_version = "ollama-standin"
    sys_version = ""

    # ---- plumbing ----
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        if os.environ.get("OLLAMA_STANDIN_LOG"):
            super().log_message(format, *args)

    def _body_chunks(self, size: int = 1 << 16) -> Iterator[bytes]:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                line = self.rfile.readline(65537)
                if not line:
                    raise ConnectionError("client closed the connection mid-body")
                n = int(line.split(b";")[0].strip() or b"0", 16)
                if n == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return
                left = n
                while left:
                    block = self.rfile.read(min(size, left))
                    if not block:
                        raise ConnectionError("client closed the connection mid-body")
                    left -= len(block)
                    yield block
                self.rfile.readline(3)
        else:
            left = int(self.headers.get("Content-Length") or 0)
            while left > 0:
                block = self.rfile.read(min(size, left))
                if not block:
                    raise ConnectionError("client closed the connection mid-body")
                left -= len(block)
                yield block

    def _read_body(self) -> bytes:
        return b"".join(self._body_chunks())

    def _json_body(self) -> dict[str, Any]:
        raw = self._read_body()
        if not raw.strip():
            raise HTTPError(400, "missing request body")
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            raise HTTPError(400, f"invalid character {raw.decode('utf-8', 'replace')[e.pos:e.pos + 1]!r} "
                                 "looking for beginning of value") from None
        if not isinstance(obj, dict):
            raise HTTPError(400, "json: cannot unmarshal array into Go value of type api.Request")
        return obj

    def _send(self, status: int, body: bytes = b"", content_type: str | None = None) -> None:
        self._responded = True
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Date", self.date_time_string())
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def send_json(self, status: int, obj: Any) -> None:
        self._send(status, go_json(obj), "application/json; charset=utf-8")

    def send_error_json(self, status: int, message: str) -> None:
        self.send_json(status, {"error": message})

    def stream(self, producer: Iterable[dict[str, Any]], stream: bool,
               collect: Callable[[list[dict[str, Any]]], dict[str, Any]]) -> None:
        """Ollama's streamResponse / waitForStream: NDJSON lines, or one object when ``stream`` is false.

        The producer raises HTTPError for an error; before any line is written it becomes a plain JSON error with
        its status, after that one more NDJSON line ``{"error": ...}`` (status stays 200).
        """
        if not stream:
            items: list[dict[str, Any]] = []
            try:
                for item in producer:
                    items.append(item)
            except HTTPError as e:
                self.send_error_json(e.status, e.message)
                return
            self.send_json(200, collect(items))
            return
        started = False
        try:
            for item in producer:
                if not started:
                    self._responded = True
                    self.send_response(200)
                    self.send_header("Content-Type", "application/x-ndjson")
                    self.send_header("Transfer-Encoding", "chunked")
                    self.send_header("Date", self.date_time_string())
                    self.end_headers()
                    started = True
                self._chunk(go_json(item) + b"\n")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            return
        except Exception as exc:  # noqa: BLE001 - Ollama's producers send any error this way (status 500 if unset)
            e = exc if isinstance(exc, HTTPError) else HTTPError(500, f"ollama stand-in: {type(exc).__name__}: {exc}")
            if not started:
                self.send_error_json(e.status, e.message)
                return
            self._chunk(go_json({"error": e.message}) + b"\n")
        if not started:  # an empty stream still answers 200
            self.send_response(200)
            self.send_header("Content-Type", "application/x-ndjson")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
        self._chunk(b"")

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    # ---- dispatch ----
    ROUTES: dict[str, dict[str, str]] = {
        "/": {"GET": "root", "HEAD": "root"},
        "/api/version": {"GET": "version", "HEAD": "version"},
        "/api/tags": {"GET": "tags", "HEAD": "tags"},
        "/api/ps": {"GET": "ps"},
        "/api/show": {"POST": "show"},
        "/api/create": {"POST": "create"},
        "/api/copy": {"POST": "copy"},
        "/api/delete": {"DELETE": "delete"},
        "/api/chat": {"POST": "chat"},
        "/api/generate": {"POST": "generate"},
        "/api/pull": {"POST": "pull"},
        "/api/embed": {"POST": "embed"},
        "/api/embeddings": {"POST": "embed"},
        "/api/push": {"POST": "pull"},
        "/_standin/faults": {"POST": "set_faults", "DELETE": "clear_faults"},
        "/_standin/stats": {"GET": "get_stats"},
    }

    def _dispatch(self) -> None:
        path = self.path.split("?", 1)[0]
        if not path.startswith("/_standin/"):
            with self.server.lock:
                self.server.stats["requests"].append([self.command, path])
        delay = self.server.faults.get("delay")
        if delay and (not delay.get("path") or delay["path"] == path) and self.server.take_fault("delay"):
            time.sleep(float(delay.get("seconds", 1.0)))
        if path.startswith("/api/blobs/"):
            methods = {"HEAD": "head_blob", "POST": "create_blob"}
        else:
            methods = self.ROUTES.get(path.rstrip("/") or "/")
        if methods is None:
            self._drain()
            self._send(404, b"404 page not found", "text/plain")
            return
        handler = methods.get(self.command)
        if handler is None:
            self._drain()
            self._send(405, b"405 method not allowed", "text/plain")
            return
        self._responded = False
        try:
            getattr(self, "h_" + handler)()
        except HTTPError as e:
            self.send_error_json(e.status, e.message)
        except (BrokenPipeError, ConnectionResetError, ConnectionError):
            self.close_connection = True
        except Exception as e:  # a stand-in bug: answer it as Ollama answers internal errors, so tests show it
            if self._responded:
                self.close_connection = True
                raise
            self.send_error_json(500, f"ollama stand-in: {type(e).__name__}: {e}")

    def _drain(self) -> None:
        try:
            for _ in self._body_chunks():
                pass
        except (ConnectionError, ValueError):
            self.close_connection = True

    do_GET = do_HEAD = do_POST = do_DELETE = do_PUT = do_PATCH = _dispatch  # noqa: N815 - stdlib naming

    # ---- simple routes ----
    def h_root(self) -> None:
        self._send(200, b"Ollama is running", "text/plain; charset=utf-8")

    def h_version(self) -> None:
        self.send_json(200, {"version": VERSION})

    def h_tags(self) -> None:
        models = []
        for e in sorted(self.server.store.entries(), key=lambda e: -int(e.modified)):
            m = Model(e, self.server.store)
            models.append({"name": e.name.shortest(), "model": e.name.shortest(), "modified_at": rfc3339(e.modified),
                           "size": e.size, "digest": e.digest, "details": m.details()})
        self.send_json(200, {"models": models})

    def h_ps(self) -> None:
        self.server.expire_models()
        with self.server.lock:
            loaded = sorted(self.server.loaded.values(), key=lambda lm: -int(lm.expires))
        self.send_json(200, {"models": [
            {"name": lm.name.shortest(), "model": lm.name.shortest(), "size": lm.size, "digest": lm.digest,
             "details": lm.details, "expires_at": rfc3339(lm.expires), "size_vram": 0,
             "context_length": lm.n_ctx} for lm in loaded]})

    def h_pull(self) -> None:
        req = self._json_body()
        name = req.get("model") or req.get("name") or ""
        if not name:
            raise HTTPError(400, "model is required")
        # No registry is reachable from these machines; Ollama reports the dial failure as a stream error.
        verb = "push" if self.path.startswith("/api/push") else "pull"
        err = (f"{verb} model manifest: Get \"https://registry.ollama.ai/v2/library/{name}/manifests/latest\": "
               "dial tcp: lookup registry.ollama.ai: no such host")

        def produce() -> Iterator[dict[str, Any]]:
            yield {"status": f"{verb}ing manifest"}
            raise HTTPError(500, err)

        self.stream(produce(), req.get("stream") is not False, lambda items: items[-1])

    def h_embed(self) -> None:
        self._drain()
        raise HTTPError(501, "the Ollama stand-in does not compute embeddings")

    # ---- blobs ----
    def h_head_blob(self) -> None:
        digest = self.path.split("?", 1)[0][len("/api/blobs/"):]
        if not DIGEST_RE.match(digest):
            raise HTTPError(400, "invalid digest format")
        if not self.server.store.blob_path(digest).is_file():
            raise HTTPError(404, f'blob "{digest}" not found')
        self._send(200)

    def h_create_blob(self) -> None:
        digest = self.path.split("?", 1)[0][len("/api/blobs/"):]
        store = self.server.store
        if not DIGEST_RE.match(digest):
            self._drain()
            raise HTTPError(400, "invalid digest format")
        if store.blob_path(digest).is_file():
            # Ollama answers at once without reading the body; we drain it so the connection stays usable.
            self._drain()
            self._send(200)
            return
        drop = self.server.take_fault("drop_upload")
        counted = [0]

        def body() -> Iterator[bytes]:
            for chunk in self._body_chunks():
                counted[0] += len(chunk)
                with self.server.lock:
                    self.server.stats["blob_bytes_received"] += len(chunk)
                if drop is not None and counted[0] >= int(drop.get("after_bytes", 0)):
                    self._drop_connection()
                    raise ConnectionResetError("fault: connection dropped mid-upload")
                yield chunk

        try:
            store.write_blob(digest, body())
        except DigestMismatch as e:
            raise HTTPError(400, str(e)) from None
        with self.server.lock:
            self.server.stats["blob_uploads"] += 1
        self._send(201)

    def _drop_connection(self) -> None:
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # ---- create ----
    def h_create(self) -> None:
        req = self._json_body()
        with self.server.lock:
            self.server.stats["creates"] += 1
        stream = req.get("stream") is not False
        files = req.get("files") or {}
        adapters = req.get("adapters") or {}
        for mapping in (files, adapters):
            if not isinstance(mapping, dict):
                raise HTTPError(400, "json: cannot unmarshal into Go struct field CreateRequest.files")
            for path, digest in mapping.items():
                if not valid_file_path(path):
                    raise HTTPError(400, f"file path must be relative: {path}")
                if not digest:
                    raise HTTPError(400, "invalid digest format")
                if not DIGEST_RE.match(str(digest)):
                    raise HTTPError(400, f"invalid digest for {path}: invalid digest format")
        licenses = req.get("license")
        if licenses is not None and not isinstance(licenses, (str, list)):
            raise HTTPError(400, "license must be a string or a list of strings")
        target = names.parse(str(req.get("model") or req.get("name") or ""))
        if target is None:
            raise HTTPError(400, "invalid model name")
        source = req.get("from") or ""
        if not source and not files:
            raise HTTPError(400, "neither 'from' or 'files' was specified")
        store = self.server.store
        kinds = set()
        for path, digest in sorted(files.items()):
            if path.endswith(".safetensors"):
                kinds.add("safetensors")
            elif path.endswith(".gguf"):
                kinds.add("gguf")
            else:
                blob = store.blob_path(digest)
                if not blob.is_file():
                    raise HTTPError(500, f"open {blob}: no such file or directory")
                if gguf_info.is_gguf(blob):
                    kinds.add("gguf")
        quantize = str(req.get("quantize") or req.get("quantization") or "")
        if quantize and quantize.upper() not in QUANT_TYPES:
            raise HTTPError(500, UNSUPPORTED_QUANT.format(quantize))
        fault = self.server.take_fault("create_error")
        if fault is not None and int(fault.get("after_lines", 0)) == 0:
            raise HTTPError(int(fault.get("status", 500)), str(fault.get("message", "fault: create failed")))
        if files and not kinds:
            raise HTTPError(400, "unknown type")
        if "safetensors" in kinds:
            raise HTTPError(500, "the Ollama stand-in does not convert safetensors; register a GGUF")
        if quantize:
            raise HTTPError(500, "the Ollama stand-in does not quantize at create time; quantize the GGUF first")

        def produce() -> Iterator[dict[str, Any]]:
            lines = 0
            existed = {p.name for p in store.blobs.iterdir()}

            def status(s: str, **kw: Any) -> dict[str, Any]:
                nonlocal lines
                lines += 1
                if fault is not None and lines > int(fault.get("after_lines", 0)):
                    raise HTTPError(int(fault.get("status", 500)), str(fault.get("message", "fault: create failed")))
                return {"status": s, **kw}

            layers: list[dict[str, Any]] = []
            info: gguf_info.GGUFInfo | None = None
            config: dict[str, Any] = {}
            if source:
                base_name = names.parse(str(source))
                base = store.find(base_name) if base_name else None
                if base is None:
                    yield status("pulling manifest")
                    raise HTTPError(500, "pull model manifest: file does not exist")
                config = json.loads(store.read_blob(base.manifest["config"]["digest"]))
                layers = [dict(la) for la in base.manifest["layers"]]
                model_layer = base.layer("model")
                if model_layer:
                    info = gguf_info.read(str(store.blob_path(model_layer["digest"])))
            else:
                yield status("parsing GGUF")
                for path, digest in sorted(files.items()):
                    blob = store.blob_path(digest)
                    if not blob.is_file():
                        raise HTTPError(500, f"open {blob}: no such file or directory")
                    if not gguf_info.is_gguf(blob):
                        raise HTTPError(400, "supplied file was not in GGUF format")
                    gi = gguf_info.read(str(blob))
                    kind = "adapter" if gi.kind == "adapter" else "model"
                    if kind == "model":
                        info = gi
                    layers.append({"mediaType": "application/vnd.ollama.image." + kind, "digest": digest,
                                   "size": blob.stat().st_size})
            adapter_files = sorted(adapters.items())
            if adapter_files:
                if len(adapter_files) > 1:
                    raise HTTPError(400, "only one adapter is currently supported")
                for path, digest in adapter_files:
                    blob = store.blob_path(digest)
                    if not blob.is_file():
                        raise HTTPError(500, f"open {blob}: no such file or directory")
                    layers = [la for la in layers if not la["mediaType"].endswith(".adapter")]
                    layers.append({"mediaType": "application/vnd.ollama.image.adapter", "digest": digest,
                                   "size": blob.stat().st_size})
            if req.get("template"):
                err = _template_error(str(req["template"]))
                if err:
                    raise HTTPError(400, f"template error: {err}")
            # Modelfile layers replace inherited ones of the same kind; params merge over the inherited params.
            if req.get("template"):
                layers = [la for la in layers if not la["mediaType"].endswith(".template")]
                layers.append(store.put_bytes(str(req["template"]).encode(), "template"))
            if req.get("system"):
                layers = [la for la in layers if not la["mediaType"].endswith(".system")]
                layers.append(store.put_bytes(str(req["system"]).encode(), "system"))
            if licenses:
                layers = [la for la in layers if not la["mediaType"].endswith(".license")]
                for lic in ([licenses] if isinstance(licenses, str) else licenses):
                    layers.append(store.put_bytes(str(lic).encode(), "license"))
            if req.get("parameters"):
                inherited: dict[str, Any] = {}
                for la in layers:
                    if la["mediaType"].endswith(".params"):
                        inherited = json.loads(store.read_blob(la["digest"]))
                layers = [la for la in layers if not la["mediaType"].endswith(".params")]
                merged = {**inherited, **dict(req["parameters"])}
                layers.append(store.put_bytes(go_json(merged), "params"))
            if req.get("messages"):
                layers = [la for la in layers if not la["mediaType"].endswith(".messages")]
                msgs = [{"role": m.get("role", ""), "content": m.get("content", "")} for m in req["messages"]]
                layers.append(store.put_bytes(go_json(msgs), "messages"))
            if info is not None:
                config.update({
                    "model_format": "gguf", "model_family": info.architecture,
                    "model_families": sorted({*config.get("model_families", []), info.architecture}),
                    "model_type": info.parameter_size, "file_type": info.file_type})
            config.update({"architecture": "amd64", "os": "linux",
                           "rootfs": {"type": "layers", "diff_ids": [la["digest"] for la in layers]}})
            for la in layers:
                seen = la["digest"].replace(":", "-", 1) in existed
                yield status(f"{'using existing' if seen else 'creating new'} layer {la['digest']}")
            yield status("writing manifest")
            config_layer = store.put_bytes(go_json(config), "application/vnd.docker.container.image.v1+json")
            store.write_manifest(target, config_layer, layers)
            yield status("success")

        self.stream(produce(), stream, lambda items: items[-1])

    # ---- show / copy / delete ----
    def _existing(self, name: str) -> Model | None:
        n = names.parse(name)
        if n is None:
            return None
        e = self.server.store.find(n)
        return Model(e, self.server.store) if e else None

    def h_show(self) -> None:
        req = self._json_body()
        name = str(req.get("model") or req.get("name") or "")
        if not name:
            raise HTTPError(400, "model is required")
        n = names.parse(name)
        if n is None:
            raise HTTPError(400, "invalid model name")
        entry = self.server.store.find(n)
        if entry is None:
            raise HTTPError(404, f"model '{n.shortest()}' not found")
        m = Model(entry, self.server.store)
        info = gguf_info.read(str(m.model_path))
        verbose = bool(req.get("verbose"))
        system = str(req.get("system") or "") or m.system
        out: dict[str, Any] = {}
        if m.licenses:
            out["license"] = "\n".join(m.licenses)
        out["modelfile"] = m.modelfile()
        params = m.parameters_text()
        if params:
            out["parameters"] = params
        out["template"] = m.template
        if system:
            out["system"] = system
        out["details"] = m.details()
        if m.messages:
            out["messages"] = m.messages
        out["model_info"] = info.model_info(verbose)
        out["tensors"] = info.tensors
        out["capabilities"] = m.capabilities()
        out["modified_at"] = rfc3339(entry.modified)
        self.send_json(200, out)

    def h_copy(self) -> None:
        req = self._json_body()
        src_s, dst_s = str(req.get("source") or ""), str(req.get("destination") or "")
        src = names.parse(src_s)
        if src is None:
            raise HTTPError(400, f"source {json.dumps(src_s)} is invalid")
        dst = names.parse(dst_s)
        if dst is None:
            raise HTTPError(400, f"destination {json.dumps(dst_s)} is invalid")
        store = self.server.store
        with store.lock:
            entry = store.find(src)
            if entry is None:
                raise HTTPError(404, f"model {json.dumps(src_s)} not found")
            store.write_manifest(dst, entry.manifest["config"], entry.manifest["layers"])
        self._send(200)

    def h_delete(self) -> None:
        req = self._json_body()
        name = str(req.get("model") or req.get("name") or "")
        n = names.parse(name)
        if n is None:
            raise HTTPError(400, f"name {json.dumps(name)} is invalid")
        store = self.server.store
        with store.lock:
            entry = store.find(n)
            if entry is None:
                raise HTTPError(404, f"model '{name}' not found")
            store.delete(entry)
        self._send(200)

    # ---- inference ----
    def _inference_model(self, req: dict[str, Any]) -> Model:
        top = req.get("top_logprobs") or 0
        if not isinstance(top, int) or top < 0 or top > 20:
            raise HTTPError(400, "top_logprobs must be between 0 and 20")
        name = str(req.get("model") or "")
        if not name:
            raise HTTPError(400, "model is required")
        n = names.parse(name)
        if n is None:
            raise HTTPError(400, "invalid model name")
        entry = self.server.store.find(n)
        if entry is None:
            raise HTTPError(404, f"model '{name}' not found")
        return Model(entry, self.server.store)

    def _check_capabilities(self, req: dict[str, Any], m: Model) -> None:
        caps = m.capabilities()
        think = req.get("think")
        if think not in (None, False) and "thinking" not in caps:
            raise HTTPError(400, f'"{req["model"]}" does not support thinking')
        if req.get("tools") and "tools" not in caps:
            raise HTTPError(400, f"{m.name.full()} does not support tools")

    def _load(self, m: Model, opts: dict[str, Any], keep_alive: float) -> tuple[eng.Loaded, float]:
        self.server.expire_models()
        info = gguf_info.read(str(m.model_path))
        n_ctx = int(opts["num_ctx"])
        if info.context_length:
            n_ctx = min(n_ctx, info.context_length)  # Ollama caps num_ctx at the trained context
        loaded, secs = self.server.engine.load(str(m.model_path), n_ctx, int(opts.get("num_thread") or 0))
        expires = time.time() + (keep_alive if keep_alive >= 0 else 10 * 365 * 86400)
        with self.server.lock:
            # One runner per model file, as Ollama's scheduler keys them; /api/ps names the model that used it last.
            self.server.loaded[str(m.model_path)] = LoadedModel(
                m.name, m.entry.digest, str(m.model_path), n_ctx, m.model_path.stat().st_size, m.details(), expires)
        return loaded, secs

    def _after(self, m: Model, keep_alive: float) -> None:
        if keep_alive == 0:
            self.server.expire_models(str(m.model_path))

    def h_chat(self) -> None:
        t_start = time.perf_counter()
        req = self._json_body()
        m = self._inference_model(req)
        keep_alive = keep_alive_seconds(req.get("keep_alive"))
        messages = req.get("messages") or []
        model_name = req["model"]
        if not messages:
            if keep_alive == 0:
                self._after(m, 0)
                self.send_json(200, {"model": model_name, "created_at": rfc3339(),
                                     "message": {"role": "assistant", "content": ""}, "done": True,
                                     "done_reason": "unload"})
                return
            self._check_capabilities(req, m)
            try:
                opts = eng.merge_options(m.params, req.get("options"))
            except eng.OptionError as e:
                raise HTTPError(500, str(e)) from None
            self._load(m, opts, keep_alive)
            self.send_json(200, {"model": model_name, "created_at": rfc3339(),
                                 "message": {"role": "assistant", "content": ""}, "done": True,
                                 "done_reason": "load"})
            return
        self._check_capabilities(req, m)
        try:
            opts = eng.merge_options(m.params, req.get("options"))
        except eng.OptionError as e:
            raise HTTPError(500, str(e)) from None
        msgs = [dict(x) for x in m.messages] + [dict(x) for x in messages]
        if str(messages[0].get("role", "")).lower() != "system" and m.system:
            msgs.insert(0, {"role": "system", "content": m.system})
        loaded, load_secs = self._load(m, opts, keep_alive)
        prompt_tokens = self._fit_prompt(m, loaded, msgs, req)
        fault = self.server.take_fault("chat_error")

        def produce() -> Iterator[dict[str, Any]]:
            res = eng.Result()
            chunks = 0
            for piece in eng.generate(loaded, prompt_tokens, opts, res):
                if fault is not None and chunks >= int(fault.get("after_chunks", 0)):
                    raise HTTPError(500, str(fault.get("message", "fault: runner terminated")))
                chunks += 1
                yield {"model": model_name, "created_at": rfc3339(),
                       "message": {"role": "assistant", "content": piece}, "done": False}
            if fault is not None:
                raise HTTPError(500, str(fault.get("message", "fault: runner terminated")))
            total = time.perf_counter() - t_start
            final: dict[str, Any] = {"model": model_name, "created_at": rfc3339(),
                                     "message": {"role": "assistant", "content": ""}, "done": True,
                                     "done_reason": res.done_reason}
            final.update(_metrics(total, load_secs, res))
            self._after(m, keep_alive)
            yield final

        def collect(items: list[dict[str, Any]]) -> dict[str, Any]:
            out = dict(items[-1])
            out["message"] = {"role": "assistant", "content": "".join(i["message"]["content"] for i in items)}
            return out

        self.stream(produce(), req.get("stream") is not False, collect)

    def _fit_prompt(self, m: Model, loaded: eng.Loaded, msgs: list[dict[str, Any]], req: dict[str, Any]) -> list[int]:
        """Render with the registered template; drop the oldest non-system messages until the prompt fits."""
        kept = list(msgs)
        while True:
            prompt = _render(m.template, kept, tools=req.get("tools"), think=req.get("think"))
            tokens = eng.tokenize(loaded.llm, prompt)
            if len(tokens) < loaded.n_ctx or req.get("truncate") is False:
                if len(tokens) >= loaded.n_ctx:
                    raise HTTPError(400, "input length exceeds the context length")
                return tokens
            droppable = [i for i, x in enumerate(kept[:-1]) if x.get("role") != "system"]
            if not droppable:
                raise HTTPError(400, "input length exceeds the context length")
            del kept[droppable[0]]

    def h_generate(self) -> None:
        t_start = time.perf_counter()
        req = self._json_body()
        m = self._inference_model(req)
        keep_alive = keep_alive_seconds(req.get("keep_alive"))
        model_name = req["model"]
        raw = bool(req.get("raw"))
        if raw and (req.get("template") or req.get("system") or req.get("context")):
            raise HTTPError(400, "raw mode does not support template, system, or context")
        prompt_in = str(req.get("prompt") or "")
        if not prompt_in and keep_alive == 0:
            self._after(m, 0)
            self.send_json(200, {"model": model_name, "created_at": rfc3339(), "response": "", "done": True,
                                 "done_reason": "unload"})
            return
        self._check_capabilities(req, m)
        try:
            opts = eng.merge_options(m.params, req.get("options"))
        except eng.OptionError as e:
            raise HTTPError(500, str(e)) from None
        loaded, load_secs = self._load(m, opts, keep_alive)
        if not prompt_in:
            self.send_json(200, {"model": model_name, "created_at": rfc3339(), "response": "", "done": True,
                                 "done_reason": "load"})
            return
        if raw:
            prompt = prompt_in
        elif req.get("suffix"):
            prompt = _render(req.get("template") or m.template, [], prompt=prompt_in, suffix=str(req["suffix"]))
        else:
            msgs: list[dict[str, Any]] = []
            system = str(req.get("system") or "") or m.system
            if system:
                msgs.append({"role": "system", "content": system})
            if not req.get("context"):
                msgs += [dict(x) for x in m.messages]
            msgs.append({"role": "user", "content": prompt_in, "images": req.get("images")})
            prompt = _render(req.get("template") or m.template, msgs, think=req.get("think"))
            if req.get("context"):
                prefix = loaded.llm.detokenize(list(req["context"]), special=True).decode("utf-8", "replace")
                prompt = prefix + prompt
        prompt_tokens = eng.tokenize(loaded.llm, prompt)

        def produce() -> Iterator[dict[str, Any]]:
            res = eng.Result()
            text = []
            for piece in eng.generate(loaded, prompt_tokens, opts, res):
                text.append(piece)
                yield {"model": model_name, "created_at": rfc3339(), "response": piece, "done": False}
            total = time.perf_counter() - t_start
            final: dict[str, Any] = {"model": model_name, "created_at": rfc3339(), "response": "", "done": True,
                                     "done_reason": res.done_reason}
            if not raw:
                final["context"] = eng.tokenize(loaded.llm, prompt + "".join(text))
            final.update(_metrics(total, load_secs, res))
            self._after(m, keep_alive)
            yield final

        def collect(items: list[dict[str, Any]]) -> dict[str, Any]:
            out = dict(items[-1])
            out["response"] = "".join(i["response"] for i in items)
            return out

        self.stream(produce(), req.get("stream") is not False, collect)

    # ---- test control ----
    def h_set_faults(self) -> None:
        req = self._json_body()
        with self.server.lock:
            for k, v in req.items():
                self.server.faults[k] = dict(v)
        self._send(200)

    def h_clear_faults(self) -> None:
        self._drain()
        with self.server.lock:
            self.server.faults.clear()
        self._send(200)

    def h_get_stats(self) -> None:
        with self.server.lock:
            self.send_json(200, self.server.stats)


def _metrics(total: float, load: float, res: eng.Result) -> dict[str, Any]:
    """The six duration/count fields, each omitted when zero (Go's omitempty)."""
    fields = {"total_duration": int(total * 1e9), "load_duration": int(load * 1e9),
              "prompt_eval_count": res.prompt_tokens, "prompt_eval_duration": int(res.prompt_seconds * 1e9),
              "eval_count": res.eval_count, "eval_duration": int(res.eval_seconds * 1e9)}
    return {k: v for k, v in fields.items() if v}


def _render(template: str, messages: list[dict[str, Any]], **kw: Any) -> str:
    """The registered template rendered by the Go reference renderer, with data shaped as Ollama shapes it."""
    from tests.gotemplate.render import render_many

    job: dict[str, Any] = {"template": template, "messages": [_go_message(x) for x in messages]}
    think = kw.pop("think", None)
    if think is not None:
        job["is_think_set"] = True
        job["think"] = think not in (False, "")
        if isinstance(think, str):
            job["think_level"] = think
    for k in ("tools", "prompt", "suffix"):
        if kw.get(k):
            job[k] = kw[k]
    (res,) = render_many([job])
    if "error" in res:
        raise HTTPError(500, res["error"])
    return res["output"]


def _go_message(m: dict[str, Any]) -> dict[str, Any]:
    out = {"role": str(m.get("role", "")), "content": str(m.get("content") or "")}
    for k in ("thinking", "tool_name", "tool_call_id"):
        if m.get(k):
            out[k] = str(m[k])
    if m.get("images"):
        out["images"] = [i if isinstance(i, str) else base64.b64encode(bytes(i)).decode() for i in m["images"]]
    if m.get("tool_calls"):
        out["tool_calls"] = m["tool_calls"]
    return out


def _template_error(template: str) -> str | None:
    """The Go parse error of ``template``, or None when text/template accepts it (execution errors don't count)."""
    from tests.gotemplate.render import render_many

    (res,) = render_many([{"template": template, "messages": []}])
    err = res.get("error")
    if err and "executing" not in err:
        return err
    return None


def serve(store_dir: str | os.PathLike, port: int = 0, host: str = "127.0.0.1") -> StandinServer:
    """Start the stand-in in a daemon thread; returns the server (``.url``, ``.shutdown()``)."""
    server = StandinServer((host, port), store_dir)
    threading.Thread(target=server.serve_forever, name="ollama-standin", daemon=True).start()
    return server


