"""Proof that every registry format's Ollama TEMPLATE renders exactly what training saw.

The Go reference renderer (tests/gotemplate/main.go, stdlib text/template, Ollama's data shaping) renders each
format's TEMPLATE over a corpus of conversations; HF ``apply_chat_template`` renders the format's training Jinja on
the fixture tokenizers. They must agree byte for byte (BOS aside, which llama.cpp adds as a token) and token for
token (BOS included); with a reply appended, the assistant-only-loss labels must be exactly the tokens after the
serving prompt, ending with the end-of-turn token. Named template mutations must each be caught. The shipped
``proven_hash`` of a format must equal the hash of the pair proven here.
"""

from __future__ import annotations

import pytest

from ollama_forge import formats
from tests.gotemplate import parity, render

pytestmark = pytest.mark.go

# (format, tiny-model family whose tokenizer trains it). plain runs on every tokenizer kind: byte-level BPE with and
# without BOS, SentencePiece with and without a dummy prefix.
PAIRS = [
    ("chatml", "qwen2"), ("chatml", "qwen3"), ("llama3", "llama"), ("mistral", "mistral"), ("gemma", "gemma2"),
    ("gemma", "gemma3"), ("phi3", "phi3"), ("plain", "llama"), ("plain", "qwen2"), ("plain", "mistral"),
    ("plain", "gemma2"), ("plain", "phi3"),
]
FORMAT_NAMES = sorted({f for f, _ in PAIRS})


@pytest.fixture(scope="session")
def go_renderer():
    try:
        return render.build()
    except render.GoMissing as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture(scope="session")
def tokenizers(request):
    cache = {}

    def get(family):
        if family not in cache:
            cache[family] = parity.load_tokenizer(parity.tiny_model_dir(request, family))
        return cache[family]

    return get


@pytest.fixture(scope="session")
def parity_results(go_renderer, tokenizers):
    """Every pair checked once: {(format, family): [mismatches]}."""
    out = {}
    for fmt_name, family in PAIRS:
        tok = tokenizers(family)
        bound = formats.load(fmt_name).bind_to_tokenizer(tok)
        out[(fmt_name, family)] = parity.check(bound, tok, parity.corpus_for(bound))
    return out


def test_registry_has_the_required_formats():
    assert {"chatml", "llama3", "mistral", "gemma", "phi3", "plain"} <= set(formats.names())
    assert set(FORMAT_NAMES) == set(formats.names()), "every registry format must be in the parity matrix"


@pytest.mark.parametrize("fmt_name", FORMAT_NAMES)
def test_corpus_has_at_least_30_servable_conversations(fmt_name):
    corpus = parity.corpus_for(formats.load(fmt_name).bind(add_bos=False, eos_token="</s>"))
    assert sum(parity.is_servable(c) for _, c in corpus) >= 30


@pytest.mark.parametrize("fmt_name,family", PAIRS, ids=[f"{f}-{m}" for f, m in PAIRS])
def test_go_template_renders_what_training_saw(parity_results, fmt_name, family):
    mismatches = parity_results[(fmt_name, family)]
    assert not mismatches, f"{len(mismatches)} mismatch(es) for {fmt_name} on {family}:\n" + "\n".join(
        str(m) for m in mismatches[:5])


@pytest.mark.parametrize("fmt_name", FORMAT_NAMES)
def test_shipped_hash_is_the_proven_pair(parity_results, fmt_name):
    fmt = formats.load(fmt_name)
    pairs = [p for p in PAIRS if p[0] == fmt_name]
    assert all(not parity_results[p] for p in pairs), "parity fails, so this pair is not proven"
    assert fmt.proven_hash == fmt.template_hash(), (
        f"modelfiles/{fmt_name}.yaml: the template pair changed since it was proven; parity holds for the new pair, "
        f"so set  proven_hash: {fmt.template_hash()}")
    assert formats.is_proven(fmt)


@pytest.mark.parametrize("fmt_name", FORMAT_NAMES)
def test_end_of_turn_tokens_are_stop_strings(fmt_name, tokenizers):
    family = next(m for f, m in PAIRS if f == fmt_name)
    bound = formats.load(fmt_name).bind_to_tokenizer(tokenizers(family))
    assert bound.end_of_turn and set(bound.end_of_turn) <= set(bound.stop)
    tok = tokenizers(family)
    for t in bound.end_of_turn:  # a real single token, so labels can end with it and llama.cpp can stop on it
        assert len(tok.encode(t, add_special_tokens=False)) == 1


@pytest.mark.parametrize("fmt_name", FORMAT_NAMES)
def test_every_named_mutation_is_caught(go_renderer, tokenizers, fmt_name):
    family = next(m for f, m in PAIRS if f == fmt_name)
    tok = tokenizers(family)
    bound = formats.load(fmt_name).bind_to_tokenizer(tok)
    corpus = parity.corpus_for(bound)
    assert not parity.check(bound, tok, corpus, tokens=False)
    for name, mutate in parity.mutations(bound).items():
        mutated = mutate(bound.ollama_template)
        assert mutated != bound.ollama_template
        caught = parity.check(bound, tok, corpus, go_template=mutated, tokens=False)
        assert caught, f"{fmt_name}: mutation '{name}' was not caught by the parity check"
        assert all(m.what != "Go template failed" for m in caught), f"{name}: mutated template must still run"


