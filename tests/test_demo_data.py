"""The demo's corpus and task data: deterministic, and held-out prompts disjoint from everything trained on."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from ollama_forge.demo import corpus as C
from ollama_forge.demo import data as D
from ollama_forge.demo import recipes_dir

SHIPPED = recipes_dir() / "demo"


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def shipped() -> dict:
    return {"train": _jsonl(SHIPPED / "train.jsonl"), "dpo": _jsonl(SHIPPED / "dpo.jsonl"),
            "heldout": _jsonl(SHIPPED / "heldout.jsonl"),
            "splits": json.loads((SHIPPED / "splits.json").read_text(encoding="utf-8"))}


def test_module_split_depends_on_the_name_alone():
    mods = C.modules()
    assert len(mods) > 100, "the standard library's public top-level modules"
    held = [m for m in mods if m.held_out]
    assert 0.1 < len(held) / len(mods) < 0.3  # about one in HELD_OUT_EVERY
    assert all(C.is_held_out(m.name) == m.held_out for m in mods)
    assert not any(C.is_held_out(m.name) for m in mods if not m.held_out)


def test_generation_is_deterministic_and_balanced():
    mods = C.modules()[:15]
    sizes = D.Sizes(sft=20, dpo=6, heldout=4)
    a, b = D.render(D.generate(sizes, mods)), D.render(D.generate(sizes, mods))
    assert a == b
    data = D.generate(sizes, mods)
    assert data.splits["counts"]["train"] == {"code": 10, "prose": 10}
    assert all(r["messages"][-1]["content"] in D.LABELS for r in data.train)
    assert all(r["chosen"] != r["rejected"] for r in data.dpo)


def test_shipped_files_are_what_the_generator_writes(shipped):
    if shipped["splits"]["python"] != ".".join(map(str, sys.version_info[:3])):
        pytest.skip(f"recipes/demo was generated on Python {shipped['splits']['python']}: its stdlib differs")
    assert D.render(D.generate()) == {name: (SHIPPED / name).read_text(encoding="utf-8")
                                      for name in (*D.FILES, "splits.json")}


def test_shipped_data_has_the_documented_sizes_and_labels(shipped):
    counts = shipped["splits"]["counts"]
    assert counts == {"train": {"code": 200, "prose": 200}, "dpo": {"code": 60, "prose": 60},
                      "heldout": {"code": 100, "prose": 100}}
    assert len(shipped["train"]) == 400 and len(shipped["dpo"]) == 120 and len(shipped["heldout"]) == 200
    assert {r["reference"] for r in shipped["heldout"]} == set(D.LABELS)


def test_heldout_prompts_are_disjoint_from_everything_trained_on(shipped):
    splits = shipped["splits"]
    train_mods, held_mods = set(splits["train_modules"]), set(splits["heldout_modules"])
    assert not train_mods & held_mods
    assert set(splits["modules_used"]["heldout"]) <= held_mods
    assert set(splits["modules_used"]["train"]) | set(splits["modules_used"]["dpo"]) <= train_mods
    train_snippets = {D.snippet_of(r["messages"][0]["content"]) for r in shipped["train"]} | \
        {D.snippet_of(r["prompt"]) for r in shipped["dpo"]}
    held_snippets = [D.snippet_of(r["prompt"]) for r in shipped["heldout"]]
    assert len(set(held_snippets)) == len(held_snippets)
    assert not train_snippets & set(held_snippets)
    # ... and the base model's pretraining text (the training modules' sources) never contains one verbatim.
    mods = [m for m in C.modules() if m.name in train_mods]
    pretraining = "\n".join(C.pretraining_documents(mods))
    assert [s for s in held_snippets if s in pretraining] == []


def test_demo_recipe_points_at_the_shipped_files():
    from ollama_forge.demo import load_recipe

    rec = load_recipe(None, Path("/tmp/run"))
    assert rec.base_model == ""  # the demo base model, built by forge demo
    assert [Path(p).name for p in rec.data.train] == ["train.jsonl"]
    assert all(Path(p).is_file() for p in rec.data.train + rec.dpo.data + [rec.eval.prompts])
    assert rec.eval.metric == "exact" and rec.chat_format == "chatml"
