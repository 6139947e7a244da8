"""End to end: a model trained briefly to answer and stop is pushed, listed, shown and chatted with through the
official client, and through ``forge chat`` (Ollama backend, in-process backend, side by side).

Runs against the stand-in and, when one answers at OLLAMA_HOST, a real Ollama (``ollama`` marker).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import ollama
import pytest

from ollama_forge import ollama as forge_ollama
from ollama_forge.cli import main
from tests.ollama_standin import testing

@pytest.fixture
def pushed(url, run_dir):
    """(url, name, run_dir) of the trained model pushed with forge; deleted afterwards."""
    name = f"forge-test-chat-{uuid.uuid4().hex[:8]}:v1"
    forge_ollama.push(name, forge_ollama.spec_from(run_dir), host=url)
    yield url, name, run_dir
    try:
        ollama.Client(url).delete(name)
    except ollama.ResponseError:
        pass


def test_push_tags_show_chat_end_to_end(url, run_dir):
    """Done-when 1: the answer streams and ends with done_reason "stop", eval_count below num_predict; a second
    push uploads zero bytes."""
    name = f"forge-test-e2e-{uuid.uuid4().hex[:8]}:v1"
    client = ollama.Client(url)
    try:
        first = forge_ollama.push(name, forge_ollama.spec_from(run_dir), host=url)
        assert first.uploaded_bytes in (0, (run_dir / "model-f16.gguf").stat().st_size) and first.created
        tags = {m.model: m for m in client.list().models}
        assert tags[name].details.quantization_level == "F16" and tags[name].details.family == "qwen2"
        show = client.show(name)
        assert "<|im_start|>assistant" in show.template
        assert f"num_predict                    {testing.NUM_PREDICT}" in show.parameters.splitlines()
        chunks = list(client.chat(name, messages=[{"role": "user", "content": testing.QUESTION}], stream=True))
        final = chunks[-1]
        text = "".join(c.message.content for c in chunks)
        assert text == testing.ANSWER
        assert len([c for c in chunks if c.message.content]) >= 2  # it streamed, piece by piece
        assert final.done and final.done_reason == "stop"
        assert 0 < final.eval_count < testing.NUM_PREDICT
        assert final.prompt_eval_count > 0 and final.eval_duration > 0
        second = forge_ollama.push(name, forge_ollama.spec_from(run_dir), host=url)
        assert second.uploaded_bytes == 0 and not second.created
    finally:
        try:
            client.delete(name)
        except ollama.ResponseError:
            pass


def test_ollama_backend_streams_with_stats(pushed):
    from ollama_forge.backends import open_backend

    url, name, _ = pushed
    backend = open_backend(name, "auto", host=url)
    try:
        assert backend.name == "ollama"
        stream = backend.chat([{"role": "user", "content": testing.QUESTION}])
        pieces = list(stream)
        assert "".join(pieces) == testing.ANSWER
        st = stream.stats
        assert st.done_reason == "stop" and 0 < st.tokens < testing.NUM_PREDICT
        assert st.ttft_s > 0 and st.total_s >= st.ttft_s and st.tokens_per_s > 0 and st.prompt_tokens > 0
    finally:
        backend.close()


def test_forge_chat_one_shot_json(pushed, capsys):
    url, name, _ = pushed
    rc = main(["chat", name, "--host", url, "-p", testing.QUESTION, "--json"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    answer = json.loads(out.strip().splitlines()[-1])
    assert answer["text"] == testing.ANSWER and answer["stats"]["done_reason"] == "stop"
    assert answer["stats"]["backend"] == "ollama"


def test_forge_chat_side_by_side_ollama_and_in_process(pushed, capsys):
    url, name, run_dir = pushed
    gguf = str(run_dir / "model-f16.gguf")
    rc = main(["chat", name, "--vs", gguf, "--host", url, "-p", testing.QUESTION])
    out, err = capsys.readouterr()
    assert rc == 0, err
    rows = out.splitlines()
    assert name in rows[0] and rows[0].rstrip().endswith(gguf[-20:])  # one column per model
    answer_row = rows[2]
    left, right = (c.strip() for c in answer_row.split("│"))
    assert left == testing.ANSWER and right == testing.ANSWER
    footer = "".join(c.strip() for r in rows[3:] for c in r.split("│")[:1])  # left column's stats, wrapped
    assert footer.startswith("[") and "tok/s" in footer and footer.endswith("stop]"), out
    assert "backend=llamacpp" in err


def test_forge_chat_run_dir_prefers_ollama_then_falls_back(pushed, capsys, monkeypatch):
    """auto on a run directory: Ollama when it answers and has the run's pushed model, else its GGUF in-process."""
    url, name, run_dir = pushed
    rc = main(["chat", str(run_dir), "--host", url, "-p", testing.QUESTION, "--json"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert json.loads(out.splitlines()[-1])["stats"]["backend"] == "ollama"
    rc = main(["chat", str(run_dir), "--host", "127.0.0.1:9", "-p", testing.QUESTION, "--json"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    result = json.loads(out.splitlines()[-1])
    assert result["stats"]["backend"] == "llamacpp" and result["text"] == testing.ANSWER


def test_forge_chat_ollama_down_is_one_line(capsys, monkeypatch):
    monkeypatch.setenv("OLLAMA_HOST", "127.0.0.1:9")
    rc = main(["chat", "some-model:v1", "--backend", "ollama", "-p", "hi"])
    _, err = capsys.readouterr()
    assert rc == 2
    errors = [x for x in err.splitlines() if ": error:" in x]
    assert len(errors) == 1 and "Ollama is not running at http://127.0.0.1:9 (OLLAMA_HOST=127.0.0.1:9)" in errors[0]


def test_forge_chat_mid_answer_error_is_one_line(run_dir, capsys):
    url = testing.standin().url
    name = f"forge-test-midstream-{uuid.uuid4().hex[:8]}:v1"
    forge_ollama.push(name, forge_ollama.spec_from(run_dir), host=url)
    testing.set_faults(url, chat_error={"after_chunks": 1, "message": "llama runner process has terminated"})
    try:
        rc = main(["chat", name, "--host", url, "-p", testing.QUESTION])
        _, err = capsys.readouterr()
    finally:
        testing.clear_faults(url)
        ollama.Client(url).delete(name)
    assert rc == 2
    errors = [x for x in err.splitlines() if ": error:" in x]
    assert len(errors) == 1 and "llama runner process has terminated" in errors[0]



def test_forge_chat_repl_reads_stdin_with_commands(run_dir, capsys, monkeypatch):
    """Without a terminal the REPL takes one prompt per line; /reset clears the history, /bye ends."""
    import io

    lines = f"{testing.QUESTION}\n/reset\nSay hello.\n/bye\nWhat is two plus two?\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(lines))
    rc = main(["chat", str(run_dir / "model-f16.gguf"), "--no-stats"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert out.splitlines() == [testing.ANSWER, "Hello!"]  # the second answer had a fresh history; /bye stopped
    assert "(history cleared)" in err
