"""The fidelity gate passes on a correct chain and names the broken hop, with its likely cause, on chains broken on
purpose: Q/K permutation removed (conversion), a stop string missing from the Modelfile (template), the adapter
merged with the wrong scale (merge), the adapter merged into 4-bit weights (merge).

The chain is tests/eval_chain.py's (tiny llama trained on a keyword -> category task, plain chat format). Models
shared between the broken chains are scored once (run_gate's cache).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests import eval_chain

N_PROMPTS = 8  # 8 prompts x ~4 answer positions; every break below moves far more than that resolves


@pytest.fixture(scope="session")
def chain(tiny_model, tiny_model_root) -> Path:
    return eval_chain.trained_chain(tiny_model_root, tiny_model("llama-q"))


@pytest.fixture(scope="module")
def base(tiny_model) -> Path:
    return tiny_model("llama-q")


@pytest.fixture(scope="module")
def prompts(chain):
    from ollama_forge.evaluate import load_prompts

    return load_prompts(eval_chain.data_dir(chain) / "eval.jsonl", limit=N_PROMPTS)


@pytest.fixture(scope="module")
def cache() -> dict:
    return {}


def gate(prompts, base, cache, **paths):
    from ollama_forge.evaluate.fidelity import run_gate

    report = run_gate(prompts, base=base, cache=cache, **paths)
    print(report.table())
    return report


def failing(report) -> list[str]:
    return [h.name for h in report.failing]


@pytest.mark.slow  # trains the chain once per session (cached on disk)
def test_gate_passes_on_the_correct_chain_rebuilding_what_the_run_did_not_keep(chain, tmp_path, capsys):
    """`forge eval --fidelity RUN`: the default export keeps only the adapter and the quantized GGUF, so the gate
    merges and converts again; every hop passes and the report is written."""
    import shutil

    from ollama_forge.cli import main

    run = eval_chain.copy_run(chain, tmp_path / "run")
    shutil.rmtree(run / "merged")
    (run / "model-f16.gguf").unlink()
    rc = main(["eval", "--fidelity", str(run)])  # the recipe's gate.prompts: all 16 held-out prompts
    out = capsys.readouterr()
    assert rc == 0, out.out
    assert "gate PASSED" in out.out and "gate_merged=" in out.err and "gate_f16=" in out.err
    report = json.loads((run / "fidelity.json").read_text())
    assert report["passed"] and report["n_prompts"] == eval_chain.N_EVAL
    hops = {h["name"]: h for h in report["hops"]}
    assert set(hops) == {"adapter -> merged", "merged -> F16", "F16 -> Q4_K_M", "Modelfile"}
    assert all(h["passed"] and h["skipped"] is None for h in hops.values())
    assert hops["adapter -> merged"]["top1"] == 1.0 and hops["adapter -> merged"]["kl_mean"] < 1e-6
    assert hops["merged -> F16"]["top1"] >= 0.99 and hops["merged -> F16"]["kl_mean"] < 1e-3
    assert hops["F16 -> Q4_K_M"]["top1"] >= 0.90
    assert hops["F16 -> Q4_K_M"]["positions"] >= 3 * eval_chain.N_EVAL  # each label and its end-of-turn token
    assert hops["Modelfile"]["stop_rate"] == 1.0 == hops["Modelfile"]["reference_stop_rate"]
    assert not (run / "merged").exists()  # rebuilt in a temporary folder, not left in the run


@pytest.mark.slow  # trains the chain once per session (cached on disk)
def test_gate_catches_a_conversion_without_the_qk_permutation(chain, base, prompts, cache, tmp_path):
    from ollama_forge.quantize import quantize_gguf

    run = chain / "run"
    f16 = eval_chain.convert_without_qk_permutation(run / "merged", tmp_path / "model-f16.gguf")
    quant = quantize_gguf(f16, tmp_path / "model-q4_k_m.gguf").output
    mf = eval_chain.modelfile_without_stop(run / "Modelfile", tmp_path / "Modelfile", [], quant)
    report = gate(prompts, base, cache, adapter=run / "adapter", merged=run / "merged", f16=f16, quant=quant,
                  modelfile=mf)
    assert failing(report) == ["merged -> F16"]
    hop = report.hop("merged -> F16")
    assert hop.top1 < 0.9 and hop.likely_cause.startswith("conversion:") and "Q/K permutation" in hop.likely_cause
    assert report.hop("adapter -> merged").passed and report.hop("F16 -> Q4_K_M").passed


@pytest.mark.slow  # trains the chain once per session (cached on disk)
def test_gate_catches_a_missing_stop_string_llama_cpp_does_not_stop_on(chain, base, prompts, cache, tmp_path):
    """The plain format ends a turn with EOS and stops on "### User:" too; llama.cpp ends generation on EOS by
    itself but not on "### User:", so dropping that stop is a broken Modelfile and dropping EOS's is not."""
    from ollama_forge.evaluate.fidelity import check_modelfile
    from ollama_forge.modelfile import read

    run = chain / "run"
    quant = run / "model-q4_k_m.gguf"
    assert read(run / "Modelfile").parameters["stop"] == ["<|eot_id|>", "### User:"]
    mf = eval_chain.modelfile_without_stop(run / "Modelfile", tmp_path / "Modelfile", ["### User:"], quant)
    report = gate(prompts, base, cache, adapter=run / "adapter", quant=quant, modelfile=mf)
    assert failing(report) == ["Modelfile"]
    hop = report.hop("Modelfile")
    assert hop.likely_cause.startswith("template:") and "'### User:'" in hop.problems[0]
    harmless = eval_chain.modelfile_without_stop(run / "Modelfile", tmp_path / "M2", ["<|eot_id|>"], quant)
    assert check_modelfile(read(harmless), quant, "plain") == []


@pytest.mark.slow  # trains the chain once per session (cached on disk)
def test_gate_catches_an_adapter_merged_with_the_wrong_scale(chain, base, prompts, cache, tmp_path):
    run = chain / "run"
    merged = eval_chain.merge_with_scale(run / "adapter", base, tmp_path / "merged", factor=2.0)
    report = gate(prompts, base, cache, adapter=run / "adapter", merged=merged)
    assert failing(report) == ["adapter -> merged"]
    hop = report.hop("adapter -> merged")
    assert hop.top1 < 1.0 and hop.kl_mean > 1e-3 and hop.likely_cause.startswith("merge:")
    assert "wrong scale" in hop.likely_cause


@pytest.mark.slow  # trains the chain once per session (cached on disk)
def test_gate_catches_an_adapter_merged_into_4bit_weights(chain, base, prompts, cache, tmp_path):
    run = chain / "run"
    merged = eval_chain.merge_into_4bit(run / "adapter", base, tmp_path / "merged")
    report = gate(prompts, base, cache, adapter=run / "adapter", merged=merged)
    assert failing(report) == ["adapter -> merged"]
    hop = report.hop("adapter -> merged")
    # NF4 rounding moves every distribution (mean KL ~1e-2) while most argmaxes survive: the KL bound catches it.
    assert hop.kl_mean > hop.max_kl and any("mean KL" in p for p in hop.problems)
    assert hop.likely_cause.startswith("merge:") and "quantized weights" in hop.likely_cause
