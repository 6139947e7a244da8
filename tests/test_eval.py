"""``forge eval``: the tuned model beats its base on held-out prompts, reports are written, and an Ollama name
evaluated through the stand-in answers exactly as the same GGUF does in-process.

The trained chain (tests/eval_chain.py) is a tiny random-init llama taught a keyword -> category task with forge's
trainer; the metric, exact match of the category, is fixed there before training.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from ollama_forge.errors import ForgeError
from tests import eval_chain


@pytest.fixture(scope="session")
def chain(tiny_model, tiny_model_root) -> Path:
    return eval_chain.trained_chain(tiny_model_root, tiny_model("llama-q"))


@pytest.fixture
def run_dir(chain, tmp_path) -> Path:
    return eval_chain.copy_run(chain, tmp_path / "run")


@pytest.mark.slow  # trains the chain once per session (cached on disk)
def test_forge_eval_run_dir_shows_tuned_ahead_of_base_with_ci_and_writes_reports(run_dir, capsys):
    from ollama_forge.cli import main

    rc = main(["eval", str(run_dir), "--max-new-tokens", str(eval_chain.MAX_NEW_TOKENS)])
    out = capsys.readouterr().out
    assert rc == 0
    # The table says how many prompts, where they came from, and gives intervals.
    assert f"{eval_chain.N_EVAL} prompts (data.eval" in out and "95% bootstrap CIs" in out
    assert "overlap with training prompts: 0" in out
    assert "tuned (adapter) vs base: exact" in out and "CI [" in out
    files = {p.name for p in (run_dir / "eval").iterdir()}
    assert {"eval.json", "eval.md", "eval.png"} <= files
    assert (run_dir / "eval" / "eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((run_dir / "eval" / "eval.json").read_text())
    assert report["n"] == eval_chain.N_EVAL and report["overlap_with_training"] == 0
    assert report["metric"] == "exact"  # fixed in the recipe before training
    assert report["decoding"]["temperature"] == 0  # same decoding for every model
    by = {m["label"]: m for m in report["models"]}
    assert set(by) == {"base", "tuned (adapter)", "tuned (Q4_K_M GGUF)"}
    base, tuned, gguf = by["base"]["summary"], by["tuned (adapter)"]["summary"], by["tuned (Q4_K_M GGUF)"]["summary"]
    # Held-out prompts disjoint from training: the tuned model is ahead, with a paired CI excluding zero.
    assert tuned["exact"]["mean"] >= 0.6 and base["exact"]["mean"] == 0  # measured 14 of 16
    assert gguf["exact"]["mean"] >= 0.6
    cmp = {(c["label"], c["metric"]): c for c in report["comparisons"]}
    assert cmp[("tuned (adapter)", "exact")]["low"] > 0
    assert cmp[("tuned (adapter)", "stop_rate")]["low"] > 0
    # Perplexity of the references: scored in-process for the HF and GGUF models, far lower once tuned.
    assert tuned["perplexity"] < 2 < 100 < base["perplexity"]
    assert gguf["perplexity"] == pytest.approx(tuned["perplexity"], rel=0.1)
    assert all(a["tokens"] > 0 and a["ttft_s"] > 0 for m in report["models"] for a in m["answers"])
    # Loss curves from the run's metrics.jsonl go into the report (and the plot).
    assert report["loss_curves"]["sft loss"][0][1] > report["loss_curves"]["sft loss"][-1][1]
    md = (run_dir / "eval" / "eval.md").read_text()
    assert "| tuned (adapter) |" in md and "![metrics](eval.png)" in md


def test_prompts_file_formats_and_one_line_errors(tmp_path):
    from ollama_forge.evaluate import load_prompts

    f = tmp_path / "p.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in [
        {"prompt": "Hi", "reference": "Hello"},
        {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"},
                      {"role": "assistant", "content": "A"}]},
        {"instruction": "Do", "input": "this", "output": "done"},
        {"prompt": "no reference"},
    ]) + "\n")
    ps = load_prompts(f)
    assert [(p.messages[-1]["content"], p.reference) for p in ps] == [
        ("Hi", "Hello"), ("Q", "A"), ("Do\n\nthis", "done"), ("no reference", None)]
    assert ps[1].messages[0] == {"role": "system", "content": "S"} and ps[0].id == f"{f}:1"
    assert len(load_prompts(f, limit=2)) == 2
    t = tmp_path / "p.txt"
    t.write_text("first\n\nsecond\n")
    assert [p.text for p in load_prompts(t)] == ["first", "second"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"prompt": \n')
    with pytest.raises(ForgeError, match=r"bad.jsonl:2: invalid JSON"):
        load_prompts(bad)
    bad.write_text('{"messages": [{"role": "assistant", "content": "x"}]}\n')
    with pytest.raises(ForgeError, match=r"bad.jsonl:1: the prompt must end with a user turn"):
        load_prompts(bad)


def test_forge_eval_usage_errors_are_one_line(tmp_path, capsys):
    from ollama_forge.cli import main

    assert main(["eval"]) == 2
    assert main(["eval", "--models", "x.gguf"]) == 2
    err = capsys.readouterr().err
    assert "nothing to evaluate" in err and "--models needs --prompts FILE" in err and "Traceback" not in err


@pytest.mark.slow  # trains the chain once per session (cached on disk)
def test_ollama_name_through_standin_matches_in_process_gguf(chain, tmp_path, monkeypatch):
    """Check 3: the same GGUF as an Ollama name (stand-in server) and in-process: same answers and metrics."""
    from ollama_forge import ollama as forge_ollama
    from ollama_forge.evaluate import load_prompts, run_eval
    from tests.ollama_standin import testing

    monkeypatch.setenv("FORGE_DATA_DIR", str(tmp_path / "forge-data"))
    url = testing.standin().url
    run = eval_chain.copy_run(chain, tmp_path / "run")
    name = f"forge-test-eval-{uuid.uuid4().hex[:8]}:latest"
    forge_ollama.push(name, forge_ollama.spec_from(run), host=url)
    prompts = load_prompts(eval_chain.data_dir(chain) / "eval.jsonl")
    report = run_eval([str(run / "model-q4_k_m.gguf"), name], prompts, host=url, metric="exact",
                      max_new_tokens=eval_chain.MAX_NEW_TOKENS)
    local, remote = report.models
    assert (local.backend, remote.backend) == ("llamacpp", "ollama")
    assert [a.text for a in remote.answers] == [a.text for a in local.answers]
    assert [a.done_reason for a in remote.answers] == [a.done_reason for a in local.answers]
    assert [a.tokens for a in remote.answers] == [a.tokens for a in local.answers]
    ls, rs = local.summary(), remote.summary()
    for key in ("exact", "contains", "rouge_l", "stop_rate", "mean_tokens", "mean_chars"):
        assert rs[key] == ls[key], key
    assert ls["exact"]["mean"] >= 0.6
    assert local.perplexity is not None and remote.perplexity is None and "log-probabilities" in remote.ppl_note
    assert all(c.diff == 0 for c in report.comparisons)


@pytest.mark.slow  # trains the chain once per session (cached on disk)
def test_hf_backend_answers_like_llama_cpp_on_the_converted_model(chain, tmp_path, capsys):
    """`forge eval --models HF_DIR GGUF`: the transformers backend prompts and stops as llama.cpp does, so the merged
    HF model and its F16 GGUF give the same greedy answers, token counts and perplexity."""
    from ollama_forge.cli import main

    run = chain / "run"
    rc = main(["eval", "--models", str(run / "merged"), str(run / "model-f16.gguf"), "--prompts",
               str(eval_chain.data_dir(chain) / "eval.jsonl"), "--limit", "8", "--metric", "exact",
               "--max-new-tokens", str(eval_chain.MAX_NEW_TOKENS), "--out", str(tmp_path / "out"), "--json"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["files"]) == {"json", "md", "png"} and report["n"] == 8
    hf, gguf = report["models"]
    assert (hf["backend"], gguf["backend"]) == ("transformers", "llamacpp")
    assert [(a["text"], a["done_reason"], a["tokens"]) for a in hf["answers"]] == \
        [(a["text"], a["done_reason"], a["tokens"]) for a in gguf["answers"]]
    assert all(a["done_reason"] == "stop" for a in hf["answers"])
    assert hf["summary"]["perplexity"] == pytest.approx(gguf["summary"]["perplexity"], rel=1e-3)
