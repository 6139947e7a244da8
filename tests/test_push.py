"""``forge push``: upload only what is missing, create, verify with /api/show, record lineage; refuse to clobber
models forge did not make; every failure one line, exit 2, and a rerun finishes the job.

The push tests run against the stand-in and, when one answers, a real Ollama (``ollama`` marker). Fault tests need
the stand-in's fault hooks, so they run against it only.
"""

from __future__ import annotations

import json
import socket
import uuid
from pathlib import Path

import ollama
import pytest

from ollama_forge.cli import main
from ollama_forge.errors import ForgeError
from ollama_forge import modelfile as mfmod
from ollama_forge import ollama as forge_ollama
from tests.ollama_standin import testing

@pytest.fixture
def standin_url() -> str:
    url = testing.standin().url
    yield url
    testing.clear_faults(url)


@pytest.fixture
def name(url):
    n = f"forge-test-push-{uuid.uuid4().hex[:8]}:v1"
    yield n
    client = ollama.Client(url)
    for m in client.list().models:
        if m.model.startswith(n.split(":")[0]):
            client.delete(m.model)


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def _one_error_line(err: str, command: str = "push") -> str:
    lines = [x for x in err.splitlines() if ": error:" in x or "Traceback" in x]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"forge {command}: error: "), err
    return lines[0]


# ---------------------------------------------------------------------------------------------------------------
# The happy path
# ---------------------------------------------------------------------------------------------------------------

def test_push_registers_verifies_and_second_push_uploads_nothing(url, name, run_dir, capsys):
    rc, out, err = _cli(capsys, "push", name, str(run_dir), "--host", url)
    assert rc == 0, err
    assert out.strip().splitlines()[-1] == f"ollama run {name}"
    assert "verified template, stops and F16" in err
    client = ollama.Client(url)
    listed = {m.model: m for m in client.list().models}
    assert listed[name].details.quantization_level == "F16" and listed[name].details.family == "qwen2"
    show = client.show(name)
    mf = mfmod.read(run_dir / "Modelfile")
    assert show.template == mf.template and "<|im_start|>" in show.template
    assert '"<|im_end|>"' in show.parameters and f"num_predict                    {testing.NUM_PREDICT}" in \
        show.parameters.splitlines()
    before = testing.stats(url)["blob_bytes_received"] if testing.is_standin(url) else None
    rc, out, err = _cli(capsys, "push", name, str(run_dir), "--host", url, "--json")
    assert rc == 0, err
    result = json.loads(out)
    assert result["uploaded_bytes"] == 0 and result["created"] is False and result["backup"] is None
    if before is not None:  # the server saw no upload at all
        assert testing.stats(url)["blob_bytes_received"] == before


def test_lineage_is_recorded_and_forge_models_lists_it(url, name, run_dir, capsys):
    rc, _, err = _cli(capsys, "push", name, str(run_dir), "--host", url)
    assert rc == 0, err
    lin = json.loads((run_dir / "lineage.json").read_text())
    assert lin["ollama_name"] == name and lin["quant_type"] == "F16" and lin["chat_format"] == "chatml"
    assert lin["base_model"] and Path(lin["base_model"]).name.startswith("qwen2-")
    assert len(lin["data_hash"]) == 64 and len(lin["recipe_hash"]) == 64
    assert lin["gguf_digest"] == forge_ollama.sha256_digest(run_dir / "model-f16.gguf")
    assert {"ollama-forge", "transformers", "peft", "trl", "llama_cpp_python"} <= set(lin["versions"])
    rc, out, _ = _cli(capsys, "models", "--host", url, "--json")
    models = {m["name"]: m for m in json.loads(out)}
    assert models[name]["lineage"]["gguf_digest"] == lin["gguf_digest"]
    rc, out, _ = _cli(capsys, "models", "--host", url)
    row = next(x for x in out.splitlines() if x.startswith(name))
    assert "F16" in row and "chatml" in row


def test_modelfile_written_for_by_hand_create(url, name, run_dir, capsys):
    assert not (run_dir / "Modelfile").exists()
    rc, _, err = _cli(capsys, "push", name, str(run_dir), "--host", url)
    assert rc == 0
    assert f"ollama create {name} -f {run_dir / 'Modelfile'}" in err
    mf = mfmod.read(run_dir / "Modelfile")
    assert mf.from_ == "./model-f16.gguf" and (run_dir / mf.from_).is_file()
    assert mf.parameters["stop"] == ["<|im_end|>", "<|im_start|>"]
    assert mf.parameters["num_predict"] == testing.NUM_PREDICT  # the recipe's ollama.parameters


