"""Fuzzing (hypothesis) of the three parsers that take whatever a user hands them.

- Data: arbitrary JSON-ish records (biased towards the fields of the real formats) and arbitrary bytes, in every
  file type: ``load_data`` returns records and problems, every problem located in the file it came from, or raises
  ``ForgeError``; nothing else escapes. ``schema.normalize`` raises only ``Invalid``.
- Recipes: arbitrary YAML mappings (real keys, misspelt keys, wrong types) and arbitrary YAML text: a ``Recipe``
  or a ``ForgeError`` naming the recipe, never another exception.
- Modelfiles: ``render(parse(render(x)))`` equals ``render(x)`` (and ``parse(render(x)) == x``) for every
  representable Modelfile; arbitrary text to the parser gives a ``Modelfile`` or a ``ForgeError`` naming the line,
  and whatever parses renders back to the same thing (or is refused with a ``ForgeError``).

``derandomize=True`` makes every run try the same examples (CI reproducible); no example database is written.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ollama_forge import modelfile as M
from ollama_forge import recipe as R
from ollama_forge.data import load_data
from ollama_forge.data.schema import FORMATS, Invalid, normalize
from ollama_forge.errors import ForgeError

FUZZ = settings(derandomize=True, database=None, deadline=None, max_examples=150,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FEW = settings(FUZZ, max_examples=60)


# ---------------------------------------------------------------------------------------------------------------
# Data


SCALARS = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True) | st.text(max_size=12)
KEYS = st.sampled_from(["messages", "conversations", "role", "content", "from", "value", "prompt", "completion",
                        "instruction", "input", "output", "system", "text", "chosen", "rejected", "type"]) \
    | st.text(max_size=6)
ROLES = st.sampled_from(["user", "assistant", "system", "human", "gpt", "USER", "tool", "", "robot"])
JSONISH = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                       | st.dictionaries(KEYS, inner, max_size=4), max_leaves=20)
TURN = st.fixed_dictionaries({}, optional={"role": ROLES | SCALARS, "content": st.text(max_size=8) | JSONISH,
                                           "from": ROLES, "value": st.text(max_size=8) | SCALARS})
CONV = st.lists(TURN, max_size=5) | JSONISH
RECORD = st.one_of(
    st.fixed_dictionaries({"messages": CONV}),
    st.fixed_dictionaries({"conversations": CONV}),
    st.fixed_dictionaries({"prompt": st.text(max_size=8) | CONV, "completion": st.text(max_size=8) | CONV}),
    st.fixed_dictionaries({"instruction": st.text(max_size=8) | SCALARS, "output": st.text(max_size=8) | SCALARS},
                          optional={"input": SCALARS, "system": SCALARS}),
    st.fixed_dictionaries({"text": st.text(max_size=8) | JSONISH}),
    st.fixed_dictionaries({"chosen": st.text(max_size=8) | CONV, "rejected": st.text(max_size=8) | CONV},
                          optional={"prompt": st.text(max_size=8) | CONV}),
    JSONISH,
)


def _check_loaded(path: Path, fmt: str | None = None) -> None:
    try:
        data = load_data(str(path), fmt=fmt)
    except ForgeError as e:
        assert str(path) in e.message or "--format" in e.message, e.message
        return
    assert len(data.records) == len(data.locations) <= data.total
    for loc in list(data.locations) + [p.loc for p in data.problems]:
        assert loc.source == str(path)
        assert (loc.line is not None and loc.line >= 1) or (loc.row is not None and loc.row >= 0)
    for p in data.problems:
        assert p.field and p.message and str(p).startswith(f"{path}:")
    for rec in data.records:  # canonical shapes only
        assert set(rec) in ({"messages"}, {"prompt", "completion"}, {"text"}, {"chosen", "rejected"},
                            {"prompt", "chosen", "rejected"}), rec


@pytest.fixture(scope="module")
def scratch():
    with tempfile.TemporaryDirectory(prefix="forge-fuzz-") as d:
        yield Path(d)


@FUZZ
@given(records=st.lists(RECORD, min_size=1, max_size=6), fmt=st.none() | st.sampled_from(FORMATS))
def test_load_data_jsonl_records(scratch, records, fmt):
    p = scratch / "d.jsonl"
    p.write_text("".join(json.dumps(r, allow_nan=True) + "\n" for r in records), encoding="utf-8")
    _check_loaded(p, fmt)


@FUZZ
@given(records=st.lists(RECORD, min_size=1, max_size=6))
def test_load_data_json_array_records(scratch, records):
    p = scratch / "d.json"
    p.write_text(json.dumps(records, indent=1, allow_nan=True), encoding="utf-8")
    _check_loaded(p)


@FUZZ
@given(raw=st.binary(max_size=300) | st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
       suffix=st.sampled_from([".jsonl", ".json", ".csv", ".tsv", ".parquet"]))
def test_load_data_arbitrary_bytes(scratch, raw, suffix):
    p = scratch / f"b{suffix}"
    p.write_bytes(raw)
    _check_loaded(p)


CSV_CELL = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=10) \
    | st.sampled_from(['[{"role": "user", "content": "a"}]', "[", '{"x": 1}', '"', "a,b", "line\nbreak"])


@FUZZ
@given(header=st.lists(st.sampled_from(["prompt", "completion", "messages", "text", "chosen", "rejected",
                                        "instruction", "output", "x"]), min_size=1, max_size=4),
       rows=st.lists(st.lists(CSV_CELL, min_size=0, max_size=5), min_size=1, max_size=5))
def test_load_data_csv_tables(scratch, header, rows):
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    p = scratch / "t.csv"
    p.write_text(buf.getvalue(), encoding="utf-8")
    _check_loaded(p)


@FUZZ
@given(record=RECORD, fmt=st.sampled_from(FORMATS))
def test_normalize_raises_only_invalid(record, fmt):
    try:
        rec, notes = normalize(record, fmt)
    except Invalid as e:
        assert e.field and e.message
        return
    assert isinstance(rec, dict) and isinstance(notes, list)
    json.dumps(rec)  # canonical records are plain JSON


# ---------------------------------------------------------------------------------------------------------------
# Recipes


def _recipe_keys():
    import dataclasses

    def walk(cls, prefix):
        for f in dataclasses.fields(cls):
            yield prefix + f.name
    yield from walk(R.Recipe, "")
    for sec, cls in (("data", R.DataConfig), ("train", R.TrainConfig), ("dpo", R.DPOConfig),
                     ("export", R.ExportConfig), ("ollama", R.OllamaConfig), ("eval", R.EvalConfig),
                     ("gate", R.GateConfig)):
        yield from walk(cls, sec + ".")


RECIPE_KEYS = sorted(_recipe_keys())
YAML_SCALARS = st.none() | st.booleans() | st.integers(-10**6, 10**20) | st.floats() \
    | st.text(max_size=10) | st.sampled_from(["2e-4", "yes", "off", "lora", "qlora", "Q4_K_M", "my-model:v1",
                                              "all-linear", "-1", "0.1", "1e400", ".nan"])
YAML_VALUES = st.recursive(YAML_SCALARS, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=6) | st.sampled_from(RECIPE_KEYS), inner,
                                             max_size=3), max_leaves=8)


def _nest(flat: dict) -> dict:
    out: dict = {}
    for dotted, value in flat.items():
        parts = dotted.split(".")
        node = out
        for p in parts[:-1]:
            child = node.get(p)
            if not isinstance(child, dict):
                child = node[p] = {}
            node = child
        node[parts[-1]] = value
    return out


RECIPE_MAPPINGS = st.dictionaries(st.sampled_from(RECIPE_KEYS) | st.text(max_size=8), YAML_VALUES,
                                  max_size=8).map(_nest) | st.dictionaries(YAML_SCALARS, YAML_VALUES, max_size=3)


@FUZZ
@given(data=RECIPE_MAPPINGS)
def test_recipe_from_arbitrary_mapping(data):
    try:
        rec = R.from_dict(data)
    except ForgeError as e:
        assert e.message.strip() and "\n" not in e.one_line()
        return
    assert isinstance(rec, R.Recipe)
    R.from_dict(R.to_dict(rec))  # what was accepted round-trips through its resolved form


@FUZZ
@given(text=st.text(max_size=200) | RECIPE_MAPPINGS.map(lambda d: yaml.safe_dump(d, allow_unicode=True)))
def test_recipe_load_arbitrary_yaml_text(scratch, text):
    p = scratch / "recipe.yaml"
    p.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        rec = R.load(p)
    except ForgeError as e:
        assert e.message.startswith(str(p)), e.message
        return
    assert isinstance(rec, R.Recipe)


@FUZZ
@given(overrides=st.dictionaries(st.sampled_from(RECIPE_KEYS) | st.text(max_size=10)
                                 | st.tuples(st.sampled_from(RECIPE_KEYS), st.sampled_from([".x", ".rank", ".a.b"]))
                                 .map("".join),
                                 st.text(max_size=12) | st.sampled_from(["[a, b]", "{k: 1}", "[", "8", "true"]),
                                 max_size=4))
def test_recipe_set_overrides(overrides):
    try:
        rec = R.apply_overrides(R.Recipe(base_model="m"), overrides)
    except ForgeError as e:
        assert e.message.strip() and "\n" not in e.one_line()
        return
    assert isinstance(rec, R.Recipe)


# ---------------------------------------------------------------------------------------------------------------
# Modelfiles

# Values as Ollama stores them: any text, weighted towards the characters the parser treats specially.
TRICKY = st.sampled_from(['"', '"""', "\n", "\r", "\r\n", " ", "\t", "#", "{{ .Prompt }}", "<|im_end|>", "é", "\x07",
                          "\u2028", "FROM x", "\\n"])
