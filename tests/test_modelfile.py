"""Modelfile: Ollama's parser rules, rendering that never writes a broken file, and `forge modelfile`."""

from __future__ import annotations

from pathlib import Path

import pytest

from ollama_forge import formats
from ollama_forge import modelfile as M
from ollama_forge.cli import main
from ollama_forge.errors import ForgeError
from tests.gotemplate import parity



# ---- parsing follows Ollama's parser (parser/parser.go) ----

EXAMPLE = '''# a comment at the start of a line
from ./model.gguf
   # an indented comment is a comment too
PARAMETER temperature 0.7
parameter stop "<|im_end|>"
PARAMETER stop <|im_start|>
PARAMETER num_ctx 8192
PARAMETER use_mmap false
SYSTEM   inner   spaces kept # not a comment here   
TEMPLATE """{{ .System }}
{{ .Prompt }}"""
MESSAGE user "no \\n escapes"
MESSAGE assistant """two
lines"""
License MIT
LICENSE """Apache
2.0"""
ADAPTER ./adapter.gguf
'''


def test_parse_reads_every_command_as_ollama_does():
    mf = M.parse(EXAMPLE)
    assert mf.from_ == "./model.gguf" and mf.adapter == "./adapter.gguf"
    assert mf.template == "{{ .System }}\n{{ .Prompt }}"
    assert mf.system == "inner   spaces kept # not a comment here"  # unquoted: runs to end of line, trimmed
    assert mf.parameters == {"temperature": 0.7, "stop": ["<|im_end|>", "<|im_start|>"], "num_ctx": 8192,
                             "use_mmap": False}
    assert [(m.role, m.content) for m in mf.messages] == [("user", "no \\n escapes"), ("assistant", "two\nlines")]
    assert mf.license == ["MIT", "Apache\n2.0"]


def test_parse_keeps_carriage_returns_inside_quotes_and_drops_non_printables():
    mf = M.parse('FROM x\r\nSYSTEM "a\r\nb"\r\nTEMPLATE a\x00b\u200bc\r\n')
    assert mf.system == "a\r\nb" and mf.template == "abc"  # Ollama's parser silently drops U+0000, U+200B


def test_parse_last_wins_and_deprecated_parameters_are_dropped(forge_log):
    mf = M.parse("FROM a\nFROM b\nSYSTEM one\nSYSTEM two\nPARAMETER mirostat 2\nPARAMETER seed 1\nPARAMETER seed 2\n")
    assert (mf.from_, mf.system, mf.parameters) == ("b", "two", {"seed": 2})
    assert any("mirostat" in r.getMessage() and "deprecated" in r.getMessage() for r in forge_log.records)


@pytest.mark.parametrize("text,message", [
    ("SYSTEM hi\n", "no FROM line"),
    ("FROM x\nFOO bar\n", "Modelfile:2: unknown command 'FOO'"),
    ("FROM x\nMESSAGE tool hi\n", "MESSAGE role 'tool'"),
    ("FROM x\nSYSTEM \"never closed\n", "unterminated quoted value"),
    ("FROM x\nSYSTEM \"\"\"a\"\"\" b\n", "unterminated quoted value"),
    ("FROM\n", "followed by a space"),
    ("FROM x\nPARAMETER num-ctx 4\n", "PARAMETER name has '-'"),
    ("FROM x\nPARAMETER Temperature 1\n", "unknown parameter 'Temperature'"),
    ("FROM x\nPARAMETER num_ctx 4k\n", "invalid int value '4k'"),
    ("FROM x\nPARAMETER top_p high\n", "invalid float value 'high'"),
    ("FROM x\nPARAMETER temperature 1e39\n", "not a finite 32-bit float"),
    ("FROM x\nPARAMETER use_mmap yes\n", "invalid bool value 'yes'"),
])
def test_parse_errors_say_where_and_what(text, message):
    with pytest.raises(ForgeError) as e:
        M.parse(text)
    assert message in e.value.one_line()
    assert "\n" not in e.value.one_line()


def test_read_from_file_reports_the_path(tmp_path):
    p = tmp_path / "Modelfile"
    p.write_bytes(b"FROM x\r\nPARAMETER seed abc\r\n")
    with pytest.raises(ForgeError, match=r"Modelfile:\d+: PARAMETER: invalid int value 'abc'"):
        M.read(p)


# ---- rendering ----

