"""Ollama faults during push and chat: down, 5xx, a connection dropped mid-stream, a server too slow to answer.

Every case runs the real CLI in a subprocess and expects exit 2 with one error line on stderr that names the
Ollama address and says what to do, and no half-registered state: forge's record of pushed models
(``$FORGE_DATA_DIR/pushed.json``, seeded with an earlier push) is byte-for-byte unchanged, no lineage.json appears in
the run directory, and the model is not registered. The stand-in's fault hooks cover a refused create and an upload
cut short; a small fake Ollama (http.server on 127.0.0.1, defined here) covers what the stand-in cannot do: a
stream that stops mid-answer, a 5xx on every route, a create that never answers. The one case the CLI cannot reach
(``forge chat`` has no timeout flag; its 10-minute patience is for loading big models) is checked on the library.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.ollama_standin import testing

REPO = Path(__file__).resolve().parents[1]
SEED = {"pushed": [{"host": "http://127.0.0.1:1", "name": "earlier:v1", "manifest_digest": "sha256:" + "0" * 64,
                    "gguf_digest": "sha256:" + "1" * 64, "pushed_at": "2025-01-01T00:00:00Z"}]}


class FakeOllama(http.server.ThreadingHTTPServer):
    """Just enough of Ollama's API for push to reach create and for chat to stream; ``mode`` picks the fault:
    e500 (every route 500), create-drop / chat-drop (one streamed line, then the connection is cut),
    create-slow / chat-slow (sleep ``delay`` s before answering), chat-garbage (a streamed line that is not JSON)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, mode: str, delay: float = 0.0):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.mode, self.delay = mode, delay
        self.requests: list[str] = []
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"

    def close(self) -> None:
        self.shutdown()
        self.server_close()

    def __enter__(self) -> "FakeOllama":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FakeOllama

    def log_message(self, *a) -> None:
        pass

    def _json(self, status: int, obj) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _stream_then(self, first: bytes, then: str) -> None:
        """Chunked application/x-ndjson: one line, then cut the connection (or send garbage and end)."""
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(first), first))
        self.wfile.flush()
        if then == "garbage":
            junk = b"<html>proxy error</html>\n"
            self.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(junk), junk))
            return
        time.sleep(0.05)
        self.connection.shutdown(socket.SHUT_RDWR)  # mid-stream: no terminating chunk
        self.close_connection = True

    def _any(self) -> None:
        path = self.path.split("?")[0]
        self.server.requests.append(f"{self.command} {path}")
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(n)
        mode = self.server.mode
        if mode == "e500":
            return self._json(500, {"error": "llama runner process has terminated: signal: killed"})
        if path == "/api/version":
            return self._json(200, {"version": "0.12.0"})
        if path == "/api/show":
            return self._json(404, {"error": "model 'x' not found"})
        if path.startswith("/api/blobs/"):
            return self._json(200, {})  # "already have it": push goes straight to create
        if path == "/api/create":
            if mode == "create-slow":
                time.sleep(self.server.delay)
                return self._json(200, {"status": "success"})
            if mode == "create-drop":
                return self._stream_then(b'{"status":"parsing modelfile"}\n', "drop")
        if path == "/api/chat":
            if mode == "chat-slow":
                time.sleep(self.server.delay)
                return self._json(404, {"error": "too late"})
            line = json.dumps({"model": "m:v1", "created_at": "2025-01-01T00:00:00Z",
                               "message": {"role": "assistant", "content": "Par"}, "done": False}).encode() + b"\n"
            if mode == "chat-drop":
                return self._stream_then(line, "drop")
            if mode == "chat-garbage":
                return self._stream_then(line, "garbage")
        return self._json(404, {"error": "not found"})

    do_GET = do_POST = do_HEAD = do_DELETE = _any


# ---------------------------------------------------------------------------------------------------------------


def closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"  # closed again when the block ends: nothing listens there


def forge(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("OLLAMA_HOST", None)
    return subprocess.run([sys.executable, "-m", "ollama_forge", *argv], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=120, stdin=subprocess.DEVNULL)


def one_error_line(r: subprocess.CompletedProcess, command: str) -> str:
    assert r.returncode == 2, f"exit {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith(f"forge {command}: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], r.stderr
    # Before the error, only progress a user wants to see: announced choices and push's own status lines.
    allowed = re.compile(r"^([\w.\- ]+=.*: \S|pushing |hashing |uploading |model |wrote |ollama: )")
    assert all(allowed.match(ln) for ln in lines[:-1]), r.stderr
    return errors[0]



@pytest.fixture
def gguf(qwen2_f16_gguf) -> Path:
    return qwen2_f16_gguf


@pytest.fixture
def run(gguf, tmp_path, forge_data) -> Path:
    """A run directory with its Modelfile (push writes nothing before it talks to Ollama), and an earlier push
    already recorded in forge's data directory."""
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy2(gguf, run / gguf.name)
    (run / "Modelfile").write_text(f"FROM ./{gguf.name}\nPARAMETER stop <|im_end|>\nPARAMETER num_ctx 4096\n")
    forge_data.mkdir(parents=True, exist_ok=True)
    (forge_data / "pushed.json").write_text(json.dumps(SEED, indent=2) + "\n")
    return run


def assert_nothing_recorded(run: Path, forge_data: Path) -> None:
    assert json.loads((forge_data / "pushed.json").read_text()) == SEED, "forge's record of pushes changed"
    assert not (run / "lineage.json").exists()
    assert not [p for p in forge_data.iterdir() if p.name != "pushed.json"], "temporary files left"
    assert not list(run.glob(".*partial"))


