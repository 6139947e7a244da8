"""Streaming LoRA merge: merged logits equal PEFT adapter-on logits; PEFT's scaling rules; refusals are clear."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ollama_forge.errors import ForgeError
from ollama_forge.merge import merge_adapter

REPO = Path(__file__).resolve().parents[1]
PROMPTS = ["Hello world, this is a test.", "def add(a, b):\n    return a + b", "Digits 12345 and café 東京"]


def make_adapter(base: Path, out: Path, *, r=8, alpha=16, rslora=False, seed=0, **extra) -> Path:
    """A LoRA adapter with random, non-zero A and B (PEFT's init sets B = 0, which would merge to a no-op)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    cfg = LoraConfig(r=r, lora_alpha=alpha, target_modules="all-linear", use_rslora=rslora,
                     init_lora_weights=False, lora_dropout=0.0, **extra)
    peft_model = get_peft_model(model, cfg)
    with torch.no_grad():  # make B large enough that a wrong scale shows in the logits
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    peft_model.save_pretrained(out)
    return out


def logits(model, tok, prompts=PROMPTS):
    import torch

    out = []
    with torch.no_grad():
        for p in prompts:
            ids = tok(p, return_tensors="pt")
            out.append(model(**ids).logits[0])
    return out


@pytest.mark.parametrize("family, rslora", [("llama", False), ("qwen2", True)])
def test_merged_logits_equal_peft_adapter_on(tiny_model, tmp_path, family, rslora):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = tiny_model(family)
    adapter = make_adapter(base, tmp_path / "adapter", rslora=rslora,
                           rank_pattern={"v_proj": 4}, alpha_pattern={"down_proj": 8})
    rep = merge_adapter(adapter, base, tmp_path / "merged")
    assert rep.merged_modules > 0
    tok = AutoTokenizer.from_pretrained(base)
    ref = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), adapter).eval()
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()
    plain = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    diffs = [float((a - b).abs().max()) for a, b in zip(logits(ref, tok), logits(merged, tok))]
    base_diff = max(float((a - b).abs().max()) for a, b in zip(logits(ref, tok), logits(plain, tok)))
    print(f"{family}: max |merged - adapter-on| = {max(diffs):.2e}; adapter moves logits by {base_diff:.3f}")
    assert max(diffs) <= 1e-4
    assert base_diff > 1e-2, "the adapter must actually change the model, or the check proves nothing"
    # the merged directory is complete: tokenizer and chat template travel with it
    assert (tmp_path / "merged" / "tokenizer.json").is_file() or (tmp_path / "merged" / "tokenizer.model").is_file()
    assert AutoTokenizer.from_pretrained(tmp_path / "merged").chat_template == tok.chat_template


def test_wrong_scale_would_be_caught(tiny_model, tmp_path):
    """Guard for the check above: halving the scale moves the logits far past the 1e-4 bound."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = tiny_model("llama")
    adapter = make_adapter(base, tmp_path / "adapter")
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["lora_alpha"] = cfg["lora_alpha"] / 2
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    (wrong / "adapter_config.json").write_text(json.dumps(cfg))
    (wrong / "adapter_model.safetensors").write_bytes((adapter / "adapter_model.safetensors").read_bytes())
    merge_adapter(wrong, base, tmp_path / "merged")
    tok = AutoTokenizer.from_pretrained(base)
    ref = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), adapter).eval()
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()
    assert max(float((a - b).abs().max()) for a, b in zip(logits(ref, tok), logits(merged, tok))) > 1e-2


def test_bf16_merge_rounds_once(tiny_model, tmp_path):
    """bf16 base: exactly round(W + scale*B@A) computed in fp32 — within 1 ulp of PEFT's twice-rounded merge."""
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from transformers import AutoTokenizer

    base = tmp_path / "base-bf16"  # a bf16 checkpoint, as most released models are
    AutoModelForCausalLM.from_pretrained(tiny_model("llama"), dtype=torch.bfloat16).save_pretrained(base)
    AutoTokenizer.from_pretrained(tiny_model("llama")).save_pretrained(base)
    adapter = make_adapter(tiny_model("llama"), tmp_path / "adapter")
    merge_adapter(adapter, base, tmp_path / "m16")
    ours = load_file(str(tmp_path / "m16" / "model.safetensors"))
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16), adapter)
    theirs = peft.merge_and_unload().state_dict()
    name = "model.layers.0.self_attn.q_proj.weight"
    a, b = ours[name], theirs[name]
    assert a.dtype == torch.bfloat16
    ulp = (a.float().abs().clamp_min(1e-30).log2().floor() - 7).exp2()  # bf16: 8 significant bits
    assert bool(((a.float() - b.float()).abs() <= ulp * 1.0001).all())
    w16 = load_file(str(base / "model.safetensors"))[name]
    from ollama_forge.merge import delta_for, load_adapter

    exact = (w16.float() + delta_for(load_adapter(adapter), "model.layers.0.self_attn.q_proj")).to(torch.bfloat16)
    assert torch.equal(a, exact)


