"""The Ollama stand-in answers as Ollama does (shared/reference/ollama.md): statuses, messages, shapes, generation.

Every test that does not need a test-only hook runs against the stand-in and, when one answers at OLLAMA_HOST,
against a real Ollama too (``ollama`` marker; skipped with the reason otherwise), so the stand-in is checked
against the real thing wherever one is available.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import ollama
import pytest

from tests.ollama_standin import testing
from tests.ollama_standin.gguf_info import human_number
from tests.ollama_standin.gofmt import go_float, go_quote

SERVERS = ["standin", pytest.param("real", marks=pytest.mark.ollama)]
CHATML = ("{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}{{- range .Messages }}"
          "<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n")


@pytest.fixture(params=SERVERS)
def url(request) -> str:
    return testing.server_url(request.param)


@pytest.fixture
def standin_url() -> str:
    url = testing.standin().url
    yield url
    testing.clear_faults(url)


@pytest.fixture(scope="module")
def random_gguf(tiny_model, tiny_model_root) -> Path:
    return testing.random_gguf(tiny_model_root, tiny_model("qwen2"))


def _name(prefix: str = "standin") -> str:
    return f"forge-test-{prefix}-{uuid.uuid4().hex[:8]}:latest"


@pytest.fixture
def names(url):
    """Names created by a test, deleted afterwards (a real Ollama keeps what tests make otherwise)."""
    made: list[str] = []
    yield made
    client = ollama.Client(url)
    for n in made:
        try:
            client.delete(n)
        except ollama.ResponseError:
            pass


def _upload(url: str, path: Path) -> str:
    return ollama.Client(url).create_blob(path)


def _create(url: str, name: str, digest: str, **fields) -> None:
    for _ in ollama.Client(url).create(model=name, files={"model.gguf": digest}, stream=True, **fields):
        pass


def _err(r: httpx.Response) -> str:
    return r.json()["error"]


# ---------------------------------------------------------------------------------------------------------------
# General routes
# ---------------------------------------------------------------------------------------------------------------

def test_root_version_and_wrong_method(url):
    r = httpx.get(url + "/")
    assert (r.status_code, r.text) == (200, "Ollama is running")
    assert httpx.head(url + "/").status_code == 200
    v = httpx.get(url + "/api/version")
    assert v.status_code == 200 and isinstance(v.json()["version"], str) and v.json()["version"]
    assert httpx.get(url + "/api/create").status_code == 405
    assert httpx.get(url + "/api/no-such-route").status_code == 404


def test_empty_body_is_missing_request_body(url):
    r = httpx.post(url + "/api/show", content=b"")
    assert (r.status_code, _err(r)) == (400, "missing request body")


# ---------------------------------------------------------------------------------------------------------------
# Blobs
# ---------------------------------------------------------------------------------------------------------------

def test_blob_digest_format_mismatch_and_success(url, tmp_path):
    data = uuid.uuid4().bytes * 64
    hexd = hashlib.sha256(data).hexdigest()
    digest = f"sha256:{hexd}"
    for bad in ("sha256:abc", "md5:" + "0" * 64, "sha256:" + "g" * 64):
        assert (httpx.head(f"{url}/api/blobs/{bad}").status_code) == 400
        r = httpx.post(f"{url}/api/blobs/{bad}", content=data)
        assert (r.status_code, _err(r)) == (400, "invalid digest format")
    r = httpx.head(f"{url}/api/blobs/{digest}")
    assert r.status_code == 404
    # A body that does not hash to the path's digest is refused and not kept.
    wrong = "sha256:" + "0" * 64
    r = httpx.post(f"{url}/api/blobs/{wrong}", content=data)
    assert r.status_code == 400
    assert _err(r) == f'digest mismatch, expected "{wrong}", got "{digest}"'
    assert httpx.head(f"{url}/api/blobs/{wrong}").status_code == 404
    # Upper-case hex or the sha256- form never match the computed lower-case sha256:<hex>.
    upper = f"sha256:{hexd.upper()}"
    r = httpx.post(f"{url}/api/blobs/{upper}", content=data)
    assert r.status_code == 400 and _err(r) == f'digest mismatch, expected "{upper}", got "{digest}"'
    assert httpx.post(f"{url}/api/blobs/{digest}", content=data).status_code == 201
    assert httpx.post(f"{url}/api/blobs/{digest}", content=data).status_code == 200  # already there
    assert httpx.head(f"{url}/api/blobs/{digest}").status_code == 200
    # The official client's create_blob accepts the 200/201 and returns the digest.
    p = tmp_path / "blob.bin"
    p.write_bytes(data)
    assert _upload(url, p) == digest


def test_head_missing_blob_message(url):
    digest = "sha256:" + "1" * 64
    r = httpx.head(f"{url}/api/blobs/{digest}")
    assert r.status_code == 404 and r.content == b""  # HEAD answers carry no body


# ---------------------------------------------------------------------------------------------------------------
# Create: validation, streaming, replace
# ---------------------------------------------------------------------------------------------------------------

def test_create_validation_errors(url, random_gguf, tmp_path):
    digest = _upload(url, random_gguf)
    not_gguf = tmp_path / "notes.txt"
    not_gguf.write_bytes(b"plain text, not a model " + uuid.uuid4().bytes)
    text_digest = _upload(url, not_gguf)
    missing = "sha256:" + hashlib.sha256(uuid.uuid4().bytes).hexdigest()

    def create(body):
        return httpx.post(url + "/api/create", json={"stream": False, **body}, timeout=60)

    cases = [
        ({"model": _name()}, 400, "neither 'from' or 'files' was specified"),
        ({"model": "bad name!", "files": {"m.gguf": digest}}, 400, "invalid model name"),
        ({"model": "a/b/c/d", "files": {"m.gguf": digest}}, 400, "invalid model name"),
        ({"model": "m:", "files": {"m.gguf": digest}}, 400, "invalid model name"),
        ({"model": _name(), "files": {"../m.gguf": digest}}, 400, "file path must be relative"),
        ({"model": _name(), "files": {"/abs/m.gguf": digest}}, 400, "file path must be relative"),
        ({"model": _name(), "files": {"m.gguf": ""}}, 400, "invalid digest format"),
        ({"model": _name(), "files": {"notes": text_digest}}, 400, "unknown type"),
        ({"model": _name(), "files": {"m.gguf": text_digest}}, 400, "supplied file was not in GGUF format"),
        ({"model": _name(), "files": {"m.gguf": missing}}, 500, "no such file"),
        ({"model": _name(), "files": {"m.gguf": digest}, "template": "{{ .Prompt"}, 400, "template"),
        ({"model": _name(), "files": {"m.gguf": digest}, "quantize": "q3_bogus"}, 500,
         "unsupported quantization type q3_bogus"),
    ]
    for body, status, message in cases:
        r = create(body)
        assert r.status_code == status, (body, r.status_code, r.text)
        assert message in _err(r), (body, _err(r))
    # Nothing was registered by any of them.
    listed = {m.model for m in ollama.Client(url).list().models}
    assert not any(body.get("model") in listed for body, _, _ in cases)


def test_create_streams_status_lines_and_errors_after_start_are_lines(url, random_gguf, names):
    digest = _upload(url, random_gguf)
    name = _name()
    names.append(name)
    with httpx.stream("POST", url + "/api/create", json={"model": name, "files": {"m.gguf": digest},
                                                         "template": CHATML}, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(x) for x in r.iter_lines() if x]
    statuses = [x["status"] for x in lines]
    assert statuses[-1] == "success" and "writing manifest" in statuses
    assert any(s == f"using existing layer {digest}" for s in statuses)  # the uploaded GGUF becomes a layer
    assert any(s.startswith("creating new layer sha256:") or s.startswith("using existing layer sha256:")
               for s in statuses if s != f"using existing layer {digest}")
    # A template error is found after the stream started: one more NDJSON line, HTTP status stays 200.
    with httpx.stream("POST", url + "/api/create", json={"model": _name(), "files": {"m.gguf": digest},
                                                         "template": "{{ if }}"}, timeout=60) as r:
        assert r.status_code == 200
        lines = [json.loads(x) for x in r.iter_lines() if x]
    assert "error" in lines[-1] and "template" in lines[-1]["error"]
    with pytest.raises(ollama.ResponseError) as e:
        _create(url, _name(), digest, template="{{ end }}")
    assert e.value.status_code == -1  # the client raises a streamed error line with status -1


def test_recreate_replaces_and_tags_show_details(url, random_gguf, names):
    digest = _upload(url, random_gguf)
    client = ollama.Client(url)
    name = _name()
    names.append(name)
    _create(url, name, digest, template=CHATML, system="first")
    _create(url, name, digest, template=CHATML, system="second",
            parameters={"stop": ["<|im_end|>", "<|im_start|>"], "temperature": 0.7, "num_predict": 40})
    models = [m for m in client.list().models if m.model == name]
    assert len(models) == 1
    m = models[0]
    assert m.details.format == "gguf" and m.details.family == "qwen2" and m.details.families == ["qwen2"]
    assert m.details.quantization_level == "F16"
    assert m.details.parameter_size.endswith("K")  # a ~140K-parameter fixture: HumanNumber "140K"
    assert m.size > random_gguf.stat().st_size and len(m.digest) == 64
    raw = httpx.get(url + "/api/tags").json()["models"]
    entry = next(x for x in raw if x["model"] == name)
    assert entry["name"] == name and entry["details"]["parent_model"] == ""
    show = httpx.post(url + "/api/show", json={"model": name}).json()
    assert show["system"] == "second" and show["template"] == CHATML
    assert show["parameters"].splitlines() == [
        'num_predict                    40',
        'stop                           "<|im_end|>"',
        'stop                           "<|im_start|>"',
        'temperature                    0.7',
    ]
    mf = show["modelfile"].splitlines()
    assert mf[:4] == ['# Modelfile generated by "ollama show"',
                      "# To build a new Modelfile based on this, replace FROM with:", f"# FROM {name}", ""]
    assert mf[4].startswith("FROM ") and mf[4].endswith(digest.replace(":", "-"))
    assert "PARAMETER stop <|im_end|>" in mf and "SYSTEM second" in mf
    info = show["model_info"]
    assert info["general.architecture"] == "qwen2" and info["general.parameter_count"] > 0
    assert info["tokenizer.ggml.tokens"] is None  # arrays are null without verbose
    assert "general.name" not in info and "tokenizer.chat_template" not in info
    assert show["capabilities"] == ["completion"]
    verbose = httpx.post(url + "/api/show", json={"model": name, "verbose": True}).json()["model_info"]
    assert isinstance(verbose["tokenizer.ggml.tokens"], list) and len(verbose["tokenizer.ggml.tokens"]) > 100
    # The client parses it (model_info must be present).
    s = client.show(name)
    assert s.details.quantization_level == "F16" and s.modelinfo["general.architecture"] == "qwen2"


def test_unknown_model_and_invalid_names(url):
    client = ollama.Client(url)
    missing = f"forge-test-missing-{uuid.uuid4().hex[:8]}"
    checks = [
        (httpx.post(url + "/api/show", json={"model": missing}), 404, f"model '{missing}:latest' not found"),
        (httpx.post(url + "/api/show", json={}), 400, "model is required"),
        (httpx.post(url + "/api/show", json={"model": "bad name!"}), 400, "invalid model name"),
        (httpx.post(url + "/api/chat", json={"model": missing, "messages": []}), 404, f"model '{missing}' not found"),
        (httpx.post(url + "/api/chat", json={"model": "", "messages": []}), 400, "model is required"),
        (httpx.post(url + "/api/chat", json={"model": "bad name!", "messages": []}), 400, "invalid model name"),
        (httpx.post(url + "/api/generate", json={"model": missing, "prompt": "x"}), 404,
         f"model '{missing}' not found"),
        (httpx.request("DELETE", url + "/api/delete", json={"model": missing}), 404, f"model '{missing}' not found"),
        (httpx.request("DELETE", url + "/api/delete", json={"model": "bad name!"}), 400, 'name "bad name!" is invalid'),
        (httpx.post(url + "/api/copy", json={"source": missing, "destination": "x"}), 404,
         f'model "{missing}" not found'),
        (httpx.post(url + "/api/copy", json={"source": "bad name!", "destination": "x"}), 400,
         'source "bad name!" is invalid'),
        (httpx.post(url + "/api/copy", json={"source": missing, "destination": "bad name!"}), 400,
         'destination "bad name!" is invalid'),
    ]
    for r, status, message in checks:
        assert (r.status_code, _err(r)) == (status, message), r.request.url
    with pytest.raises(ollama.ResponseError) as e:
        client.show(missing)
    assert e.value.status_code == 404 and str(e.value) == f"model '{missing}:latest' not found (status code: 404)"


def test_copy_and_delete_answer_empty_200(url, random_gguf, names):
    digest = _upload(url, random_gguf)
    a, b = _name("a"), _name("b")
    names.extend([a, b])
    _create(url, a, digest, template=CHATML)
    r = httpx.post(url + "/api/copy", json={"source": a, "destination": b})
    assert (r.status_code, r.content) == (200, b"")
    listed = {m.model: m.digest for m in ollama.Client(url).list().models}
    assert listed[a] == listed[b]  # a copy is the same manifest
    r = httpx.request("DELETE", url + "/api/delete", json={"model": b})
    assert (r.status_code, r.content) == (200, b"")
    assert b not in {m.model for m in ollama.Client(url).list().models}
    assert ollama.Client(url).delete(a).status == "success"


# ---------------------------------------------------------------------------------------------------------------
# Chat and generate
# ---------------------------------------------------------------------------------------------------------------

def test_chat_load_unload_ps_and_limits(url, random_gguf, names):
    digest = _upload(url, random_gguf)
    name = _name()
    names.append(name)
    _create(url, name, digest, template=CHATML, parameters={"num_predict": 5, "temperature": 0.0})
    r = httpx.post(url + "/api/chat", json={"model": name, "messages": []}, timeout=60).json()
    assert r["done"] is True and r["done_reason"] == "load" and r["message"] == {"role": "assistant", "content": ""}
    ps = ollama.Client(url).ps()
    assert any(m.model == name and m.details.family == "qwen2" for m in ps.models)
    # The registered num_predict applies: a random model talks until the limit.
    chunks = list(ollama.Client(url).chat(name, messages=[{"role": "user", "content": "hi"}], stream=True))
    final = chunks[-1]
    assert final.done and final.done_reason == "length" and final.eval_count == 5
    assert final.prompt_eval_count > 0 and final.total_duration > 0 and final.eval_duration > 0
    assert all(not c.done for c in chunks[:-1]) and final.message.content == ""
    # Request options override the registered ones.
    r = ollama.Client(url).chat(name, messages=[{"role": "user", "content": "hi"}], options={"num_predict": 2})
    assert r.done_reason == "length" and r.eval_count == 2 and r.message.role == "assistant"
    # A wrongly typed option is an error, as in Ollama.
    bad = httpx.post(url + "/api/chat", json={"model": name, "messages": [{"role": "user", "content": "x"}],
                                              "options": {"stop": "<|im_end|>"}, "stream": False}, timeout=60)
    assert bad.status_code >= 400 and 'option "stop" must be of type array' in _err(bad)
    r = httpx.post(url + "/api/chat", json={"model": name, "messages": [], "keep_alive": 0}, timeout=60).json()
    assert r["done_reason"] == "unload"


def test_prompt_is_rendered_from_the_registered_template(url, random_gguf, names):
    """prompt_eval_count equals the token count of the registered TEMPLATE's rendering (SYSTEM and MESSAGE
    history included): a different TEMPLATE gives a different prompt, so a wrong Modelfile shows."""
    from llama_cpp import Llama

    from ollama_forge import formats

    digest = _upload(url, random_gguf)
    a, b = _name("chatml"), _name("plain")
    names.extend([a, b])
    history = [{"role": "user", "content": "Earlier question"}, {"role": "assistant", "content": "Earlier answer"}]
    _create(url, a, digest, template=formats.load("chatml").ollama_template, system="Be brief.",
            messages=history, parameters={"num_predict": 1})
    _create(url, b, digest, template="{{ .Prompt }}", parameters={"num_predict": 1})
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    got_a = ollama.Client(url).chat(a, messages=msgs).prompt_eval_count
    got_b = ollama.Client(url).chat(b, messages=msgs).prompt_eval_count
    llm = Llama(str(random_gguf), vocab_only=True, verbose=False)
    expected = formats.render_prompt(formats.load("chatml"), history + msgs, system="Be brief.")
    want_a = len(llm.tokenize(expected.encode(), add_bos=True, special=True))
    want_b = len(llm.tokenize(msgs[0]["content"].encode(), add_bos=True, special=True))
    llm.close()
    assert (got_a, got_b) == (want_a, want_b)


def test_registered_stop_string_cuts_the_answer(url, random_gguf, names):
    digest = _upload(url, random_gguf)
    name = _name()
    names.append(name)
    _create(url, name, digest, template=CHATML, parameters={"num_predict": 24, "temperature": 0.0, "seed": 1})
    free = ollama.Client(url).chat(name, messages=[{"role": "user", "content": "hi"}]).message.content
    assert len(free) >= 4
    stop = free[2:4]  # a string the greedy answer is known to contain
    _create(url, name, digest, template=CHATML,
            parameters={"num_predict": 24, "temperature": 0.0, "seed": 1, "stop": [stop]})
    r = ollama.Client(url).chat(name, messages=[{"role": "user", "content": "hi"}])
    assert r.done_reason == "stop" and stop not in r.message.content
    assert free.startswith(r.message.content) and len(r.message.content) <= free.index(stop)


def test_generate_stream_and_context(url, random_gguf, names):
    digest = _upload(url, random_gguf)
    name = _name()
    names.append(name)
    _create(url, name, digest, template=CHATML, parameters={"num_predict": 3})
    parts = list(ollama.Client(url).generate(name, "hello", stream=True))
    assert parts[-1].done and parts[-1].done_reason == "length" and parts[-1].eval_count == 3
    assert parts[-1].context and all(isinstance(t, int) for t in parts[-1].context)
    r = httpx.post(url + "/api/generate", json={"model": name, "prompt": ""}, timeout=60).json()
    assert r["done_reason"] == "load"
    r = httpx.post(url + "/api/generate", json={"model": name, "prompt": "x", "raw": True, "system": "s"})
    assert (r.status_code, _err(r)) == (400, "raw mode does not support template, system, or context")


# ---------------------------------------------------------------------------------------------------------------
# Stand-in only: test hooks and the entry point
# ---------------------------------------------------------------------------------------------------------------

def test_mid_stream_error_is_an_ndjson_line(standin_url, random_gguf):
    url = standin_url
    digest = _upload(url, random_gguf)
    name = _name()
    _create(url, name, digest, template=CHATML, parameters={"num_predict": 8})
    testing.set_faults(url, chat_error={"after_chunks": 1, "message": "llama runner process has terminated"})
    with httpx.stream("POST", url + "/api/chat", json={"model": name, "messages": [{"role": "user", "content": "x"}]},
                      timeout=60) as r:
        assert r.status_code == 200
        lines = [json.loads(x) for x in r.iter_lines() if x]
    assert lines[0]["done"] is False and lines[-1] == {"error": "llama runner process has terminated"}
    testing.set_faults(url, chat_error={"after_chunks": 0, "message": "boom"})
    r = httpx.post(url + "/api/chat", json={"model": name, "messages": [{"role": "user", "content": "x"}]},
                   timeout=60)
    assert (r.status_code, _err(r)) == (500, "boom")  # nothing written yet: a plain JSON error with its status
    ollama.Client(url).delete(name)


def test_module_entry_point_serves(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "tests.ollama_standin", "--port", "0", "--store",
                             str(tmp_path / "store")], cwd=testing.REPO, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        url = line.split("listening on ", 1)[1].split()[0]
        assert url.startswith("http://127.0.0.1:")
        assert httpx.get(url + "/").text == "Ollama is running"
        assert ollama.Client(url).list().models == []
        assert (tmp_path / "store" / "blobs").is_dir()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_human_number_matches_ollama():
    cases = {0: "0", 999: "999", 1000: "1K", 139_840: "140K", 1_000_000: "1M", 125_000_000: "125M",
             494_032_768: "494.03M", 1_000_000_000: "1B", 7_000_000_000: "7B", 2_850_000_000: "2.9B"}
    assert {n: human_number(n) for n in cases} == cases


@pytest.mark.go
def test_go_formatting_matches_the_go_toolchain(tmp_path):
    """%#v of float64 and strconv.Quote, as /api/show prints parameters, checked against Go itself."""
    import shutil

    go = shutil.which("go") or "/usr/lib/go/bin/go"
    floats = [40, 0.7, 1, 1e6, 123456, 1234567, 1e-4, 1e-5, 1e21, -2.5, 0.95, 1e-7, 0.1 + 0.2, 3.0e-3]
    strings = ["<|im_end|>", 'say "hi"\n\tok', "é ü 中", "\x01\x7f", "\u200b", "a\\b"]
    src = tmp_path / "main.go"
    src.write_text("package main\nimport (\"fmt\"; \"strconv\")\nfunc main() {\n"
                   + "".join(f"fmt.Printf(\"%#v\\n\", float64({x!r}))\n" for x in floats)
                   + "".join(f"fmt.Println(strconv.Quote({json.dumps(s)}))\n" for s in strings) + "}\n")
    env = {"GOPROXY": "off", "GOFLAGS": "-mod=mod", "GOCACHE": str(tmp_path / "cache"), "HOME": str(tmp_path),
           "PATH": "/usr/bin:/bin"}
    out = subprocess.run([go, "run", str(src)], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [go_float(float(x)) for x in floats] + [go_quote(s) for s in strings]


def test_timestamps_parse_and_tags_are_newest_first(standin_url, random_gguf):
    url = standin_url
    digest = _upload(url, random_gguf)
    first, second = _name("old"), _name("new")
    _create(url, first, digest, template=CHATML)
    time.sleep(1.1)  # Ollama sorts by modification time in whole seconds
    _create(url, second, digest, template=CHATML)
    order = [m.model for m in ollama.Client(url).list().models]
    assert order.index(second) < order.index(first)
    stamp = httpx.get(url + "/api/tags").json()["models"][0]["modified_at"]
    assert stamp.endswith("Z") and "T" in stamp
    for n in (first, second):
        ollama.Client(url).delete(n)
