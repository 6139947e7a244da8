"""The trained chain the eval and fidelity tests share, and the chains they break on purpose (no heavy imports here).

The task (fixed before training, metric: exact match of the label): "Topic: <4-7 filler words with one keyword>"
-> the keyword's category, one of four words. Sixteen keywords, four per category; training and held-out sentences
are different random draws (checked disjoint), so a model that beats its base on the held-out prompts has learned
the keyword -> category mapping, not the sentences. The base is the tiny random-init ``llama-q`` (Llama-3 layout,
so the converter's Q/K permutation applies; every row a multiple of 256, so Q4_K_M has no fallbacks), trained with
forge's own trainer in the ``plain`` chat format (end of turn: the EOS token; stop strings: EOS and "### User:").

``trained_chain(cache_root, base_dir)`` builds, once per content hash under the fixture cache: run/ (adapter,
metrics.jsonl, recipe.resolved.yaml, merged/, model-f16.gguf, model-q4_k_m.gguf, Modelfile), with its data
(train.jsonl, eval.jsonl) in a sibling ``-data`` folder the recipe names.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

CATEGORIES = {"number": ["four", "eight", "nine", "three"], "time": ["Monday", "morning", "night", "today"],
              "weather": ["cold", "warm", "wind", "clear"], "reading": ["book", "read", "write", "sentence"]}
FILLER = ["the", "a", "with", "about", "after", "again", "every", "first", "good", "like", "little", "many",
          "next", "open", "small", "that", "there", "they", "went", "were", "short", "room", "robot", "dinner"]
N_TRAIN, N_EVAL = 240, 16
# 80 steps of batch 16 at lr 5e-3 (cosine): held-out loss ~10.9 -> <0.1 (token accuracy 0.98 at step 50,
# measured), about a minute of CPU; enough for confident labels, so quantization keeps the argmax.
TRAIN = {"max_steps": 80, "learning_rate": 5e-3, "lr_scheduler": "cosine", "rank": 8, "alpha": 16, "dropout": 0.0,
         "batch_size": 16, "grad_accum": 1, "save_steps": 10000, "eval_steps": 40, "logging_steps": 10,
         "warmup_ratio": 0.0, "seed": 7}
MAX_NEW_TOKENS = 12  # a label and its end-of-turn token are 2-4 tokens; 12 shows a base model running on

_lock = threading.Lock()


def make_task(n: int, seed: int, avoid: set[str] = frozenset()) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    out: list[tuple[str, str]] = []
    seen = set(avoid)
    while len(out) < n:
        cat = rng.choice(sorted(CATEGORIES))
        words = rng.sample(FILLER, rng.randint(4, 7))
        words.insert(rng.randint(0, len(words)), rng.choice(CATEGORIES[cat]))
        q = "Topic: " + " ".join(words)
        if q not in seen:
            seen.add(q)
            out.append((q, cat))
    return out


def task_data() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    train = make_task(N_TRAIN, 1)
    held = make_task(N_EVAL, 2, {q for q, _ in train})
    return train, held


def _jsonl(rows: list[tuple[str, str]]) -> str:
    return "".join(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
                   + "\n" for q, a in rows)


def _code_hash() -> str:
    h = hashlib.sha256()
    for pattern in ("ollama_forge/train/*.py", "ollama_forge/merge.py", "ollama_forge/st_writer.py",
                    "ollama_forge/gguf/*.py", "ollama_forge/quantize.py", "ollama_forge/llama_child.py",
                    "ollama_forge/formats.py", "ollama_forge/modelfile.py", "modelfiles/plain.yaml",
                    "tests/eval_chain.py"):
        for p in sorted(REPO.glob(pattern)):
            h.update(p.name.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


def trained_chain(cache_root: Path, base_dir: Path) -> Path:
    """The cached chain directory (see the module docstring); treat it as read-only."""
    from ollama_forge.atomic import atomic_path

    key = hashlib.sha256(json.dumps({"base": base_dir.name, "train": TRAIN, "n": [N_TRAIN, N_EVAL],
                                     "code": _code_hash()}).encode()).hexdigest()[:16]
    out = Path(cache_root) / f"eval-chain-{key}"
    with _lock:
        if (out / "run" / "Modelfile").is_file():
            return out
        # The data lives beside the chain, under its final name: the recipe the run records points at it.
        data = data_dir(out)
        if not (data / "eval.jsonl").is_file():
            train, held = task_data()
            with atomic_path(data) as tmp:
                tmp.mkdir(parents=True)
                (tmp / "train.jsonl").write_text(_jsonl(train), encoding="utf-8")
                (tmp / "eval.jsonl").write_text(_jsonl(held), encoding="utf-8")
        with atomic_path(out) as tmp:
            _build(tmp, base_dir, data)
    return out


def _build(dest: Path, base_dir: Path, data: Path) -> None:
    from ollama_forge import modelfile as mfmod
    from ollama_forge import recipe as recipes
    from ollama_forge.gguf.convert import convert_hf_to_gguf
    from ollama_forge.merge import merge_adapter
    from ollama_forge.quantize import quantize_gguf
    from ollama_forge.train.sft import train_sft

    dest.mkdir(parents=True)
    run = dest / "run"
    r = recipes.from_dict({"base_model": str(base_dir), "chat_format": "plain",
                           "data": {"train": [str(data / "train.jsonl")], "eval": [str(data / "eval.jsonl")]},
                           "train": TRAIN, "eval": {"metric": "exact", "max_new_tokens": MAX_NEW_TOKENS}})
    train_sft(r, run)
    shutil.rmtree(run / "checkpoints", ignore_errors=True)
    merge_adapter(run / "adapter", base_dir, run / "merged")
    convert_hf_to_gguf(run / "merged", run / "model-f16.gguf")
    quantize_gguf(run / "model-f16.gguf", run / "model-q4_k_m.gguf")
    mf, _ = mfmod.for_model(run / "model-q4_k_m.gguf", chat_format="plain", modelfile_dir=run)
    mf.write(run / "Modelfile")


def data_dir(chain: Path) -> Path:
    return chain.parent / f"{chain.name}-data"


def copy_run(chain: Path, dst: Path) -> Path:
    """A writable copy of the chain's run directory (the data paths in its recipe point into the cache)."""
    shutil.copytree(chain / "run", dst)
    return dst