def test_base_model_tokenizer_with_installed_format_keeps_parity(go_renderer, request):
    """A vocabulary without chat tokens: chatml is installed (reserved tokens taken over, or new ones added) and
    the installed template still renders what Ollama renders."""
    for family in ("llama", "mistral"):
        tok = parity.load_tokenizer(parity.tiny_model_dir(request, family))
        result = formats.install(tok, formats.load("chatml"))
        assert result.merged_export_only
        mismatches = parity.check(result.format, tok, parity.corpus_for(result.format))
        assert not mismatches, "\n".join(str(m) for m in mismatches[:3])


# ---- the reference renderer itself follows Ollama's data shaping ----

def test_renderer_gathers_system_and_merges_consecutive_roles(go_renderer):
    t = "{{ .System }}|{{ range .Messages }}{{ .Role }}={{ .Content }};{{ end }}"
    msgs = [{"role": "system", "content": "a"}, {"role": "user", "content": "x"}, {"role": "user", "content": "y"},
            {"role": "system", "content": "b"}, {"role": "tool", "content": "t1"}, {"role": "tool", "content": "t2"}]
    assert render.render(t, msgs) == "a\n\nb|system=a;user=x\n\ny;system=b;tool=t1;tool=t2;"


def test_renderer_legacy_mode_runs_per_turn_and_cuts_after_response(go_renderer):
    t = "{{ if .System }}<<{{ .System }}>>{{ end }}[U]{{ .Prompt }}[A]{{ .Response }}[END]"
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "q1"},
            {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"}]
    assert render.render(t, msgs) == "<<S>>[U]q1[A]a1[END][U]q2[A]"


def test_renderer_appends_response_when_template_names_neither(go_renderer):
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
            {"role": "user", "content": "again"}]
    assert render.render("{{ .Prompt }}", msgs) == "hiyoagain"
    # missingkey=zero on a map prints "<no value>" for an unknown key, as Ollama does
    assert render.render("{{ .Nope }}{{ .Messages | len }}", msgs) == "<no value>3"


def test_missing_go_is_a_clear_failure_not_a_skip(monkeypatch):
    monkeypatch.setattr(render.shutil, "which", lambda name: None)
    monkeypatch.setattr(render, "GO_CANDIDATES", ())
    with pytest.raises(render.GoMissing, match="golang-go"):
        render._go()


def test_normalize_conversation_is_ollamas_data_shaping(go_renderer):
    """What training feeds its template equals what Ollama hands the Go template, over the whole corpus."""
    dump = ('{{ .System }}\x1f{{ range .Messages }}{{ if ne .Role "system" }}{{ .Role }}\x1e{{ .Content }}\x1d'
            '{{ end }}{{ end }}')
    convs = [c for _, c in parity.BASE_CORPUS]
    outs = render.render_many([{"template": dump, "messages": c} for c in convs])
    for conv, out in zip(convs, outs):
        system, _, body = out["output"].partition("\x1f")
        shaped = ([{"role": "system", "content": system}] if system else []) + [
            dict(zip(("role", "content"), turn.split("\x1e"))) for turn in body.split("\x1d")[:-1]]
        assert formats.normalize_conversation(conv) == shaped


@pytest.mark.parametrize("fmt_name", FORMAT_NAMES)
def test_render_prompt_is_what_ollama_renders(go_renderer, fmt_name):
    """formats.render_prompt (stand-in server, in-process chat) == the Go TEMPLATE, Modelfile SYSTEM included."""
    bound = formats.load(fmt_name).bind(add_bos=False, eos_token="</s>")
    convs = [c for _, c in parity.corpus_for(bound) if parity.is_servable(c)]
    system = "Modelfile system prompt"
    jobs = []
    for c in convs:
        jobs.append({"template": bound.ollama_template, "messages": c})
        # Ollama's chat handler prepends the Modelfile SYSTEM when the first message is not a system message
        first_is_system = c and c[0]["role"].lower() == "system"
        jobs.append({"template": bound.ollama_template,
                     "messages": c if first_is_system else [{"role": "system", "content": system}] + c})
    outs = render.render_many(jobs)
    for i, c in enumerate(convs):
        assert formats.render_prompt(bound, c) == outs[2 * i]["output"]
        assert formats.render_prompt(bound, c, system=system) == outs[2 * i + 1]["output"]


def test_renderer_fill_in_the_middle_mode(go_renderer):
    assert render.render("<PRE>{{ .Prompt }}<SUF>{{ .Suffix }}<MID>", [], prompt="def f(", suffix="):") == (
        "<PRE>def f(<SUF>):<MID>")