def test_push_gguf_with_modelfile_elsewhere(url, name, run_dir, tmp_path, capsys):
    """--gguf with a Modelfile whose FROM is another file: the GGUF wins and a matching Modelfile is written."""
    mf, _ = mfmod.for_model(run_dir / "model-f16.gguf", chat_format="chatml", system="Answer briefly.")
    mf.from_ = "/nowhere/else.gguf"
    other = tmp_path / "elsewhere" / "Modelfile"
    other.parent.mkdir()
    mf.write(other)
    rc, _, err = _cli(capsys, "push", name, "--gguf", str(run_dir / "model-f16.gguf"), "--modelfile", str(other),
                      "--host", url)
    assert rc == 0, err
    written = run_dir / "model-f16.Modelfile"
    assert mfmod.read(written).from_ == "./model-f16.gguf" and mfmod.read(written).system == "Answer briefly."
    assert ollama.Client(url).show(name).modelfile.count("SYSTEM Answer briefly.") == 1


def test_second_push_is_a_no_op_even_if_ollama_rewrote_the_gguf(standin_url, run_dir, monkeypatch):
    """Ollama >= 0.30 may store a validated copy of the GGUF under another digest: forge's record of the request
    it sent still recognises the model, so nothing is uploaded, created or backed up."""
    name = f"forge-test-rewrite-{uuid.uuid4().hex[:8]}:v1"
    spec = forge_ollama.spec_from(run_dir)
    assert forge_ollama.push(name, spec, host=standin_url).created
    monkeypatch.setattr(forge_ollama, "_same_model", lambda *a: False)  # /api/show names another blob
    before = testing.stats(standin_url)
    again = forge_ollama.push(name, spec, host=standin_url)
    after = testing.stats(standin_url)
    assert (again.uploaded_bytes, again.created, again.backup) == (0, False, None)
    assert after["creates"] == before["creates"] and after["blob_bytes_received"] == before["blob_bytes_received"]


# ---------------------------------------------------------------------------------------------------------------
# Replacing models
# ---------------------------------------------------------------------------------------------------------------

def test_replacing_a_foreign_model_needs_force_then_rollback_restores(url, name, run_dir, capsys):
    client = ollama.Client(url)
    digest = client.create_blob(run_dir / "model-f16.gguf")
    for _ in client.create(model=name, files={"m.gguf": digest}, template="{{ .Prompt }}", system="theirs",
                           stream=True):
        pass
    theirs = {m.model: m.digest for m in client.list().models}[name]
    rc, _, err = _cli(capsys, "push", name, str(run_dir), "--host", url)
    assert rc == 2
    line = _one_error_line(err)
    assert "was not made by forge" in line and "--force" in line
    assert {m.model: m.digest for m in client.list().models}[name] == theirs  # untouched
    rc, _, err = _cli(capsys, "push", name, str(run_dir), "--host", url, "--force")
    assert rc == 0, err
    backup = forge_ollama.backup_name(name)
    listed = {m.model: m.digest for m in client.list().models}
    assert listed[backup] == theirs and listed[name] != theirs
    rc, out, err = _cli(capsys, "push", "--rollback", name, "--host", url)
    assert rc == 0, err
    listed = {m.model: m.digest for m in client.list().models}
    assert listed[name] == theirs and backup not in listed
    assert "SYSTEM theirs" in client.show(name).modelfile
    rc, _, err = _cli(capsys, "push", "--rollback", name, "--host", url)
    assert rc == 2 and "no backup" in _one_error_line(err)


def test_replacing_forges_own_model_needs_no_force(url, name, run_dir, capsys):
    assert _cli(capsys, "push", name, str(run_dir), "--host", url)[0] == 0
    first = {m.model: m.digest for m in ollama.Client(url).list().models}[name]
    # A changed Modelfile part (here SYSTEM) makes a new model; the old one is backed up, no --force needed.
    mf = mfmod.read(run_dir / "Modelfile")
    mf.system = "New system."
    mf.write(run_dir / "Modelfile")
    rc, _, err = _cli(capsys, "push", name, str(run_dir), "--host", url)
    assert rc == 0, err
    listed = {m.model: m.digest for m in ollama.Client(url).list().models}
    assert listed[forge_ollama.backup_name(name)] == first and listed[name] != first
    rc, out, _ = _cli(capsys, "models", "--host", url, "--json")
    assert {name, forge_ollama.backup_name(name)} <= {m["name"] for m in json.loads(out)}


# ---------------------------------------------------------------------------------------------------------------
# Failures: one line, exit 2, rerun finishes
# ---------------------------------------------------------------------------------------------------------------

def test_invalid_name_fails_before_any_request(run_dir, capsys, standin_url):
    before = len(testing.stats(standin_url)["requests"])
    rc, _, err = _cli(capsys, "push", "Bad Name!", str(run_dir), "--host", standin_url)
    assert rc == 2
    line = _one_error_line(err)
    assert "invalid Ollama model name 'Bad Name!'" in line
    assert len(testing.stats(standin_url)["requests"]) == before