# ---------------------------------------------------------------------------------------------------------------
# Chains broken on purpose
# ---------------------------------------------------------------------------------------------------------------

def convert_without_qk_permutation(merged: Path, out: Path) -> Path:
    """F16 GGUF converted with the Q/K rotary permutation skipped (the classic converter bug)."""
    from ollama_forge.gguf import convert

    saved = {k: convert.TRANSFORMS[k] for k in ("permute_q", "permute_k")}
    try:
        convert.TRANSFORMS.update({k: (lambda w, ctx: w) for k in saved})
        convert.convert_hf_to_gguf(merged, out)
    finally:
        convert.TRANSFORMS.update(saved)
    return out


def modelfile_without_stop(modelfile: Path, out: Path, drop: list[str], gguf: Path) -> Path:
    """A copy of ``modelfile`` serving ``gguf`` with the stop strings in ``drop`` removed."""
    from ollama_forge.modelfile import read

    mf = read(modelfile)
    mf.parameters["stop"] = [s for s in mf.parameters.get("stop", []) if s not in drop]
    mf.from_ = str(gguf)
    mf.write(out)
    return out


def merge_with_scale(adapter: Path, base_dir: Path, out: Path, factor: float) -> Path:
    """The adapter merged with its scale (alpha/r) multiplied by ``factor``: forge's merger on a copy of the adapter
    whose adapter_config.json says lora_alpha * factor."""
    from ollama_forge.merge import merge_adapter

    with tempfile.TemporaryDirectory(prefix="forge-scale-") as tmp:
        bad = Path(tmp) / "adapter"
        shutil.copytree(adapter, bad)
        cfg = json.loads((bad / "adapter_config.json").read_text())
        cfg["lora_alpha"] = cfg["lora_alpha"] * factor
        (bad / "adapter_config.json").write_text(json.dumps(cfg))
        merge_adapter(bad, base_dir, out)
    return out


def merge_into_4bit(adapter: Path, base_dir: Path, out: Path) -> Path:
    """What forge refuses to do: load the base in 4-bit NF4, merge with PEFT, dequantize and save."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                           bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), quantization_config=q, device_map={"": "cpu"},
                                                 dtype=torch.float32)
    model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload().dequantize()
    model.save_pretrained(str(out))
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"):
        src = adapter / name if (adapter / name).is_file() else base_dir / name
        if src.is_file():
            shutil.copy2(src, out / name)
    return out


def gate_paths(run: Path) -> dict[str, Any]:
    return {"adapter": run / "adapter", "merged": run / "merged", "f16": run / "model-f16.gguf",
            "quant": run / "model-q4_k_m.gguf", "modelfile": run / "Modelfile"}
