"""``forge demo`` end to end at a reduced size: every stage runs, the side-by-side table and the metric print, the
tuned model beats the base on held-out prompts, a second run reuses the cached base and every stage, and a run with
one DPO setting changed redoes DPO and what follows it, nothing before it.

Reduced: a base pretrained for 60 steps on 12 modules, 40 SFT steps, 6 DPO steps, 40 held-out prompts, 4 gate
prompts. Everything else (recipe, data, converter, quantizer, Modelfile, push to the Ollama stand-in, eval) is the
real demo's.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from ollama_forge.demo import run_demo, side_by_side, stage_table
from ollama_forge.demo.base import BaseSpec
from tests.ollama_standin import testing

pytestmark = pytest.mark.slow

SMALL_BASE = dataclasses.replace(BaseSpec(), steps=60, warmup_steps=6, corpus_modules=12)
SMALL_RECIPE = {"train.max_steps": 40, "train.save_steps": 20, "train.eval_steps": 20, "dpo.steps": 6,
                "eval.limit": 40, "gate.prompts": 4}
STAGES = ["base", "data", "sft", "dpo", "merge", "convert", "quantize", "modelfile", "gate", "push", "eval"]


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory) -> dict:
    """Two demo runs into the same directory against the stand-in Ollama: (first report, second report)."""
    root = tmp_path_factory.mktemp("demo")
    mp = pytest.MonkeyPatch()
    mp.setenv("FORGE_DATA_DIR", str(root / "forge-data"))  # push records go here, never the user's
    url = testing.standin().url
    events: list = []
    try:
        kw = dict(base_spec=SMALL_BASE, overrides=SMALL_RECIPE, host=url, cache_dir=root / "cache")
        first = run_demo(root / "run", events.append, **kw)
        second = run_demo(root / "run", events.append, **kw)
    finally:
        mp.undo()
    return {"first": first, "second": second, "events": events, "url": url, "root": root}


def test_every_stage_runs_and_reports_time_and_disk(demo_runs):
    r = demo_runs["first"]
    assert [s.name for s in r.stages] == STAGES
    assert {s.name for s in r.stages if s.status == "ran"} == set(STAGES)
    for name in ("base", "sft", "dpo", "merge", "convert", "quantize", "modelfile", "eval"):
        assert r.stage(name).bytes > 0, name
    assert (r.run_dir / "model-q4_k_m.gguf").is_file() and (r.run_dir / "base" / "model-q4_k_m.gguf").is_file()
    assert "FROM ./model-q4_k_m.gguf" in (r.run_dir / "Modelfile").read_text()
    assert r.gate_passed is True
    table = stage_table(r)
    assert all(f"\n{name} " in "\n" + table for name in STAGES)


def test_pushes_when_ollama_answers(demo_runs):
    r = demo_runs["first"]
    assert r.pushed in ("forge-demo", "forge-demo:latest")  # recipes/demo.yaml: ollama.model
    from ollama_forge.ollama import Ollama

    with Ollama(demo_runs["url"]) as conn:
        assert conn.show("forge-demo:latest") is not None


def test_side_by_side_table_and_metric_show_the_tuned_model_better(demo_runs):
    r = demo_runs["first"]
    assert r.n == 40 and r.metric == "exact"
    text = side_by_side(r, rows=5)
    assert "reference" in text and "base answer" in text and "tuned answer" in text
    assert "n = 40" in text and "95%" in text
    # Base and tuned answered the same prompts with the same decoding.
    ev = r.eval
    assert ev["decoding"]["temperature"] == 0
    assert [a["prompt_id"] for a in ev["models"][0]["answers"]] == [a["prompt_id"] for a in ev["models"][1]["answers"]]
    assert ev["overlap_with_training"] == 0
    assert r.score("tuned")["mean"] > r.score("base")["mean"]
    assert r.tuned_better, text


def test_second_run_reuses_the_base_and_every_stage(demo_runs):
    first, second = demo_runs["first"], demo_runs["second"]
    status = {s.name: s.status for s in second.stages}
    assert status["base"] == "cached"
    for name in ("sft", "dpo", "merge", "convert", "quantize", "gate", "push", "eval"):
        assert status[name] == "cached", (name, status)
    assert second.eval == first.eval
    assert second.stage("sft").seconds < 15 and second.stage("eval").seconds < 5


def test_cli_reruns_only_what_a_changed_key_touches_and_prints_the_tables(demo_runs, capsys, monkeypatch):
    from ollama_forge.cli import main

    root = demo_runs["root"]
    monkeypatch.setenv("FORGE_DATA_DIR", str(root / "forge-data"))
    args = ["demo", "-o", str(root / "run"), "--cache", str(root / "cache"), "--host", demo_runs["url"]]
    for k, v in {**SMALL_RECIPE, "dpo.beta": 0.2}.items():  # a DPO setting changed since the first runs
        args += ["--set", f"{k}={v}"]
    monkeypatch.setattr("ollama_forge.demo.base.BaseSpec", lambda: SMALL_BASE)  # the small base built above
    assert main(args) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    table = lines[lines.index(next(x for x in lines if x.startswith("stage "))) + 2:]
    table = table[:table.index(next(x for x in table if x.startswith("total ")))]
    status = {row.split()[0]: row.split()[2] for row in table}
    assert list(status) == STAGES
    assert status["base"] == status["sft"] == "cached"
    # DPO restarts (its checkpoints from the first run do not stop it), and everything downstream follows.
    assert status["dpo"] == status["merge"] == status["eval"] == "ran", status
    assert "tuned - base" in out and "n = 40" in out
    assert Path(root / "run" / "eval" / "eval.md").is_file()
