"""The arena's record (ollama_forge/arena.py): votes saved whole, A/B votes as DPO pairs the loader accepts, ties
never pairs, a crash mid-write never leaves a line that breaks the DPO data, and a DPO round from the votes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ollama_forge import arena
from ollama_forge.data import load_data
from ollama_forge.errors import ForgeError


def vote(winner: str, prompt: str = "What is the capital of France?", left: str = "Paris.",
         right: str = "Lyon, I think.", **kw) -> arena.Vote:
    return arena.Vote(prompt=prompt, left_model="base.gguf", right_model="tuned:v1", left_answer=left,
                      right_answer=right, winner=winner, **kw)


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def test_a_vote_for_each_side_lands_in_both_files_with_the_winner_as_chosen(tmp_path):
    r1 = arena.record_vote(tmp_path, vote("left", options={"temperature": 0.0}))
    r2 = arena.record_vote(tmp_path, vote("right", prompt="Say hello.", left="Bye.", right="Hello!", blind=True,
                                          seed=42, round=1, swapped=True))
    assert (r1.votes, r1.pairs, r2.votes, r2.pairs) == (1, 1, 2, 2)
    votes = lines(tmp_path / "votes.jsonl")
    assert votes[0]["prompt"] == "What is the capital of France?"
    assert votes[0]["left"] == {"model": "base.gguf", "answer": "Paris."}
    assert votes[0]["right"] == {"model": "tuned:v1", "answer": "Lyon, I think."}
    assert votes[0]["winner"] == "left" and votes[0]["winner_model"] == "base.gguf" and votes[0]["pair"] is True
    assert votes[0]["blind"] is False and votes[0]["options"] == {"temperature": 0.0} and "T" in votes[0]["time"]
    assert votes[1]["winner_model"] == "tuned:v1" and votes[1]["blind"] is True
    assert (votes[1]["seed"], votes[1]["round"], votes[1]["swapped"]) == (42, 1, True)
    assert lines(tmp_path / "arena-dpo.jsonl") == [
        {"prompt": "What is the capital of France?", "chosen": "Paris.", "rejected": "Lyon, I think."},
        {"prompt": "Say hello.", "chosen": "Hello!", "rejected": "Bye."},
    ]
    back = arena.read_votes(tmp_path)
    assert [v.winner for v in back] == ["left", "right"] and back[1].swapped and back[1].seed == 42
    assert abs(back[0].time - r1.votes_path.stat().st_mtime) < 60


def test_ties_identical_and_empty_answers_are_recorded_but_never_pairs(tmp_path):
    results = [arena.record_vote(tmp_path, v) for v in (
        vote("tie"),
        vote("left", left="Same.", right="Same."),
        vote("right", right="   "),
        vote("left"),
        vote("left"),  # the same pair again: recorded as a vote, not duplicated (the loader rejects duplicates)
    )]
    assert [r.pair is not None for r in results] == [False, False, False, True, False]
    assert "never a pair" in results[0].why and "identical" in results[1].why and "empty" in results[2].why
    assert "already" in results[4].why
    votes = lines(tmp_path / "votes.jsonl")
    assert [v["winner"] for v in votes] == ["tie", "left", "right", "left", "left"]
    assert [v["pair"] for v in votes] == [False, False, False, True, False]
    assert votes[0]["winner_model"] is None
    assert len(lines(tmp_path / "arena-dpo.jsonl")) == 1
    assert arena.rebuild_pairs(tmp_path) == 1


def test_an_unknown_winner_is_refused():
    with pytest.raises(ForgeError, match="winner 'A'"):
        vote("A")


def test_pairs_load_as_preference_data(tmp_path):
    for i in range(3):
        arena.record_vote(tmp_path, vote("left" if i % 2 else "right", prompt=f"Question {i}? \"quoted\" ünï",
                                         left=f"left {i}\nsecond line", right=f"right {i}"))
    data = load_data(str(tmp_path / "arena-dpo.jsonl"), fmt="preference")
    assert data.problems == [] and len(data.records) == 3
    assert data.records[1] == {"prompt": "Question 1? \"quoted\" ünï", "chosen": "left 1\nsecond line",
                               "rejected": "right 1"}
    auto = load_data(str(tmp_path / "arena-dpo.jsonl"))  # detected as preference data too
    assert auto.format == "preference"


def test_a_truncated_last_line_is_tolerated_and_cut_before_the_next_append(tmp_path):
    arena.record_vote(tmp_path, vote("left"))
    pp = tmp_path / "arena-dpo.jsonl"
    vp = tmp_path / "votes.jsonl"
    good_pairs, good_votes = pp.read_bytes(), vp.read_bytes()
    # A crash mid-write: half a line, no newline, in both files.
    torn = json.dumps({"prompt": "Say hello.", "chosen": "Hello!", "rejected": "Bye."}).encode()[:25]
    with open(pp, "ab") as f:
        f.write(torn)
    with open(vp, "ab") as f:
        f.write(b'{"time": "2026-')
    assert arena.read_pairs(tmp_path) == lines_of(good_pairs)
    assert arena.read_jsonl(pp)[1] == 1 and len(arena.read_votes(tmp_path)) == 1
    assert arena.count_pairs(tmp_path) == 1  # repairs the file so the DPO loader reads it
    assert pp.read_bytes() == good_pairs
    with open(pp, "ab") as f:
        f.write(torn)
    r = arena.record_vote(tmp_path, vote("right", prompt="Say hello.", left="Bye.", right="Hello!"))
    assert r.votes == 2 and r.pairs == 2
    assert pp.read_bytes() == good_pairs + arena._line({"prompt": "Say hello.", "chosen": "Hello!",
                                                        "rejected": "Bye."})
    assert vp.read_bytes().startswith(good_votes) and len(lines(vp)) == 2
    data = load_data(str(pp), fmt="preference")
    assert data.problems == [] and len(data.records) == 2


def test_a_whole_last_line_without_its_newline_is_kept(tmp_path):
    """A hand-edited file whose last record lacks the newline: that record is data, not a torn write."""
    pp = tmp_path / "arena-dpo.jsonl"
    pp.write_text(json.dumps({"prompt": "Q?", "chosen": "yes", "rejected": "no"}), encoding="utf-8")
    arena.record_vote(tmp_path, vote("left"))
    assert [p["prompt"] for p in lines(pp)] == ["Q?", "What is the capital of France?"]


def lines_of(raw: bytes) -> list[dict]:
    return [json.loads(x) for x in raw.decode().splitlines()]


def test_a_broken_line_in_the_middle_is_a_one_line_error_naming_it(tmp_path):
    (tmp_path / "votes.jsonl").write_text('{"a": 1}\n{oops\n{"b": 2}\n', encoding="utf-8")
    with pytest.raises(ForgeError, match=r"votes\.jsonl:2: not a JSON line"):
        arena.read_votes(tmp_path)


def test_each_line_is_one_write_on_an_append_descriptor(tmp_path, monkeypatch):
    """The whole line goes out in one os.write (a crash can only cut the line, never interleave it)."""
    calls = []
    real = os.write

    def spy(fd, data):
        calls.append(bytes(data))
        return real(fd, data)

    monkeypatch.setattr(arena.os, "write", spy)
    arena.record_vote(tmp_path, vote("left"))
    assert len(calls) == 2 and all(c.endswith(b"\n") and c.count(b"\n") == 1 for c in calls)


def test_run_dir_is_the_given_one_else_the_run_among_the_models(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.resolved.yaml").write_text("base_model: x\n")
    (run / "model-f16.gguf").write_bytes(b"GGUF")
    other = tmp_path / "other.gguf"
    other.write_bytes(b"GGUF")
    assert arena.arena_run_dir("a", "b", tmp_path / "given")[0] == tmp_path / "given"
    assert arena.arena_run_dir(str(other), str(run))[0] == run
    assert arena.arena_run_dir(str(run / "model-f16.gguf"), str(other))[0] == run
    assert arena.arena_run_dir(str(other), "tuned:v1")[0] == Path("arena")


def test_dpo_from_votes_refuses_too_few_pairs_and_says_how_many(tmp_path):
    arena.record_vote(tmp_path, vote("left"))
    arena.record_vote(tmp_path, vote("tie", prompt="Say hello."))
    with pytest.raises(ForgeError) as e:
        arena.dpo_from_votes(tmp_path, min_pairs=3, run_pipeline=lambda *a, **k: pytest.fail("ran"))
    assert "1 voted pair;" in e.value.message and "at least 3" in e.value.message
    assert "2 more prompts" in e.value.hint


def test_dpo_from_votes_sets_the_recipe_and_runs_the_chain_from_dpo(tmp_path, tiny_model):
    from ollama_forge import recipe as recipes

    r = recipes.from_dict({"base_model": str(tiny_model("qwen2")), "data": {"train": ["train.jsonl"]},
                           "ollama": {"model": "arena-test:v1"}})
    recipes.save_resolved(r, tmp_path)
    for i in range(2):
        arena.record_vote(tmp_path, vote("left", prompt=f"Q{i}?"))
    seen = {}
    events = []

    def fake_pipeline(recipe, run_dir, sink=None, **kw):
        seen.update(recipe=recipe, run_dir=run_dir, **kw)
        return "ran"

    out = arena.dpo_from_votes(tmp_path, min_pairs=2, sink=events.append, host="h:1", run_pipeline=fake_pipeline)
    assert out == "ran"
    assert seen["from_stage"] == "dpo" and seen["push"] is True and seen["host"] == "h:1"
    assert seen["run_dir"] == tmp_path
    assert seen["recipe"].dpo.data == [str((tmp_path / "arena-dpo.jsonl").resolve())]
    saved = recipes.load(tmp_path / "recipe.resolved.yaml")
    assert saved.dpo.data == seen["recipe"].dpo.data and saved.ollama.model == "arena-test:v1"
    assert any(e.kind == "choice" and e.data["what"] == "dpo.data" and "2 arena pairs" in e.message
               for e in events)


def test_dpo_from_votes_needs_a_run_with_a_recipe(tmp_path):
    for i in range(2):
        arena.record_vote(tmp_path, vote("left", prompt=f"Q{i}?"))
    with pytest.raises(ForgeError, match="no recipe.resolved.yaml"):
        arena.dpo_from_votes(tmp_path, min_pairs=2, run_pipeline=lambda *a, **k: None)
