"""`forge merge` beside PEFT merge_and_unload() + save_pretrained, on a Qwen2.5-0.5B-shaped model with a rank-16
all-linear adapter: peak RSS and wall time, as ratios from the same run (goal: peak RSS <= 0.3x PEFT's).

    .venv/bin/python bench/merge.py [--dtype bfloat16|float32]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CACHE, measure, qwen05b  # noqa: E402

PEFT_SIDE = """
import sys, torch
from peft import PeftModel
from transformers import AutoModelForCausalLM
base, adapter, out, dtype = sys.argv[1:5]
m = AutoModelForCausalLM.from_pretrained(base, dtype=getattr(torch, dtype))
m = PeftModel.from_pretrained(m, adapter).merge_and_unload()
m.save_pretrained(out)
"""

MAKE_ADAPTER = """
import sys, torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM
base, out = sys.argv[1:3]
torch.manual_seed(0)
m = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
p = get_peft_model(m, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False))
p.save_pretrained(out)
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    args = ap.parse_args()
    base = qwen05b(args.dtype)
    adapter = CACHE / "qwen05b-adapter-r16"
    if not (adapter / "adapter_config.json").is_file():
        measure([sys.executable, "-c", MAKE_ADAPTER, str(base), str(adapter)])
    out_f, out_p = CACHE / "merged-forge", CACHE / "merged-peft"
    for d in (out_f, out_p):
        shutil.rmtree(d, ignore_errors=True)
    f_wall, f_rss = measure([sys.executable, "-m", "ollama_forge", "-q", "merge", "--adapter", str(adapter),
                             "--base", str(base), "-o", str(out_f)])
    p_wall, p_rss = measure([sys.executable, "-c", PEFT_SIDE, str(base), str(adapter), str(out_p), args.dtype])
    size = sum(f.stat().st_size for f in base.glob("*.safetensors")) / 1e6
    print(f"model: Qwen2.5-0.5B-shaped, {args.dtype}, {size:.0f} MB safetensors; adapter r=16 all-linear")
    print(f"forge merge : {f_wall:6.1f} s  peak RSS {f_rss:7.0f} MB")
    print(f"PEFT merge  : {p_wall:6.1f} s  peak RSS {p_rss:7.0f} MB")
    print(f"ratio       : wall {f_wall / p_wall:.2f}x  peak RSS {f_rss / p_rss:.2f}x  (goal RSS <= 0.30x)")
    from safetensors import safe_open

    import torch
    worst = 0
    with safe_open(str(next(out_f.glob("*.safetensors"))), "pt") as a:
        pfiles = list(out_p.glob("*.safetensors"))
        theirs = {}
        for pf in pfiles:
            with safe_open(str(pf), "pt") as b:
                for k in b.keys():
                    theirs[k] = pf
        for k in list(a.keys())[:40]:
            x = a.get_tensor(k)
            with safe_open(str(theirs[k]), "pt") as b:
                y = b.get_tensor(k)
            if x.dtype == torch.bfloat16:
                ulp = (x.float().abs().clamp_min(1e-30).log2().floor() - 7).exp2()
                worst = max(worst, float(((x.float() - y.float()).abs() / ulp).max()))
            else:
                worst = max(worst, float((x - y).abs().max()))
    unit = "ulp" if args.dtype == "bfloat16" else "abs"
    print(f"weights vs PEFT (first 40 tensors): max difference {worst:.3g} {unit}")


if __name__ == "__main__":
    main()
