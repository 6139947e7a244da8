"""A small recipe over a tiny fixture model for the pipeline tests: SFT, DPO, every export stage, gate and eval in
well under a minute of CPU, deterministic (seeded, greedy)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.train_helpers import chat_records, preference_records, split_records, write_jsonl, write_recipe


def small_recipe(work: Path, base: Path, **over: Any) -> Path:
    """Write data files and a recipe under ``work``; ``over`` replaces top-level sections (merged one level)."""
    train, held = split_records(chat_records(10))
    write_jsonl(work / "train.jsonl", train)
    write_jsonl(work / "prompts.jsonl", [{"messages": r["messages"][:1], "reference": r["messages"][1]["content"]}
                                         for r in held])
    write_jsonl(work / "pairs.jsonl", preference_records(4))
    data: dict[str, Any] = {
        "base_model": str(base),
        "chat_format": "chatml",
        "data": {"train": [str(work / "train.jsonl")], "eval_split": 0},
        "train": {"max_steps": 6, "batch_size": 4, "grad_accum": 1, "learning_rate": 5e-3, "rank": 4, "alpha": 8,
                  "dropout": 0.0, "save_steps": 2, "eval_steps": 100, "logging_steps": 2, "max_length": 128,
                  "seed": 0},
        "dpo": {"data": [str(work / "pairs.jsonl")], "steps": 2, "batch_size": 2, "eval_split": 0},
        "export": {"quant_types": ["Q8_0"]},
        "ollama": {"model": "forge-test:latest"},
        "eval": {"prompts": str(work / "prompts.jsonl"), "limit": 4, "max_new_tokens": 8, "metric": "contains",
                 "compare_base": False},
        "gate": {"prompts": 2, "merged_f16_top1": 0.5, "f16_quant_top1": 0.5},
    }
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(data.get(k), dict):
            data[k] = {**data[k], **v}
        else:
            data[k] = v
    work.mkdir(parents=True, exist_ok=True)
    return write_recipe(work / "recipe.yaml", data)
