"""Property tests: a Modelfile renders to text that parses back to the same Modelfile, or is refused clearly.

Strings are adversarial: quotes (one, two, three), newlines (LF, CR, CRLF), padding, '#', Modelfile keywords, Go
and Jinja template syntax, chat special tokens, non-printable and zero-width characters. A refusal must be
justified: none of Ollama's three ways to write a value (bare, "...", \"\"\"...\"\"\") reads back as the value.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ollama_forge import modelfile as M
from ollama_forge.errors import ForgeError

FRAGMENTS = ['"', '""', '"""', "\n", "\r\n", "\r", " ", "\t", "#", "FROM x", "\nPARAMETER stop y\n", "SYSTEM ",
             "{{ .System }}", '{{ if eq .Role "user" }}', "{%- generation %}", "<|im_end|>", "[INST]", "\x00",
             "\u200b", "\u00a0", "é", "日本", "🤖", "\\n", "'", "`"]

adversarial = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=6)), max_size=12).map("".join)
# The same without characters no quoting can carry (non-printables): whole Modelfiles then mostly render, so the
# round trip is exercised, while quote structure ('"""' before a newline, ...) still gets refused now and then.
_PRINTABLE = st.characters(whitelist_categories=("L", "M", "N", "P", "S"), whitelist_characters=" \t\n\r")
quoting_adversarial = st.lists(st.one_of(st.sampled_from([f for f in FRAGMENTS if all(M.is_printable(c) or c in
                                                                                      " \t\r\n" for c in f)]),
                                         st.text(_PRINTABLE, max_size=6)), max_size=8).map("".join)
# 200 examples per property keep this file at about 6 s on 2 cores.
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _forms(value: str) -> list[str]:
    return [value, f'"{value}"', f'"""{value}"""']


@SETTINGS
@given(adversarial)
@example('a"""\nb')
@example('"""\n')
@example('""\n')
@example("")
@example(" ")
@example('x "\ny')
def test_quote_reads_back_or_no_form_could(value):
    try:
        quoted = M.quote(value, "SYSTEM")
    except ForgeError as e:
        assert "SYSTEM cannot be written in a Modelfile" in e.message
        assert all(M._parses_back(q) != value for q in _forms(value)), "refused a value Ollama could read"
        return
    assert M._parses_back(quoted) == value


message = st.builds(M.Message, st.sampled_from(M.MESSAGE_ROLES), quoting_adversarial)
params = st.fixed_dictionaries({}, optional={
    "temperature": st.floats(0, 2, allow_nan=False, width=32),
    "top_p": st.floats(0, 1, width=32),
    "num_ctx": st.integers(1, 2 ** 20),
    "seed": st.integers(-(2 ** 63), 2 ** 63 - 1),
    "use_mmap": st.booleans(),
    "stop": st.lists(quoting_adversarial.filter(bool), min_size=1, max_size=3),
})
modelfiles = st.builds(
    M.Modelfile, from_=quoting_adversarial.filter(lambda s: s.strip() != ""),
    template=st.none() | quoting_adversarial, system=st.none() | quoting_adversarial, parameters=params,
    messages=st.lists(message, max_size=3), license=st.lists(quoting_adversarial, max_size=2),
    adapter=st.none() | quoting_adversarial)


@SETTINGS
@given(quoting_adversarial, quoting_adversarial)
def test_a_non_printable_character_is_refused_wherever_it_is(before, after):
    with pytest.raises(ForgeError, match="SYSTEM cannot be written.*U\\+0007"):
        M.Modelfile(from_="m", system=before + "\x07" + after).render()


@SETTINGS
@given(modelfiles)
def test_render_parse_round_trip(mf):
    try:
        text = mf.render()
    except ForgeError as e:
        assert "cannot be written in a Modelfile" in e.message and "\n" not in e.one_line()
        return
    assert M.parse(text) == mf


@SETTINGS
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Cf", "Co", "Cn", "Zl", "Zp", "Zs"),
                                      blacklist_characters='"'), min_size=1)
       .filter(lambda s: s.strip() == s))
def test_plain_printable_values_are_always_written_bare(value):
    assert M.quote(value) == value


@SETTINGS
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40))
def test_parser_never_crashes_on_arbitrary_text(text):
    try:
        M.parse("FROM x\n" + text)
    except ForgeError as e:
        assert e.message


def test_round_trip_of_every_registry_template():
    from ollama_forge import formats

    for fmt in formats.all_formats():
        bound = fmt.bind(add_bos=False, eos_token="</s>")
        mf = M.Modelfile(from_="./m.gguf", template=bound.ollama_template, parameters={"stop": list(bound.stop)})
        assert M.parse(mf.render()) == mf


@pytest.mark.parametrize("value", ['ends with """\nmore', 'a"""  \nb', "nul\x00", "bidi\u202e"])
def test_examples_of_refused_values(value):
    with pytest.raises(ForgeError, match="cannot be written in a Modelfile"):
        M.Modelfile(from_="x", template=value).render()