def test_server_down_names_ollama_host(run_dir, capsys, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    monkeypatch.setenv("OLLAMA_HOST", f"127.0.0.1:{port}")
    rc, _, err = _cli(capsys, "push", "down:v1", str(run_dir))
    assert rc == 2
    line = _one_error_line(err)
    assert f"Ollama is not running at http://127.0.0.1:{port} (OLLAMA_HOST=127.0.0.1:{port})" in line
    assert "ollama serve" in line


@pytest.mark.parametrize("status,message,said", [
    (500, "write manifest: no space left", "failed"),
    (400, "invalid model name", "refused"),  # e.g. an Ollama whose name rules are stricter than forge's copy
])
def test_create_refused_then_rerun_succeeds(standin_url, run_dir, capsys, status, message, said):
    name = f"forge-test-fault-{uuid.uuid4().hex[:8]}:v1"
    testing.set_faults(standin_url, create_error={"status": status, "message": message})
    rc, _, err = _cli(capsys, "push", name, str(run_dir), "--host", standin_url)
    assert rc == 2
    assert f"Ollama {said} create {name}: {message} (HTTP {status})" in _one_error_line(err)
    rc, out, err = _cli(capsys, "push", name, str(run_dir), "--host", standin_url, "--json")
    assert rc == 0, err
    assert json.loads(out)["uploaded_bytes"] == 0  # the blob from the failed run was kept


def test_error_line_during_create_shows_ollamas_message(standin_url, run_dir, capsys):
    name = f"forge-test-fault-{uuid.uuid4().hex[:8]}:v1"
    testing.set_faults(standin_url, create_error={"after_lines": 1, "message": "error loading model: bad tensor"})
    rc, _, err = _cli(capsys, "push", name, str(run_dir), "--host", standin_url)
    assert rc == 2
    assert "error loading model: bad tensor" in _one_error_line(err)
    assert _cli(capsys, "push", name, str(run_dir), "--host", standin_url)[0] == 0


def test_connection_dropped_mid_upload_then_rerun_succeeds(standin_url, run_dir, capsys):
    name = f"forge-test-fault-{uuid.uuid4().hex[:8]}:v1"
    gguf = run_dir / "model-f16.gguf"
    testing.set_faults(standin_url, drop_upload={"after_bytes": gguf.stat().st_size // 3})
    # A fresh GGUF (one byte of padding changes the digest) so the stand-in has not seen it before.
    with open(gguf, "ab") as f:
        f.write(b"\0" * 32)
    rc, _, err = _cli(capsys, "push", name, str(run_dir), "--host", standin_url)
    assert rc == 2
    line = _one_error_line(err)
    assert "connection to Ollama" in line and "lost during the upload of model-f16.gguf" in line
    new_digest = forge_ollama.sha256_digest(gguf)
    with forge_ollama.Ollama(standin_url) as conn:
        assert not conn.has_blob(new_digest)  # the partial upload left nothing that looks done
    rc, out, err = _cli(capsys, "push", name, str(run_dir), "--host", standin_url, "--json")
    assert rc == 0, err
    assert json.loads(out)["uploaded_bytes"] == gguf.stat().st_size


def test_slow_server_times_out_then_rerun_succeeds(standin_url, run_dir, capsys):
    name = f"forge-test-fault-{uuid.uuid4().hex[:8]}:v1"
    testing.set_faults(standin_url, delay={"seconds": 2.0, "path": "/api/version"})
    rc, _, err = _cli(capsys, "push", name, str(run_dir), "--host", standin_url, "--timeout", "0.5")
    assert rc == 2
    line = _one_error_line(err)
    assert "did not answer the version check within 0.5 s" in line and "--timeout" in line
    assert _cli(capsys, "push", name, str(run_dir), "--host", standin_url, "--timeout", "30")[0] == 0


def test_verify_catches_a_server_that_reports_another_quantization(standin_url, run_dir, monkeypatch):
    """The post-create check compares /api/show with what was sent (here: the GGUF's quantization level)."""
    spec = forge_ollama.spec_from(run_dir)
    monkeypatch.setattr(forge_ollama, "gguf_quant_level", lambda path: "Q4_K_M")
    with pytest.raises(ForgeError, match="quantization level is F16, the GGUF says Q4_K_M"):
        forge_ollama.push(f"forge-test-verify-{uuid.uuid4().hex[:8]}:v1", spec, host=standin_url)


def test_push_needs_something_to_register(capsys, standin_url):
    rc, _, err = _cli(capsys, "push", "x:v1", "--host", standin_url)
    assert rc == 2 and "needs something to register" in _one_error_line(err)


# ---------------------------------------------------------------------------------------------------------------
# Host parsing: the client's documented OLLAMA_HOST rules
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("host,url", [
    (None, "http://127.0.0.1:11434"), ("1.2.3.4", "http://1.2.3.4:11434"), (":56789", "http://127.0.0.1:56789"),
    ("http://example.com", "http://example.com:80"), ("https://example.com", "https://example.com:443"),
    ("example.com:56789/path/", "http://example.com:56789/path"), ("[::1]:5678", "http://[::1]:5678"),
])
def test_base_url_follows_the_clients_rules(host, url, monkeypatch):
    monkeypatch.delenv("OLLAMA_HOST", raising=False)
    assert forge_ollama.base_url(host) == url
    from ollama._client import _parse_host

    assert _parse_host(host) == url  # the official client agrees
