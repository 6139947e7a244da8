"""forge quantize: llama.cpp's quantizer in a child process; the types it chooses are the ones its rules give (our
copy of them makes the fallback report), the Q4_K_M file is small and still computes what the F16 one does."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ollama_forge.errors import ForgeError
from ollama_forge.gguf.convert import convert_hf_to_gguf
from ollama_forge.llama_child import run_in_child
from ollama_forge.quantize import QuantizeConfig, plan_types, quantize_gguf, read_tensor_types
from tests.test_convert import HF, llama_logits, load_llama, prompts

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def f16_gguf(tiny_model, tmp_path_factory):
    d = tmp_path_factory.mktemp("qgguf")
    done: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in done:
            done[family] = d / f"{family}-f16.gguf"
            convert_hf_to_gguf(tiny_model(family), done[family])
        return done[family]

    return get


def _types(path: Path) -> dict[str, str]:
    return {name: t for name, _shape, t in read_tensor_types(path)[1]}


@pytest.mark.parametrize("family", ["llama-q", "qwen2-q"])
def test_q4_k_m_of_an_aligned_model_follows_llama_cpp_rules_is_small_and_correlates(family, f16_gguf, tiny_model,
                                                                                    tmp_path):
    f16 = f16_gguf(family)
    out = tmp_path / "m-q4_k_m.gguf"
    report = quantize_gguf(f16, out)
    assert report.fallbacks == [] and out.is_file()
    info = run_in_child("ollama_forge.llama_child:model_info", {"path": str(out)}, log_path=tmp_path / "load.log",
                        what=f"load {out.name}")
    assert info["description"].endswith("Q4_K - Medium") and info["has_chat_template"]
    got = _types(out)
    meta, tensors = read_tensor_types(f16)
    plan = {t.name: t.chosen for t in plan_types(tensors, "Q4_K_M", meta["n_layer"], arch=meta["arch"])}
    assert got == plan
    # The mix itself. 2 layers: llama.cpp's use_more_bits(i, 2) is i >= 7*2/8, so layer 1's attn_v and ffn_down
    # get Q6_K, layer 0's stay Q4_K; the output is Q6_K.
    assert got["blk.0.attn_q.weight"] == got["blk.1.ffn_up.weight"] == got["blk.0.attn_v.weight"] == "Q4_K"
    assert got["blk.1.attn_v.weight"] == got["blk.1.ffn_down.weight"] == "Q6_K"
    # The output matrix is Q6_K; with tied embeddings (qwen2) token_embd is that matrix and gets the same.
    assert got.get("output.weight", got["token_embd.weight"]) == "Q6_K"
    assert got["token_embd.weight"] == ("Q4_K" if "output.weight" in got else "Q6_K")
    assert got["blk.0.attn_norm.weight"] == "F32"
    ratio = out.stat().st_size / f16.stat().st_size
    assert ratio <= 0.40, f"Q4_K_M is {ratio:.3f}x the F16 file"
    assert report.bytes_out == out.stat().st_size and report.bytes_in == f16.stat().st_size
    hf = HF(tiny_model(family))
    corrs = []
    for text in prompts(hf):
        ids = hf.ids(text)
        logits = []
        for path in (f16, out):
            llm = load_llama(path)
            try:
                logits.append(llama_logits(llm, ids))
            finally:
                llm.close()
        corrs.append(float(np.corrcoef(logits[0].ravel(), logits[1].ravel())[0, 1]))
    print(f"{family}: Q4_K_M/F16 size {ratio:.3f}, logit correlation min {min(corrs):.4f}")
    assert min(corrs) >= 0.9, corrs


@pytest.mark.parametrize("qtype", ["Q4_K_S", "Q4_0", "Q5_K_M", "Q6_K", "Q8_0"])
def test_every_offered_type_gives_the_tensor_types_llama_cpp_rules_say(f16_gguf, tmp_path, qtype):
    f16 = f16_gguf("qwen2-q")
    out = tmp_path / f"m-{qtype}.gguf"
    quantize_gguf(f16, out, QuantizeConfig(type=qtype))
    meta, tensors = read_tensor_types(f16)
    assert _types(out) == {t.name: t.chosen for t in plan_types(tensors, qtype, meta["n_layer"], arch=meta["arch"])}


def test_fallback_report_for_rows_that_are_not_a_multiple_of_256(f16_gguf, tmp_path):
    # mistral's tiny shape: hidden 64 and ffn 176, so Q4_K -> Q5_0, Q6_K -> Q8_0, and 176 (not a multiple of 32)
    # -> F16 for ffn_down.
    f16 = f16_gguf("mistral")
    out = tmp_path / "m.gguf"
    report = quantize_gguf(f16, out)
    got = _types(out)
    meta, tensors = read_tensor_types(f16)
    plan = plan_types(tensors, "Q4_K_M", meta["n_layer"], arch=meta["arch"])
    assert got == {t.name: t.chosen for t in plan}
    claimed = 0
    for line in report.fallbacks:
        m = re.match(r"(\d+) tensors?: (\w+) -> (\w+): row size (\d+) not a multiple of (\d+)( nor \d+)? \(", line)
        assert m, line
        n, want, chosen, ne0, block = int(m[1]), m[2], m[3], int(m[4]), int(m[5])
        assert ne0 % block != 0
        matching = [t for t in plan if t.intended == want and t.chosen == chosen and t.ne0 == ne0]
        assert len(matching) == n and all(got[t.name] == chosen for t in matching), line
        claimed += n
    assert claimed == sum(1 for t in plan if t.intended != t.chosen) > 0
    assert any("Q4_K -> F16: row size 176 not a multiple of 256 nor 32" in line for line in report.fallbacks)
    # llama.cpp counts the same fallbacks, except the output tensor's Q6_K -> Q8_0 (its own rule, not a fallback).
    log = report.log_path.read_text()
    n_llama = int(re.search(r"(\d+) of \d+ tensor\(s\) required fallback", log)[1])
    assert n_llama == claimed - sum(1 for t in plan if t.name in ("output.weight", "token_embd.weight")
                                    and t.intended != t.chosen and t.intended == "Q6_K" and t.chosen == "Q8_0")
    assert out.is_file()


def test_a_failure_inside_llama_cpp_is_one_clear_line_and_its_log_is_kept(f16_gguf, tmp_path):
    import gguf

    truncated = tmp_path / "cut-f16.gguf"
    data = f16_gguf("qwen2").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ForgeError, match="not a readable GGUF"):
        quantize_gguf(truncated, tmp_path / "out.gguf")
    # A well-formed GGUF llama.cpp cannot load (an architecture it does not know): return code 1 inside llama.cpp.
    broken = tmp_path / "broken-f16.gguf"
    w = gguf.GGUFWriter(broken, "notanarch")
    w.add_tensor("blk.0.attn_q.weight", np.ones((256, 256), dtype=np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ForgeError) as e:
        quantize_gguf(broken, tmp_path / "out.gguf", QuantizeConfig(log_path=str(tmp_path / "q.log")))
    line = e.value.one_line()
    print(line)
    assert "\n" not in line and "quantize broken-f16.gguf" in line and str(tmp_path / "q.log") in line
    assert (tmp_path / "q.log").stat().st_size > 0
    assert not (tmp_path / "out.gguf").exists()
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]


def test_a_crash_in_the_child_process_is_one_clear_line(tmp_path):
    log = tmp_path / "child.log"
    assert run_in_child("ollama_forge.llama_child:self_check", {"mode": "ok"}, log_path=log, what="check") == "ok"
    with pytest.raises(ForgeError) as e:
        run_in_child("ollama_forge.llama_child:self_check", {"mode": "abort"}, log_path=log, what="load x.gguf")
    assert "load x.gguf: llama.cpp crashed (SIGABRT)" in e.value.one_line() and str(log) in e.value.one_line()
    with pytest.raises(ForgeError) as e:
        run_in_child("ollama_forge.llama_child:self_check", {"mode": "raise"}, log_path=log, what="load y")
    assert "load y: RuntimeError: self-check failure" in e.value.one_line()


def test_cli_quantize_reports_sizes_and_fallbacks_and_keeps_llama_cpp_off_the_terminal(f16_gguf, tmp_path):
    src = tmp_path / "m-f16.gguf"
    src.write_bytes(f16_gguf("qwen2").read_bytes())
    r = subprocess.run([sys.executable, "-m", "ollama_forge", "quantize", str(src)], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "m-q4_k_m.gguf").is_file()
    assert "MB" in r.stdout and "fell back" in r.stdout and "Q4_K -> Q5_0" in r.stdout
    assert "llama_model_quantize" not in r.stdout + r.stderr
    assert "llama_model_quantize" in (tmp_path / "logs" / "m-q4_k_m.gguf.quantize.log").read_text()
    r = subprocess.run([sys.executable, "-m", "ollama_forge", "quantize", str(src), "--type", "Q3_K_S"],
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
    assert r.returncode == 2 and "invalid choice" in r.stderr


def test_the_cli_offers_exactly_the_library_types():
    from ollama_forge.commands.quantize import TYPES
    from ollama_forge.quantize import QUANT_TYPES

    assert TYPES == tuple(QUANT_TYPES)
