"""`forge data`: format detection with reasons, file:line problems for every broken record, nothing written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ollama_forge.data import DataSource, load_data
from ollama_forge.errors import ForgeError

REPO = Path(__file__).resolve().parents[1]


def forge(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ollama_forge", *args], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
SAMPLES = {
    "messages": (CHAT, "'messages'"),
    "prompt-completion": ({"prompt": "2+2=", "completion": "4"}, "'prompt'+'completion'"),
    "alpaca": ({"instruction": "Add", "input": "2 and 2", "output": "4"}, "'instruction'+'output'"),
    "text": ({"text": "Once upon a time."}, "'text'"),
    "preference": ({"prompt": "Say hi", "chosen": "Hi!", "rejected": "No."}, "'chosen'+'rejected' (plain text)"),
}


@pytest.mark.parametrize("fmt", sorted(SAMPLES))
def test_each_format_is_detected_with_its_reason(tmp_path, fmt):
    rec, why = SAMPLES[fmt]
    rows = [rec, {**rec, **{k: v + " again" for k, v in rec.items() if isinstance(v, str)}}]
    if fmt == "messages":
        rows = [rec, {"messages": [{"role": "user", "content": "yo"}, {"role": "assistant", "content": "hey"}]}]
    p = write_jsonl(tmp_path / "d.jsonl", rows)
    r = forge("data", "check", str(p))
    assert r.returncode == 0, r.stderr
    assert f"format: {fmt} (every record has {why}" in r.stdout
    assert "records: 2 read, 2 valid, 0 invalid" in r.stdout


def test_sharegpt_and_conversational_preference_are_detected(tmp_path):
    share = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}
    d = load_data(str(write_jsonl(tmp_path / "s.jsonl", [share])))
    assert d.format == "messages" and "ShareGPT" in d.reason
    assert d.records == [CHAT]
    pref = {"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "good"}],
            "rejected": [{"role": "assistant", "content": "bad"}]}
    d = load_data(str(write_jsonl(tmp_path / "p.jsonl", [pref])))
    assert d.format == "preference" and "conversational" in d.reason and not d.problems


def test_format_override_checks_records_against_it(tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", [{"text": "hello"}])
    r = forge("data", "check", str(p), "--format", "messages")
    assert r.returncode == 2
    assert f"{p}:1: messages: missing" in r.stdout


BROKEN_LINES = [
    json.dumps(CHAT),                                                                      # 1 valid
    '{"messages": [{"role": "user", "content": "hi"}',                                     # 2 invalid JSON
    json.dumps({"messages": [{"role": "bot", "content": "x"}, {"role": "assistant", "content": "y"}]}),  # 3 role
    json.dumps({"messages": [{"role": "user", "content": "   "}, {"role": "assistant", "content": "y"}]}),  # 4 empty
    json.dumps({"messages": [{"role": "user", "content": "only a question"}]}),             # 5 no assistant
    json.dumps({"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]}),  # 6 order
    json.dumps({"messages": [{"role": "user"}, {"role": "assistant", "content": "y"}]}),   # 7 missing content
    json.dumps(CHAT),                                                                      # 8 duplicate of 1
    "",                                                                                    # 9 blank: fine
    json.dumps({"messages": "hello"}),                                                     # 10 not a list
    json.dumps(["not", "an", "object"]),                                                   # 11 not an object
    json.dumps({"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "y"}]}),  # 12 type
    json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                             {"role": "system", "content": "late"}, {"role": "user", "content": "c"},
                             {"role": "assistant", "content": "d"}]}),                    # 13 late system
    json.dumps({"messages": []}),                                                          # 14 empty list
    json.dumps({"messages": [{"role": "user", "content": None}, {"role": "assistant", "content": "y"}]}),  # 15 null
]
EXPECTED = {
    2: ("record", "invalid JSON"),
    3: ("messages[0].role", "unknown role 'bot'"),
    4: ("messages[0].content", "empty"),
    5: ("messages", "no assistant turn"),
    6: ("messages[0].role", "must be user"),
    7: ("messages[0].content", "missing"),
    8: ("record", "duplicate of"),
    10: ("messages", "must be a list"),
    11: ("record", "must be a JSON object"),
    12: ("messages[0].content", "must be a string"),
    13: ("messages[2].role", "system message after"),
    14: ("messages", "no messages"),
    15: ("messages[0].content", "missing (null)"),
}


def test_every_broken_record_is_named_by_file_and_line_and_nothing_is_written(tmp_path):
    p = tmp_path / "broken.jsonl"
    raw = "\n".join(BROKEN_LINES).encode() + b"\n" + b'{"text": "\xff\xfe bad bytes"}\n'  # line 16: not UTF-8
    p.write_bytes(raw)
    before = sorted(os.listdir(tmp_path))
    r = forge("data", "check", str(p), "-o", str(tmp_path / "clean.jsonl"), cwd=tmp_path)
    assert r.returncode == 2
    assert sorted(os.listdir(tmp_path)) == before, "data check must write nothing when records are invalid"
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith(str(p) + ":")]
    by_line = {int(ln.split(":")[1]): ln for ln in lines}
    for line, (field, what) in EXPECTED.items():
        assert line in by_line, f"line {line} not reported; got:\n{r.stdout}"
        assert f"{p}:{line}: {field}: " in by_line[line] and what in by_line[line], by_line[line]
    assert 16 in by_line and "not valid UTF-8" in by_line[16]
    assert len(lines) == len(EXPECTED) + 1, "valid and blank lines must not be reported"
    assert "Traceback" not in r.stderr
    assert len({what for _, what in EXPECTED.values()}) >= 10, "at least ten different kinds of broken record"


def test_skip_invalid_drops_and_counts(tmp_path):
    p = tmp_path / "broken.jsonl"
    p.write_text("\n".join(BROKEN_LINES) + "\n", encoding="utf-8")
    out = tmp_path / "clean.jsonl"
    r = forge("data", "check", str(p), "--skip-invalid", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert f"skipping {len(EXPECTED)} invalid record(s)" in r.stderr
    assert [json.loads(x) for x in out.read_text().splitlines()] == [CHAT]
    assert not list(tmp_path.glob(".*partial"))


def test_json_array_reports_the_line_where_each_object_starts(tmp_path):
    p = tmp_path / "d.json"
    p.write_text('[\n  {"prompt": "a", "completion": "b"},\n  {\n    "prompt": "c",\n    "completion": ""\n  }\n]\n')
    d = load_data(str(p))
    assert [str(x) for x in d.problems] == [f"{p}:3: completion: empty"]


def test_json_syntax_error_reports_its_line(tmp_path):
    p = tmp_path / "d.json"
    p.write_text('[\n  {"text": "a"},\n  {"text": "b",}\n]\n')
    d = load_data(str(p), fmt="text")
    assert len(d.problems) == 1 and str(d.problems[0]).startswith(f"{p}:3: record: invalid JSON")


def test_csv_lines_count_the_header_and_multiline_cells(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text('prompt,completion\r\n"multi\nline",ok\r\nq,\r\n', encoding="utf-8")
    d = load_data(str(p))
    assert d.format == "prompt-completion"
    assert [str(x) for x in d.problems] == [f"{p}:4: completion: empty"]


def test_bom_and_crlf_are_valid(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + json.dumps(CHAT).encode() + b"\r\n" + json.dumps({"messages": [
        {"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}).encode() + b"\r\n")
    d = load_data(str(p))
    assert not d.problems and len(d.records) == 2


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_file_is_an_error(tmp_path, content):
    p = tmp_path / "e.jsonl"
    p.write_text(content)
    r = forge("data", "check", str(p))
    assert r.returncode == 2 and f"{p}: file is empty" in r.stderr and "Traceback" not in r.stderr


def test_preference_chosen_equal_rejected(tmp_path):
    p = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "q", "chosen": "same", "rejected": "same"}])
    d = load_data(str(p))
    assert [str(x) for x in d.problems] == [f"{p}:1: rejected: identical to chosen: the pair teaches nothing; fix or drop it"]


def test_consecutive_turns_are_merged_like_ollama(tmp_path):
    rec = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "a"},
                        {"role": "user", "content": "b"}, {"role": "assistant", "content": "c"}]}
    d = load_data(str(write_jsonl(tmp_path / "m.jsonl", [rec])))
    assert d.records[0]["messages"][1] == {"role": "user", "content": "a\n\nb"}
    assert d.notes["merged consecutive same-role turns (as Ollama does)"] == 1


def test_parquet_and_datasets_directory_report_rows(tmp_path):
    import datasets

    rows = [{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": ""}]
    ds = datasets.Dataset.from_list(rows)
    ds.to_parquet(str(tmp_path / "d.parquet"))
    d = load_data(str(tmp_path / "d.parquet"))
    assert [str(x) for x in d.problems] == [f"{tmp_path / 'd.parquet'}:row 1: completion: empty"]
    datasets.DatasetDict({"train": ds, "test": ds}).save_to_disk(str(tmp_path / "dsdir"))
    d = load_data(DataSource(str(tmp_path / "dsdir"), split="test"))
    assert [str(x) for x in d.problems] == [f"{tmp_path / 'dsdir'}:row 1: completion: empty"]
    with pytest.raises(ForgeError, match="split 'validation' not found; it has train, test"):
        load_data(DataSource(str(tmp_path / "dsdir"), split="validation"))


def test_hub_id_path_loads_through_datasets(tmp_path):
    """The Hub-id path (`datasets.load_dataset`) exercised on a local repo-shaped folder of data files."""
    repo = tmp_path / "org" / "my-data"
    (repo / "data").mkdir(parents=True)
    write_jsonl(repo / "data" / "train.jsonl", [CHAT])
    write_jsonl(repo / "data" / "test.jsonl", [CHAT, CHAT])
    d = load_data(DataSource(str(repo), split="test"))
    assert d.format == "messages" and len(d.records) == 1 and "duplicate" in str(d.problems[0])


def test_token_lengths_with_a_model(tmp_path, tiny_model):
    model = tiny_model("qwen2")
    long = "word " * 300
    rows = [CHAT, {"messages": [{"role": "user", "content": long}, {"role": "assistant", "content": "ok"}]}]
    p = write_jsonl(tmp_path / "d.jsonl", rows)
    r = forge("data", "check", str(p), "--model", str(model), "--max-length", "64", "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["tokens"]["over_max_length"] == 1
    assert rep["tokens"]["max"] > 64 and rep["tokens"]["p50"] < rep["tokens"]["max"]
    assert rep["tokens"]["dropped_tokens"] == rep["tokens"]["max"] - 64
