"""Chat-format registry: loading, detection, Ollama-style normalisation, installing a format on a tokenizer."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from ollama_forge import formats
from ollama_forge.cli import main
from ollama_forge.errors import ForgeError
from tests.gotemplate import parity



# Each tiny family's own (official) template and what detection must make of it.
OFFICIAL = {
    "llama": ("llama3", "Llama-3.1-Instruct"),
    "mistral": ("mistral", "Mistral-7B-Instruct-v0.3"),
    "qwen2": ("chatml", "Qwen2.5-Instruct"),
    "qwen3": ("chatml", "Qwen3"),
    "gemma2": ("gemma", "gemma-2-it"),
    "gemma3": ("gemma", "gemma-3-it"),
    "phi3": ("phi3", "Phi-3-mini-instruct"),
}


@pytest.fixture(scope="module")
def model_dir(request):
    return lambda family: parity.tiny_model_dir(request, family)


# ---- the registry files ----

@pytest.mark.parametrize("fmt", formats.all_formats(), ids=lambda f: f.name)
def test_registry_file_is_complete_and_consistent(fmt):
    assert fmt.description and fmt.jinja and fmt.ollama_template
    assert fmt.end_of_turn and set(fmt.end_of_turn) <= set(fmt.stop)
    # assistant-only loss needs the generation markers; Go has no trim, so the training side must not trim either
    assert re.search(r"\{%-?\s*generation\s*-?%\}", fmt.jinja) and "endgeneration" in fmt.jinja
    assert "trim" not in fmt.jinja
    assert ".Messages" in fmt.ollama_template  # messages mode: Ollama passes .System/.Messages
    assert formats.BOS_SLOT not in fmt.ollama_template  # llama.cpp adds BOS as a token, never the template
    assert fmt.proven_hash and formats.is_proven(fmt)


def test_load_unknown_format_names_the_choices():
    with pytest.raises(ForgeError) as e:
        formats.load("vicuna")
    assert "chatml" in e.value.one_line() and "llama3" in e.value.one_line()


def test_an_edited_or_custom_template_is_unproven():
    fmt = formats.load("chatml")
    edited = dataclasses.replace(fmt, ollama_template=fmt.ollama_template.replace("<|im_end|>\n{{ end }}",
                                                                                  "<|im_end|>{{ end }}"))
    assert formats.is_proven(fmt) and not formats.is_proven(edited)
    custom = formats.custom(fmt.jinja, fmt.ollama_template, fmt.stop, fmt.end_of_turn)
    assert not formats.is_proven(custom)
    # binding keeps the proof of the registry text it came from
    assert formats.is_proven(fmt.bind(add_bos=True, eos_token="</s>"))


def test_bind_fills_bos_and_eos_slots():
    plain = formats.load("plain").bind(add_bos=True, eos_token="<|endoftext|>")
    assert "<|endoftext|>" in plain.ollama_template and "[[EOS]]" not in plain.ollama_template
    assert plain.end_of_turn == ("<|endoftext|>",) and "<|endoftext|>" in plain.stop
    assert plain.jinja.startswith("{{- bos_token }}")
    assert not formats.load("chatml").bind(add_bos=False, eos_token=None).jinja.startswith("{{")
    with pytest.raises(ForgeError, match="EOS"):
        formats.load("mistral").bind(add_bos=True, eos_token=None)


# ---- normalisation: what Ollama does to a chat request before the template runs ----

def _m(role, content):
    return {"role": role, "content": content}


@pytest.mark.parametrize("raw,expected", [
    ([_m("user", "a"), _m("user", "b")], [_m("user", "a\n\nb")]),
    ([_m("system", "s1"), _m("system", "s2"), _m("user", "u")], [_m("system", "s1\n\ns2"), _m("user", "u")]),
    # system messages are gathered to the front; the turns around them are NOT merged (Ollama merges in place)
    ([_m("user", "x"), _m("system", "s"), _m("user", "y")], [_m("system", "s"), _m("user", "x"), _m("user", "y")]),
    ([_m("system", ""), _m("user", "u")], [_m("user", "u")]),
    ([_m("system", ""), _m("system", "b"), _m("user", "u")], [_m("system", "\n\nb"), _m("user", "u")]),
    ([_m("USER", "u"), _m("Assistant", "a"), _m("assistant", "b")], [_m("user", "u"), _m("assistant", "a\n\nb")]),
    ([_m("user", "u"), _m("tool", "1"), _m("tool", "2")], [_m("user", "u"), _m("tool", "1"), _m("tool", "2")]),
])
def test_normalize_conversation_mirrors_ollama(raw, expected):
    assert formats.normalize_conversation(raw) == expected


def test_default_system_is_prepended_only_when_the_first_message_is_not_system():
    assert formats.normalize_conversation([_m("user", "u")], default_system="D") == [_m("system", "D"),
                                                                                     _m("user", "u")]
    assert formats.normalize_conversation([_m("system", "S"), _m("user", "u")], default_system="D") == [
        _m("system", "S"), _m("user", "u")]
    # a later system message does not stop the default (Ollama checks only the first), and both are gathered
    assert formats.normalize_conversation([_m("user", "u"), _m("system", "S")], default_system="D") == [
        _m("system", "D\n\nS"), _m("user", "u")]


def test_conversation_problems_are_reported():
    assert formats.conversation_problems([_m("system", "s"), _m("user", "u"), _m("assistant", "a")]) == []
    probs = formats.conversation_problems([_m("user", "x"), _m("user", "y"), _m("tool", "t")])
    assert any("two user turns" in p for p in probs) and any("'tool'" in p for p in probs)
    assert formats.conversation_problems([_m("assistant", "a")]) == [
        "the first turn after the system message is not a user turn"]


def test_unsupported_roles_fail_training_rendering_loudly():
    fmt = formats.load("chatml").bind(add_bos=False, eos_token=None)
    with pytest.raises(ForgeError, match="unsupported role tool"):
        formats.render_jinja(fmt, [_m("user", "u"), _m("tool", "t")])


def test_render_prompt_applies_the_modelfile_system_like_ollama():
    fmt = formats.load("chatml")
    assert formats.render_prompt(fmt, [_m("user", "hi")], system="Be brief.") == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    llama = formats.load("llama3").bind(add_bos=True, eos_token="<|eot_id|>")
    assert formats.render_prompt(llama, [_m("user", "hi")]).startswith("<|start_header_id|>user")  # no BOS text


# ---- detection ----

@pytest.mark.parametrize("family", sorted(OFFICIAL))
def test_detects_each_official_template(model_dir, family):
    expected, variant = OFFICIAL[family]
    det = formats.detect(model_dir(family), log=False)
    assert det.format is not None and det.format.name == expected
    assert det.how == "official" and det.variant == variant and variant in det.reason
    fmt, reason = det  # unpacks as (format, reason)
    assert fmt is det.format and reason == det.reason


def test_qwen25_variant_keeps_its_default_system_prompt(model_dir):
    fmt, reason = formats.detect(model_dir("qwen2"), log=False)
    assert fmt.default_system == "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    assert "default system prompt" in reason
    assert formats.detect(model_dir("qwen3"), log=False).format.default_system is None


def test_detects_forge_installed_template(model_dir):
    for family, name in (("llama", "llama3"), ("qwen2", "chatml"), ("mistral", "plain")):
        tok = parity.load_tokenizer(model_dir(family))
        formats.install(tok, formats.load(name))
        det = formats.detect(tok, log=False)
        assert (det.format.name, det.how) == (name, "registry")


def test_detects_variants_by_their_tokens_and_logs_the_reason(forge_log):
    tmpl = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n"
            "{{ m.content }}<|eot_id|>{% endfor %}Cutting Knowledge Date: December 2023")
    fmt, reason = formats.detect(tmpl)
    assert fmt.name == "llama3" and "not a known template" in reason
    assert any("chat_format=llama3" in r.getMessage() for r in forge_log.records)


def test_real_phi35_template_is_recognised():
    # microsoft/Phi-3.5-mini-instruct's chat template (as llama.cpp keeps it in models/templates/)
    tmpl = ("{% for message in messages %}{% if message['role'] == 'system' and message['content'] %}{{'<|system|>\n'"
            " + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message["
            "'content'] + '<|end|>\n'}}{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content"
            "'] + '<|end|>\n'}}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}"
            "{{ eos_token }}{% endif %}")
    det = formats.detect(tmpl, log=False)
    assert (det.format.name, det.variant) == ("phi3", "Phi-3.5-mini-instruct")


@pytest.mark.parametrize("tmpl", [
    "{% for m in messages %}<|user|>{{ m.content }}{% endfor %}",  # not all of phi3's markers
    "{{ bos_token }}[INST] <<SYS>>\n{{ system }}\n<</SYS>>\n\n{{ user }} [/INST]",  # Llama-2: not our mistral
    "{% for m in messages %}<｜User｜>{{ m.content }}<｜Assistant｜>{% endfor %}",
])
def test_unknown_template_says_unknown_and_what_to_do(tmpl):
    det = formats.detect(tmpl, log=False)
    assert det.format is None and det.how == "unknown" and "--chat-format" in det.reason
    fmt, reason = det
    assert fmt is None


def test_override_wins_and_mentions_the_models_own_template(model_dir):
    det = formats.detect(model_dir("qwen2"), override="plain", log=False)
    assert det.format.name == "plain" and det.how == "override"
    assert "explicitly" in det.reason and "chatml" in det.reason
    with pytest.raises(ForgeError):
        formats.detect(model_dir("qwen2"), override="nope", log=False)


def _base_tokenizer(model_dir, family):
    tok = parity.load_tokenizer(model_dir(family))
    tok.chat_template = None
    return tok


@pytest.mark.parametrize("family,expected", [("llama", "llama3"), ("qwen2", "chatml"), ("mistral", "mistral"),
                                             ("gemma2", "gemma"), ("phi3", "phi3")])
def test_base_model_without_template_gets_the_format_its_vocabulary_has(model_dir, family, expected):
    det = formats.detect(_base_tokenizer(model_dir, family), log=False)
    assert (det.format.name, det.how) == (expected, "vocabulary")
    assert "no new tokens" in det.reason


def test_vocabulary_without_chat_tokens_gets_plain():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"<unk>": 0, "</s>": 1, "hello": 2, "world": 3}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="</s>")
    det = formats.detect(tok, log=False)
    assert det.format.name == "plain" and "EOS" in det.reason
    assert formats.detect(None, log=False).format is None


# ---- the registry template says what the official one says (on conversations both accept) ----

CLEAN = [
    [_m("user", "Hello there")],
    [_m("system", "You are terse."), _m("user", "Hi")],
    [_m("user", "What is 2+2?"), _m("assistant", "4"), _m("user", "And 3+3?")],
    [_m("system", "Answer briefly."), _m("user", "One"), _m("assistant", "Two"), _m("user", "Three")],
]


@pytest.mark.parametrize("family", ["qwen2", "qwen3", "mistral", "gemma2", "gemma3", "phi3"])
def test_registry_template_matches_the_official_one(model_dir, family):
    """Detection maps an official template to a registry format: on conversations the official template accepts
    (no content padding, which it trims), both render the same prompt. (Llama 3.1's official template adds a date
    preamble to every prompt, so llama3 is the one family that differs by design.)"""
    tok = parity.load_tokenizer(model_dir(family))
    fmt = formats.detect(tok, log=False).format
    official = tok.chat_template
    bound = fmt.bind_to_tokenizer(tok)
    for conv in CLEAN:
        if family == "gemma2" and conv[0]["role"] == "system":
            continue  # gemma-2's own template refuses a system role
        want = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True, chat_template=official)
        norm = formats.normalize_conversation(conv, default_system=fmt.default_system)
        got = tok.apply_chat_template(norm, tokenize=False, add_generation_prompt=True, chat_template=bound.jinja)
        assert got == want


# ---- installing a format on a tokenizer ----

def test_install_reuses_tokens_the_vocabulary_has(model_dir):
    tok = parity.load_tokenizer(model_dir("qwen2"))
    size = len(tok)
    res = formats.install(tok, formats.load("chatml"))
    assert res.reused == ["<|im_start|>", "<|im_end|>"] and not res.added and not res.repurposed
    assert not res.vocab_grew and not res.merged_export_only and len(tok) == size
    assert tok.chat_template == res.format.jinja


def test_install_takes_over_reserved_tokens_before_growing_the_vocabulary(model_dir, tmp_path):
    tok = parity.load_tokenizer(model_dir("llama"))
    size = len(tok)
    res = formats.install(tok, formats.load("chatml"))
    assert res.repurposed == {"<|im_start|>": "<|reserved_special_token_0|>",
                              "<|im_end|>": "<|reserved_special_token_1|>"}
    assert len(tok) == size and not res.vocab_grew
    assert res.merged_export_only  # the tokenizer changed: a LoRA adapter on the base GGUF would not see it
    assert sorted(res.new_token_ids) == sorted(res.token_ids.values())
    for t, i in res.token_ids.items():
        assert tok.encode(t, add_special_tokens=False) == [i]
    tok.save_pretrained(tmp_path)  # survives save/load, as training saves it next to the model
    again = parity.load_tokenizer(tmp_path)
    assert {t: again.convert_tokens_to_ids(t) for t in res.token_ids} == res.token_ids
    assert again.chat_template == res.format.jinja


def test_install_adds_tokens_when_nothing_can_be_reused(model_dir, forge_log):
    tok = parity.load_tokenizer(model_dir("mistral"))
    size = len(tok)
    res = formats.install(tok, formats.load("chatml"))
    assert res.added == ["<|im_start|>", "<|im_end|>"] and res.vocab_grew and len(tok) == size + 2
    assert res.merged_export_only and sorted(res.new_token_ids) == [size, size + 1]
    assert any("merged export only" in r.getMessage() for r in forge_log.records)


# ---- CLI ----

def test_cli_formats_show_json_has_the_documented_keys(capsys):
    assert main(["formats", "show", "chatml", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {"name", "jinja", "ollama_template", "stop", "parameters"} <= set(data)
    assert data["name"] == "chatml" and "<|im_end|>" in data["stop"] and data["proven"] is True
    assert data["ollama_template"] == formats.load("chatml").ollama_template


def test_cli_formats_lists_every_format(capsys):
    assert main(["formats"]) == 0
    out = capsys.readouterr().out
    for name in formats.names():
        assert re.search(rf"^{name}\s+proven", out, re.M)
    assert main(["formats", "show", "nope"]) == 2


def test_cli_formats_detect(capsys, model_dir):
    assert main(["formats", "detect", str(model_dir("gemma3")), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["format"] == "gemma" and data["variant"] == "gemma-3-it" and data["proven"]


def test_a_go_template_maps_back_to_its_format():
    for fmt in formats.all_formats():
        bound = fmt.bind(add_bos=False, eos_token="<|endoftext|>")
        found = formats.from_ollama_template(bound.ollama_template)
        assert found is not None and found.name == fmt.name
        assert found.ollama_template == bound.ollama_template and found.stop == bound.stop
    assert formats.from_ollama_template("{{ .Prompt }}") is None
    edited = formats.load("chatml").ollama_template.replace("<|im_end|>\n{{ end }}", "<|im_end|>{{ end }}")
    assert formats.from_ollama_template(edited) is None
