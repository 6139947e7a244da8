"""Seeded, deterministic run directories for the TUI tests and snapshots (no clock, no machine-specific paths).

``seed_runs(root)`` writes three runs under ``root``:

- ``alpha``: trained, exported, gated (passed), pushed and evaluated: every file the screens read;
- ``beta``: training stopped at step 20 (a checkpoint, no adapter);
- ``gamma``: only a resolved recipe.

The mtimes are fixed so the Home screen orders them the same everywhere (alpha, beta, gamma).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ollama_forge.events import Event

RECIPE = """\
base_model: Qwen/Qwen2.5-0.5B-Instruct
chat_format: chatml
data:
  train: [data/train.jsonl]
train:
  max_steps: 40
  rank: 8
  alpha: 16
ollama:
  model: alpha-assistant:latest
"""


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _summary(rouge: float, stop: float, ppl: float | None) -> dict:
    def ci(m: float) -> dict:
        return {"mean": m, "low": max(0.0, m - 0.1), "high": min(1.0, m + 0.1), "n": 20}

    return {"n": 20, "perplexity": ppl, "exact": ci(rouge / 2), "contains": ci(rouge * 0.8), "rouge_l": ci(rouge),
            "stop_rate": ci(stop), "mean_tokens": 12.5, "mean_chars": 51.0, "ttft_s": 0.012, "tokens_per_s": 480.0}


EVAL = {
    "created": "2025-01-01T00:00:00Z", "run_dir": "runs/alpha", "source": "held-out split of data.train", "n": 20,
    "overlap_with_training": 0, "metric": "rouge_l",
    "decoding": {"temperature": 0.0, "seed": 0, "num_predict": 128},
    "prompts": [],
    "models": [
        {"label": "base", "ref": "base", "kind": "gguf", "backend": "llamacpp", "summary": _summary(0.21, 0.35, 31.7),
         "perplexity_note": "", "seconds": 3.1, "answers": []},
        {"label": "tuned", "ref": "tuned", "kind": "gguf", "backend": "llamacpp",
         "summary": _summary(0.64, 0.95, 4.12), "perplexity_note": "", "seconds": 2.9, "answers": []},
    ],
    "comparisons": [
        {"label": "tuned", "baseline": "base", "metric": "rouge_l", "diff": 0.43, "low": 0.31, "high": 0.55, "n": 20,
         "significant": True},
        {"label": "tuned", "baseline": "base", "metric": "stop_rate", "diff": 0.6, "low": 0.4, "high": 0.8, "n": 20,
         "significant": True},
    ],
    "loss_curves": {},
}


def _hop(name: str, top1: float | None, min_top1: float, kl: float | None, stop: float, passed: bool = True) -> dict:
    return {"name": name, "src": name.split(" -> ")[0], "dst": name.split(" -> ")[1], "cause": "conversion",
            "min_top1": min_top1, "max_kl": 1e-3 if name.startswith("adapter") else None, "top1": top1,
            "positions": 96, "kl_mean": kl, "kl_max": None if kl is None else kl * 10, "stop_rate": stop,
            "reference_stop_rate": 1.0, "passed": passed, "problems": [], "likely_cause": None, "skipped": None}


FIDELITY = {
    "passed": True, "n_prompts": 16, "thresholds": {}, "models": {}, "seconds": 4.2, "notes": [], "answers": {},
    "hops": [_hop("adapter -> merged", 1.0, 1.0, 3.1e-7, 1.0), _hop("merged -> f16", 1.0, 0.99, 2.4e-5, 1.0),
             _hop("f16 -> q4_k_m", 0.948, 0.9, 1.9e-2, 1.0)],
}


def metrics_rows(steps: int = 40, every: int = 5) -> list[dict]:
    rows = []
    for s in range(every, steps + 1, every):
        rows.append({"stage": "sft", "step": s, "loss": round(8.4 * (0.9 ** s) + 0.05, 4), "tokens_per_s": 1500.0,
                     "tokens": s * 512})
        if s % 20 == 0:
            rows.append({"stage": "sft", "step": s, "eval_loss": round(8.6 * (0.91 ** s) + 0.2, 4)})
    return rows


def seed_runs(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    alpha = root / "alpha"
    _write(alpha / "recipe.resolved.yaml", RECIPE)
    stages = {name: {"inputs": {}, "config": "0", "outputs": {}, "finished": "2025-01-01T00:00:00Z"}
              for name in ("data", "train-sft", "convert", "quantize-q4_k_m", "gate", "eval")}
    _write(alpha / "manifest.json", json.dumps({"stages": stages}, indent=2))
    _write(alpha / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in metrics_rows()))
    _write(alpha / "adapter" / "adapter_config.json", "{}")
    _write(alpha / "adapter" / "adapter_model.safetensors", "x" * 2000)
    _write(alpha / "model-q4_k_m.gguf", "GGUF" + "q" * 396_000)
    _write(alpha / "Modelfile", "FROM ./model-q4_k_m.gguf\n")
    _write(alpha / "gate" / "fidelity.json", json.dumps(FIDELITY))
    _write(alpha / "eval" / "eval.json", json.dumps(EVAL))
    _write(alpha / "lineage.json", "{}")

    beta = root / "beta"
    _write(beta / "recipe.resolved.yaml", RECIPE.replace("alpha-assistant", "beta"))
    _write(beta / "manifest.json", json.dumps({"stages": {"data": stages["data"]}}))
    _write(beta / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in metrics_rows(20)))
    _write(beta / "checkpoints" / "sft" / "step-20" / "COMPLETE", "")

    gamma = root / "gamma"
    _write(gamma / "recipe.resolved.yaml", RECIPE.replace("Qwen/Qwen2.5-0.5B-Instruct", "HuggingFaceTB/SmolLM2-135M"))

    for i, run in enumerate((alpha, beta, gamma)):
        t = 1_700_000_000 - i * 1000
        for p in run.iterdir():
            os.utime(p, (t, t))
    return root


def train_events() -> list[Event]:
    """A fixed training run as the trainer and the pipeline report it (for the Train screen's snapshot)."""
    evs = [Event("stage", "pipeline", "[2/3] sft", {"name": "sft", "state": "running", "index": 2, "total": 3}),
           Event("choice", "sft", "device=cpu: no CUDA or MPS", {"what": "device", "value": "cpu"}),
           Event("choice", "sft", "dtype=float32: CPU", {"what": "dtype", "value": "float32"}),
           Event("stage", "sft", "sft: training for 40 steps", {"step": 0, "total": 40})]
    for r in metrics_rows(30):
        evs.append(Event("progress", "sft", "", {"step": r["step"], "total": 40, "eta_s": (40 - r["step"]) * 1.5}))
        data = {k: v for k, v in r.items() if k != "stage"}
        msg = " ".join(f"{k}={v}" for k, v in data.items())
        evs.append(Event("metric", "sft", msg, data))
    return evs


def export_events() -> list[Event]:
    """An export as the pipeline reports it: merge skipped, convert and quantize done, the Modelfile running."""
    evs = []
    for i, (name, state, secs, size, note) in enumerate(
            (("merge", "skipped", 0.0, 0, "streaming export: convert merges as it writes"),
             ("convert", "ran", 2.4, 1_900_000, "f16: tuned ran"), ("quantize", "ran", 1.1, 396_000,
                                                                    "tuned Q4_K_M ran")), start=4):
        evs.append(Event("stage", "pipeline", f"[{i}/8] {name}", {"name": name, "state": "running", "index": i,
                                                                  "total": 8}))
        evs.append(Event("stage", "pipeline", f"[{i}/8] {name}: {state} in {secs:.1f}s - {note}",
                         {"name": name, "state": state, "seconds": secs, "bytes": size, "note": note}))
    evs.append(Event("stage", "pipeline", "[7/8] modelfile", {"name": "modelfile", "state": "running"}))
    evs.append(Event("progress", "modelfile", "", {"done": 3, "total": 4}))
    return evs