VALUE = st.lists(TRICKY | st.text(max_size=6), max_size=6).map("".join)
PARAMS = st.fixed_dictionaries({}, optional={
    "temperature": st.floats(-1e6, 1e6, allow_nan=False, width=32),
    "top_k": st.integers(-2**63, 2**63 - 1),
    "num_ctx": st.integers(0, 2**20),
    "use_mmap": st.booleans(),
    "stop": st.lists(VALUE, min_size=1, max_size=3),
    "seed": st.integers(-5, 5),
})
MODELFILES = st.builds(
    M.Modelfile,
    from_=VALUE | st.sampled_from(["./model-q4_k_m.gguf", "qwen2.5:0.5b", "/abs/path with space.gguf"]),
    template=st.none() | VALUE, system=st.none() | VALUE, parameters=PARAMS,
    messages=st.lists(st.builds(M.Message, role=st.sampled_from(M.MESSAGE_ROLES), content=VALUE), max_size=3),
    license=st.lists(VALUE, max_size=2), adapter=st.none() | VALUE,
    extra=st.lists(st.tuples(st.sampled_from(M.PASSTHROUGH), VALUE), max_size=2),
)


@FUZZ
@given(mf=MODELFILES)
def test_modelfile_render_parse_round_trip(mf):
    try:
        text = mf.render()
    except ForgeError as e:  # refused: never a file that reads back as something else
        assert "cannot be written" in e.message or "Modelfile" in e.message or "PARAMETER" in e.message, e.message
        return
    back = M.parse(text)
    assert back == mf, text
    assert back.render() == text


MODELFILE_TEXT = st.lists(st.sampled_from(["FROM ", "from ", "PARAMETER ", "TEMPLATE ", "SYSTEM ", "MESSAGE ",
                                           "ADAPTER ", "LICENSE ", "REQUIRES ", "# ", "user ", "assistant ",
                                           "stop ", "temperature ", "num_ctx ", "top_k ", "use_mmap ", "mirostat ",
                                           '"', '"""', "\n", "\r\n", " ", "\t", "1", "0.5", "true", "x", "é",
                                           "\x00", "{{ .Prompt }}", "./m.gguf"])
                          | st.text(max_size=4), max_size=30).map("".join) | st.text(max_size=120)


@FUZZ
@given(text=MODELFILE_TEXT)
def test_modelfile_parser_takes_any_text(text):
    try:
        mf = M.parse(text, source="fuzz.Modelfile")
    except ForgeError as e:
        assert e.message.startswith("fuzz.Modelfile"), e.message
        return
    try:
        rendered = mf.render()
    except ForgeError:
        return  # e.g. an empty FROM, or a value only the lenient parser accepts
    assert M.parse(rendered) == mf