def test_dora_is_refused_and_nothing_is_written(tiny_model, tmp_path):
    base = tiny_model("llama")
    adapter = make_adapter(base, tmp_path / "adapter")
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["use_dora"] = True
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ForgeError, match="DoRA"):
        merge_adapter(adapter, base, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def test_cli_merges_a_run_directory_and_says_qlora(tiny_model, tmp_path):
    base = tiny_model("qwen2")
    run = tmp_path / "run"
    make_adapter(base, run / "adapter")
    (run / "recipe.resolved.yaml").write_text(f"base_model: {base}\ntrain:\n  method: qlora\n")
    r = subprocess.run([sys.executable, "-m", "ollama_forge", "merge", str(run)], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "QLoRA" in r.stderr and "merged into the original weights" in r.stderr
    assert (run / "merged" / "config.json").is_file() and "merged" in r.stdout
    r = subprocess.run([sys.executable, "-m", "ollama_forge", "merge", str(tmp_path / "nope")], capture_output=True,
                       text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert r.returncode == 2 and "no adapter/ folder" in r.stderr and "Traceback" not in r.stderr


def test_qlora_adapter_merged_into_full_precision_base_is_bounded_by_quantization_error(tiny_model, tmp_path):
    """What QLoRA trained (adapter on the 4-bit NF4 base) vs what we ship (adapter merged into the fp32 base).

    They differ by the base's NF4 rounding, which the merge cannot undo (merging into 4-bit weights would keep it,
    and add a second rounding of W + BA). Bound: the gap is no larger than the quantization error of the base
    alone (4-bit base vs fp32 base, adapter off) plus a margin. On these random fixtures that error is large
    (measured: top-1 agreement ~0.55-0.6, KL ~0.34 nats; random weights have tiny logit margins), on real models
    it is small; the ratio is what this test pins.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    base = tiny_model("llama-q")  # NF4 on CPU needs in-features that are multiples of its 64-value blocks
    adapter = make_adapter(base, tmp_path / "adapter")
    merge_adapter(adapter, base, tmp_path / "merged", quantized_base=True)
    tok = AutoTokenizer.from_pretrained(base)
    nf4 = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    q_base = AutoModelForCausalLM.from_pretrained(base, quantization_config=nf4).eval()
    fp_base = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    trained = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, quantization_config=nf4),
                                        adapter).eval()
    shipped = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()

    def compare(a, b):
        agree = total = 0
        kls = []
        for x, y in zip(logits(a, tok), logits(b, tok)):
            agree += int((x.argmax(-1) == y.argmax(-1)).sum())
            total += x.shape[0]
            kls.append(float(torch.nn.functional.kl_div(y.log_softmax(-1), x.log_softmax(-1), log_target=True,
                                                        reduction="none").sum(-1).mean()))
        return agree / total, sum(kls) / len(kls)

    q_top1, q_kl = compare(q_base, fp_base)
    m_top1, m_kl = compare(trained, shipped)
    print(f"NF4 rounding alone: top-1 {q_top1:.3f}, KL {q_kl:.3f}; QLoRA-as-trained vs merged: top-1 {m_top1:.3f}, "
          f"KL {m_kl:.3f}")
    assert m_kl <= 1.5 * q_kl + 0.02
    assert m_top1 >= q_top1 - 0.15
