"""Chat backends: one protocol (text pieces, then stats); the in-process llama.cpp backend prompts and stops exactly
as Ollama does with the pushed Modelfile (checked against the stand-in, which renders the registered TEMPLATE
with the Go renderer)."""

from __future__ import annotations

import uuid
from pathlib import Path

import ollama
import pytest

from ollama_forge import formats
from ollama_forge import ollama as forge_ollama
from ollama_forge.backends import ChatStats, ChatStream, open_backend
from ollama_forge.errors import ForgeError
from tests.ollama_standin import testing


@pytest.fixture(scope="module")
def trained(tiny_model, tiny_model_root) -> Path:
    return testing.trained_run(tiny_model_root, tiny_model("qwen2"))


@pytest.fixture(scope="module")
def random_gguf(tiny_model, tiny_model_root) -> Path:
    return testing.random_gguf(tiny_model_root, tiny_model("qwen2"))


@pytest.fixture(scope="module")
def trained_backend(trained):
    b = open_backend(str(trained / "model-f16.gguf"), "llamacpp")
    yield b
    b.close()


@pytest.fixture(scope="module")
def random_backend(random_gguf):
    b = open_backend(str(random_gguf), "auto", chat_format="chatml")
    yield b
    b.close()


def test_in_process_answer_streams_and_stops(trained_backend):
    stream = trained_backend.chat([{"role": "user", "content": testing.QUESTION}])
    assert isinstance(stream, ChatStream) and stream.stats is None
    pieces = list(stream)
    assert "".join(pieces) == testing.ANSWER and len(pieces) >= 2
    st = stream.stats
    assert isinstance(st, ChatStats) and st.backend == "llamacpp" and st.done_reason == "stop"
    assert 0 < st.tokens <= 8 and st.prompt_tokens > 0 and st.ttft_s > 0 and st.total_s >= st.ttft_s
    assert trained_backend.format.name == "chatml" and trained_backend.stops == ["<|im_end|>", "<|im_start|>"]


def test_prompt_is_the_registry_rendering(trained_backend):
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    assert trained_backend.prompt(msgs) == formats.render_prompt(formats.load("chatml"), msgs)
    assert trained_backend.prompt(msgs) == ("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\na<|im_end|>\n"
                                            "<|im_start|>assistant\nb<|im_end|>\n<|im_start|>user\nc<|im_end|>\n"
                                            "<|im_start|>assistant\n")


def test_limits_greedy_and_stop_option(random_backend):
    msgs = [{"role": "user", "content": "hello there"}]
    a = random_backend.chat(msgs, {"num_predict": 12, "temperature": 0})
    text = a.text()
    assert a.stats.done_reason == "length" and a.stats.tokens == 12
    b = random_backend.chat(msgs, {"num_predict": 12, "temperature": 0})
    assert b.text() == text  # greedy is reproducible
    stop = text[3:5]
    c = random_backend.chat(msgs, {"num_predict": 12, "temperature": 0, "stop": [stop]})
    cut = c.text()
    assert c.stats.done_reason == "stop" and stop not in cut and text.startswith(cut)


def test_in_process_matches_the_standin_prompt_and_greedy_answer(random_gguf, random_backend, tmp_path,
                                                                monkeypatch):
    """Same conversation through Ollama's path (the stand-in: registered Go TEMPLATE, Go renderer) and in-process
    (registry Jinja): the prompts have the same tokens and greedy decoding gives the same text."""
    monkeypatch.setenv("FORGE_DATA_DIR", str(tmp_path / "forge-data"))
    url = testing.standin().url
    name = f"forge-test-parity-{uuid.uuid4().hex[:8]}:v1"
    gguf = tmp_path / "model.gguf"  # push writes a Modelfile beside the GGUF: keep the shared cache clean
    gguf.write_bytes(random_gguf.read_bytes())
    spec = forge_ollama.spec_from(gguf=gguf, chat_format="chatml", system="You answer briefly.")
    spec.parameters.update({"temperature": 0.0, "num_predict": 10})
    forge_ollama.push(name, spec, host=url)
    msgs = [{"role": "user", "content": "one"}, {"role": "assistant", "content": "two"},
            {"role": "user", "content": "three"}]
    try:
        # Unload first so the stand-in evaluates the whole prompt afresh, as the new in-process model does (a
        # reused KV-cache prefix changes the batch split, and near-tied logits of a random model could then flip).
        ollama.Client(url).chat(name, messages=[], keep_alive=0)
        via_ollama = ollama.Client(url).chat(name, messages=msgs)
    finally:
        ollama.Client(url).delete(name)
    backend = open_backend(str(random_gguf), "llamacpp", chat_format="chatml", system="You answer briefly.")
    try:
        local = backend.chat(msgs, {"temperature": 0.0, "num_predict": 10})
        text = local.text()
    finally:
        backend.close()
    assert local.stats.prompt_tokens == via_ollama.prompt_eval_count
    assert text == via_ollama.message.content and local.stats.done_reason == via_ollama.done_reason


def test_open_backend_refuses_what_it_cannot_run(tiny_model, random_gguf, tmp_path, monkeypatch):
    monkeypatch.setenv("OLLAMA_HOST", "127.0.0.1:9")  # nothing there
    with pytest.raises(ForgeError, match="convert it first"):
        open_backend(str(tiny_model("qwen2")), "auto")
    with pytest.raises(ForgeError, match="is a GGUF file, not an Ollama model"):
        open_backend(str(random_gguf), "ollama")
    with pytest.raises(ForgeError, match="needs a GGUF file"):
        open_backend("some-model:v1", "llamacpp")
    with pytest.raises(ForgeError, match="unknown backend"):
        open_backend(str(random_gguf), "vllm")
    with pytest.raises(ForgeError, match="unknown chat format"):
        open_backend(str(random_gguf), "llamacpp", chat_format="no-such-format")
    empty = tmp_path / "emptyrun"
    empty.mkdir()
    with pytest.raises(ForgeError, match="no GGUF in this run directory"):
        open_backend(str(empty), "auto")


def test_chat_stream_protocol():
    def gen():
        yield "a"
        yield "b"
        yield ChatStats("x", "m", 1, 2, 3.0, 0.1, 0.2, "stop")

    s = ChatStream(gen())
    assert s.stats is None and s.text() == "ab" and s.stats.done_reason == "stop"
    assert s.stats.summary() == "2 tokens, 3.0 tok/s, first token 0.10 s, stop"


def test_stop_filter_holds_a_split_stop_string_back_and_cuts_at_it():
    from ollama_forge.backends import StopFilter

    f = StopFilter(["<|im_end|>", "\n\nUser:"])
    shown = [f.feed(p) for p in ["Par", "is.<|im", "_e"]]
    assert shown == ["Par", "is.", ""] and not f.hit  # "<|im_e" could still become the stop: held
    assert f.feed("nd|> trailing") == "" and f.hit
    assert f.flush() == ""
    g = StopFilter(["<|im_end|>"])
    assert g.feed("4 <|im") == "4 " and g.flush("") == "<|im"  # generation ended: the held tail was answer text
    assert StopFilter([]).feed("abc") == "abc"
