"""`forge export` (merge + convert in one pass) and `forge export-adapter` (LoRA -> GGUF adapter), proven against
the merged model: base GGUF + adapter GGUF in llama.cpp gives the merged GGUF's logits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ollama_forge.errors import ForgeError
from tests.test_merge import make_adapter

REPO = Path(__file__).resolve().parents[1]
TEXTS = ["Hello world, this is a test of the adapter.", "def add(a, b):\n    return a + b  # digits 12345",
         "The quick brown fox jumps over the lazy dog while the farmer counts his sheep."]


def load(path: Path, lora: Path | None = None):
    from ollama_forge.backends.llamacpp import load_llama

    kw = {"lora_path": str(lora)} if lora else {}
    return load_llama(str(path), repack=False, logits_all=True, n_ctx=256, n_threads=2, verbose=False, **kw)


def scores(llm, ids):
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


@pytest.fixture(scope="module")
def chain(tiny_model, tmp_path_factory):
    """llama fixture (Q/K permuted by the converter) with a random rsLoRA adapter + rank pattern (folded scales)."""
    from ollama_forge.gguf.convert import ConvertConfig, convert_hf_to_gguf
    from ollama_forge.merge import merge_adapter

    d = tmp_path_factory.mktemp("export")
    base = tiny_model("llama")
    adapter = make_adapter(base, d / "adapter", r=8, alpha=16)
    merge_adapter(adapter, base, d / "merged")
    convert_hf_to_gguf(d / "merged", d / "merged.gguf", ConvertConfig(outtype="f16", name="m"))
    convert_hf_to_gguf(base, d / "base.gguf", ConvertConfig(outtype="f16", name="m"))
    return d, base, adapter


def test_one_pass_export_equals_merge_then_convert(chain):
    from gguf import GGUFReader

    from ollama_forge.gguf.convert import ConvertConfig  # noqa: F401
    from ollama_forge.merge import export_gguf

    d, base, adapter = chain
    rep = export_gguf(adapter, base, d / "one-pass.gguf", outtype="f16")
    assert rep.one_pass and rep.merged_modules > 0
    a, b = GGUFReader(d / "one-pass.gguf"), GGUFReader(d / "merged.gguf")
    ta = {t.name: np.array(t.data) for t in a.tensors}
    tb = {t.name: np.array(t.data) for t in b.tensors}
    assert ta.keys() == tb.keys()
    for name in ta:
        assert np.array_equal(ta[name], tb[name]), name
    assert not list(d.glob(".forge-export-*")), "the temporary overlay directory is removed"


def test_base_gguf_plus_adapter_gguf_equals_merged_gguf(chain):
    from ollama_forge.gguf.adapter import export_adapter

    d, base, adapter = chain
    rep = export_adapter(adapter, base, d / "adapter.gguf")
    assert rep.pairs > 0 and not rep.folded_scale and rep.alpha == 16
    merged, with_lora, plain = load(d / "merged.gguf"), load(d / "base.gguf", d / "adapter.gguf"), load(d / "base.gguf")
    worst, moved = 0.0, 0.0
    for text in TEXTS:
        ids = merged.tokenize(text.encode())
        m, l, p = scores(merged, ids), scores(with_lora, ids), scores(plain, ids)
        assert (m.argmax(-1) == l.argmax(-1)).all()
        worst = max(worst, float(np.abs(m - l).max()))
        moved = max(moved, float(np.abs(m - p).max()))
    print(f"max |merged - base+adapter| = {worst:.4f}; the adapter moves logits by {moved:.3f}")
    assert worst < 0.05, "fp16 tolerance: both paths round weights to f16 at different points"
    assert moved > 10 * worst, "the adapter must move the logits far more than the tolerance"


def test_folded_scales_for_rslora_and_rank_patterns(tiny_model, tmp_path):
    from ollama_forge.gguf.adapter import export_adapter
    from ollama_forge.gguf.convert import ConvertConfig, convert_hf_to_gguf
    from ollama_forge.merge import merge_adapter

    base = tiny_model("qwen2")
    adapter = make_adapter(base, tmp_path / "adapter", r=8, alpha=16, rslora=True, rank_pattern={"v_proj": 4})
    merge_adapter(adapter, base, tmp_path / "merged")
    convert_hf_to_gguf(tmp_path / "merged", tmp_path / "merged.gguf", ConvertConfig(outtype="f32"))
    convert_hf_to_gguf(base, tmp_path / "base.gguf", ConvertConfig(outtype="f32"))
    rep = export_adapter(adapter, base, tmp_path / "adapter.gguf")
    assert rep.folded_scale and rep.alpha == 0
    merged, with_lora = load(tmp_path / "merged.gguf"), load(tmp_path / "base.gguf", tmp_path / "adapter.gguf")
    ids = merged.tokenize(TEXTS[0].encode())
    assert float(np.abs(scores(merged, ids) - scores(with_lora, ids)).max()) < 1e-3  # f32 throughout


def test_grown_vocabulary_is_refused(tiny_model, tmp_path):
    from ollama_forge.gguf.adapter import export_adapter

    base = tiny_model("llama")
    adapter = make_adapter(base, tmp_path / "adapter")
    (adapter / "forge_adapter.json").write_text(json.dumps({"merged_export_only": True}))
    with pytest.raises(ForgeError, match="changed the tokenizer.*forge export RUN_DIR"):
        export_adapter(adapter, base, tmp_path / "a.gguf")
    assert not (tmp_path / "a.gguf").exists()


def test_cli_export_of_a_run_directory(tiny_model, tmp_path):
    base = tiny_model("qwen2")
    run = tmp_path / "run"
    make_adapter(base, run / "adapter")
    (run / "recipe.resolved.yaml").write_text(f"base_model: {base}\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-m", "ollama_forge", "export", str(run)], capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (run / "model-f16.gguf").is_file() and "in one streaming pass" in r.stdout
    assert not (run / "merged").exists(), "no merged HF copy is written"
    r = subprocess.run([sys.executable, "-m", "ollama_forge", "export-adapter", str(run)], capture_output=True,
                       text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (run / "adapter.gguf").is_file() and "ADAPTER" in r.stdout