def test_render_then_parse_is_identity_and_readable():
    mf = M.Modelfile(from_="./model.gguf", template='{{ if .System }}"{{ .System }}"\n{{ end }}',
                     system="Be brief.", parameters={"stop": ["<|im_end|>", " User:"], "num_ctx": 4096,
                                                     "temperature": 0.7, "use_mmap": True},
                     messages=[M.Message("user", "hi"), M.Message("assistant", ' "quoted" ')],
                     license=["MIT"], adapter="./lora.gguf", comments=["made by a test"])
    text = mf.render()
    assert text.splitlines()[:3] == ["# made by a test", "FROM ./model.gguf", "ADAPTER ./lora.gguf"]
    assert 'TEMPLATE """{{ if .System }}"{{ .System }}"\n{{ end }}"""' in text
    assert "PARAMETER stop <|im_end|>\nPARAMETER stop \" User:\"\n" in text
    assert "PARAMETER temperature 0.7\nPARAMETER use_mmap true\n" in text
    assert M.parse(text) == mf


@pytest.mark.parametrize("value,why", [
    ('ends with three quotes"""\nthen more', 'contains """'),
    ('"""\n', 'contains """'),
    ("has a NUL \x00 byte", "U+0000"),
    ("zero\u200bwidth", "U+200B"),
])
def test_values_ollama_cannot_read_back_are_refused_clearly(value, why, tmp_path):
    mf = M.Modelfile(from_="m.gguf", system=value)
    with pytest.raises(ForgeError) as e:
        mf.render()
    assert why in e.value.one_line() and "SYSTEM" in e.value.one_line()
    with pytest.raises(ForgeError):
        mf.write(tmp_path / "Modelfile")
    assert not (tmp_path / "Modelfile").exists()  # never a broken file
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("params,message", [
    ({"mirostat": 2}, "deprecated"),
    ({"temprature": 0.5}, "unknown parameter 'temprature'"),
    ({"num_ctx": "big"}, "invalid int value"),
    ({"num_ctx": 1.5}, "invalid int value"),
    ({"top_k": True}, "invalid int value"),
    ({"temperature": float("nan")}, "not a finite"),
    ({"stop": [1]}, "must be strings"),
])
def test_parameters_are_checked_against_ollamas_list(params, message):
    with pytest.raises(ForgeError, match=message):
        M.Modelfile(from_="m", parameters=params).render()


def test_message_roles_are_checked():
    with pytest.raises(ForgeError, match="role 'tool'"):
        M.Modelfile(from_="m", messages=[M.Message("tool", "x")]).render()


# ---- the Modelfile for a model ----

def _write_gguf(path: Path, arch: str, chat_template: str | None, tokens: list[str], eos: int,
                context_length: int = 32768) -> Path:
    from gguf import GGUFWriter

    w = GGUFWriter(str(path), arch)
    w.add_context_length(context_length)
    if chat_template is not None:
        w.add_chat_template(chat_template)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_eos_token_id(eos)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def official_template(request):
    return lambda family: (parity.tiny_model_dir(request, family) / "chat_template.jinja").read_text()


def test_for_model_takes_template_and_stops_from_the_detected_format(tmp_path, official_template):
    gguf = _write_gguf(tmp_path / "model.gguf", "qwen2", official_template("qwen2"), ["a", "<|im_end|>"], 1)
    mf, det = M.for_model(gguf, modelfile_dir=tmp_path)
    chatml = formats.load("chatml")
    assert det.format.name == "chatml" and det.variant == "Qwen2.5-Instruct"
    assert mf.template == chatml.ollama_template
    assert mf.parameters["stop"] == list(chatml.stop)
    assert mf.system == "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    assert mf.parameters["num_ctx"] == M.DEFAULT_NUM_CTX
    assert mf.from_ == "./model.gguf"
    assert M.parse(mf.render()) == mf


def test_for_model_binds_eos_for_formats_that_end_turns_with_it(tmp_path, official_template):
    gguf = _write_gguf(tmp_path / "m.gguf", "llama", official_template("mistral"), ["<unk>", "<s>", "</s>"], 2)
    mf, det = M.for_model(gguf)
    assert det.format.name == "mistral"
    assert "</s>" in mf.template and "[[EOS]]" not in mf.template
    assert mf.parameters["stop"][0] == "</s>"