def name() -> str:
    return f"forge-fault-{uuid.uuid4().hex[:8]}:v1"


@pytest.fixture
def standin_url():
    url = testing.standin().url
    yield url
    testing.clear_faults(url)


def registered(url: str, n: str) -> bool:
    import ollama

    return any(m.model == n for m in ollama.Client(url).list().models)


# ---------------------------------------------------------------------------------------------------------------
# push


def test_push_ollama_down(run, forge_data, tmp_path):
    host = closed_port()
    line = one_error_line(forge(["push", name(), str(run), "--host", host], tmp_path), "push")
    assert f"Ollama is not running at http://{host}" in line and "ollama serve" in line
    assert_nothing_recorded(run, forge_data)


def test_push_5xx_on_every_route(run, forge_data, tmp_path):
    with FakeOllama("e500") as fake:
        line = one_error_line(forge(["push", name(), str(run), "--host", fake.host], tmp_path), "push")
    assert f"http://{fake.host}" in line and "HTTP 500" in line and "rerun" in line
    assert fake.requests == ["GET /api/version"]  # nothing sent after the first refusal
    assert_nothing_recorded(run, forge_data)


def test_push_create_refused_with_5xx(run, forge_data, tmp_path, standin_url):
    n = name()
    testing.set_faults(standin_url, create_error={"status": 500, "message": "error loading model: out of memory"})
    line = one_error_line(forge(["push", n, str(run), "--host", standin_url], tmp_path), "push")
    assert "out of memory" in line and "HTTP 500" in line and "rerun" in line
    assert not registered(standin_url, n)
    assert_nothing_recorded(run, forge_data)


def test_push_connection_dropped_mid_upload(run, forge_data, tmp_path, standin_url, tiny_model):
    from ollama_forge.gguf.convert import ConvertConfig, convert_hf_to_gguf

    n = name()  # a GGUF of its own (another general.name): the stand-in must not have this blob already
    convert_hf_to_gguf(tiny_model("qwen2"), run / "model-f16.gguf", ConvertConfig(name=n))
    testing.set_faults(standin_url, drop_upload={"after_bytes": (run / "model-f16.gguf").stat().st_size // 3})
    line = one_error_line(forge(["push", n, str(run), "--host", standin_url], tmp_path), "push")
    assert "connection to Ollama" in line and "lost" in line and "rerun" in line
    assert not registered(standin_url, n)
    assert_nothing_recorded(run, forge_data)


def test_push_connection_dropped_mid_create_stream(run, forge_data, tmp_path):
    with FakeOllama("create-drop") as fake:
        line = one_error_line(forge(["push", name(), str(run), "--host", fake.host], tmp_path), "push")
    assert f"http://{fake.host}" in line and "lost during create" in line and "rerun" in line
    assert "POST /api/create" in fake.requests
    assert_nothing_recorded(run, forge_data)


def test_push_slow_create_times_out(run, forge_data, tmp_path):
    fake = FakeOllama("create-slow", delay=4.0)
    t0 = time.monotonic()
    try:
        r = forge(["push", name(), str(run), "--host", fake.host, "--timeout", "1"], tmp_path)
    finally:
        fake.close()
    line = one_error_line(r, "push")
    assert "did not answer create" in line and "within 1 s" in line and "--timeout" in line
    assert time.monotonic() - t0 < 30
    assert_nothing_recorded(run, forge_data)


# ---------------------------------------------------------------------------------------------------------------
# chat


def test_chat_ollama_down(tmp_path):
    host = closed_port()
    line = one_error_line(forge(["chat", "mine:v1", "--host", host, "-p", "hi"], tmp_path), "chat")
    assert f"Ollama is not running at http://{host}" in line and "ollama serve" in line


def test_chat_5xx(tmp_path):
    with FakeOllama("e500") as fake:
        line = one_error_line(forge(["chat", "mine:v1", "--host", fake.host, "-p", "hi"], tmp_path), "chat")
    assert "llama runner process has terminated" in line and "HTTP 500" in line and "rerun" in line


def test_chat_connection_dropped_mid_answer(tmp_path):
    with FakeOllama("chat-drop") as fake:
        r = forge(["chat", "mine:v1", "--host", fake.host, "-p", "What is the capital of France?"], tmp_path)
    line = one_error_line(r, "chat")
    assert f"http://{fake.host}" in line and "lost during chat with mine:v1" in line and "rerun" in line
    assert r.stdout.startswith("Par")  # what arrived before the cut was shown


def test_chat_garbage_mid_answer(tmp_path):
    with FakeOllama("chat-garbage") as fake:
        r = forge(["chat", "mine:v1", "--host", fake.host, "-p", "hi"], tmp_path)
    line = one_error_line(r, "chat")
    assert f"http://{fake.host}" in line and "cannot read" in line and "Ollama server" in line


def test_chat_slow_server_times_out_in_the_library():
    """``forge chat`` waits up to 10 minutes (a big model loads slowly); the library's timeout is the same code."""
    from ollama_forge.backends.ollama import OllamaBackend
    from ollama_forge.errors import ForgeError

    fake = FakeOllama("chat-slow", delay=4.0)
    backend = OllamaBackend("mine:v1", host=fake.host, timeout=1.0)
    t0 = time.monotonic()
    try:
        with pytest.raises(ForgeError) as e:
            backend.chat([{"role": "user", "content": "hi"}]).text()
    finally:
        backend.close()
        fake.close()
    assert f"Ollama at http://{fake.host} did not answer chat with mine:v1 within 1 s" in e.value.one_line()
    assert time.monotonic() - t0 < 3.5