def test_for_model_for_a_run_uses_training_length_and_system(tmp_path, official_template, forge_log):
    gguf = _write_gguf(tmp_path / "m.gguf", "llama", official_template("llama"), ["x", "<|eot_id|>"], 1,
                       context_length=131072)
    mf, _ = M.for_model(gguf, train_max_length=8192, training_system="You are a pirate.")
    assert mf.parameters["num_ctx"] == 8192 and mf.system == "You are a pirate."
    mf, _ = M.for_model(gguf, train_max_length=1024, training_system="You are a pirate.", system="Be nice.")
    assert mf.system == "Be nice." and mf.parameters["num_ctx"] == M.DEFAULT_NUM_CTX
    assert any("not trained with this one" in r.getMessage() for r in forge_log.records)
    mf, _ = M.for_model(gguf, training_system="")  # trained without a system prompt: none by default
    assert mf.system is None
    with pytest.raises(ForgeError, match="below the training max length 8192"):
        M.for_model(gguf, train_max_length=8192, params={"num_ctx": "2048"})


def test_for_model_small_context_and_user_parameters(tmp_path, official_template):
    gguf = _write_gguf(tmp_path / "m.gguf", "gemma2", official_template("gemma2"), ["<eos>", "<end_of_turn>"], 0,
                       context_length=2048)
    mf, _ = M.for_model(gguf, params={"temperature": "0.3", "stop": ["</answer>"], "num_predict": "128"})
    assert mf.parameters["num_ctx"] == 2048  # never above what the model supports, unless training used more
    assert mf.parameters["temperature"] == 0.3 and mf.parameters["num_predict"] == 128
    assert mf.parameters["stop"] == ["<end_of_turn>", "<start_of_turn>", "</answer>"]


def test_for_model_unknown_template_asks_for_chat_format(tmp_path):
    gguf = _write_gguf(tmp_path / "m.gguf", "llama", "{{ messages }}", ["a", "b"], 1)
    with pytest.raises(ForgeError, match="--chat-format"):
        M.for_model(gguf)
    mf, det = M.for_model(gguf, chat_format="plain")
    assert det.how == "override" and "b" in mf.parameters["stop"]  # plain ends turns with the model's EOS


# ---- forge modelfile ----

def test_cli_writes_a_modelfile_and_says_why(tmp_path, official_template, capsys):
    gguf = _write_gguf(tmp_path / "model.gguf", "phi3", official_template("phi3"), ["x", "<|endoftext|>"], 1)
    out = tmp_path / "Modelfile"
    rc = main(["modelfile", str(gguf), "--param", "temperature=0.2", "--system", "Hi.", "-o", str(out)])
    assert rc == 0
    mf = M.read(out)
    phi3 = formats.load("phi3")
    assert mf.from_ == "./model.gguf" and mf.template == phi3.ollama_template
    assert mf.parameters["stop"] == list(phi3.stop) and mf.system == "Hi." and mf.parameters["temperature"] == 0.2
    text = out.read_text()
    assert "# chat format: phi3 (Phi-3-mini-instruct) - proven template pair" in text
    assert "chat_format=phi3: the template is the official Phi-3-mini-instruct template" in capsys.readouterr().err


def test_cli_errors_are_one_line(tmp_path, capsys):
    gguf = _write_gguf(tmp_path / "m.gguf", "llama", None, ["a", "b"], 1)
    assert main(["modelfile", str(gguf)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("forge modelfile: error")]
    assert len(err) == 1 and "--chat-format" in err[0] and "no chat template" in err[0]
    assert main(["modelfile", str(gguf), "--chat-format", "chatml", "--param", "nope=1"]) == 2
    assert "unknown parameter 'nope'" in capsys.readouterr().err
    assert main(["modelfile", str(gguf), "--chat-format", "chatml"]) == 0
    assert 'TEMPLATE """' in capsys.readouterr().out


def test_cli_formats_detect_reads_gguf_metadata(tmp_path, official_template, capsys):
    gguf = _write_gguf(tmp_path / "m.gguf", "gemma3", official_template("gemma3"), ["<eos>"], 0)
    assert main(["formats", "detect", str(gguf)]) == 0
    assert capsys.readouterr().out.startswith("gemma: the template is the official gemma-3-it template")
    bare = _write_gguf(tmp_path / "bare.gguf", "llama", None, ["a"], 0)
    assert main(["formats", "detect", str(bare)]) == 2
    assert "no chat template" in capsys.readouterr().out
