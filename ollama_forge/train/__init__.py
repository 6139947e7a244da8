"""Training: SFT with LoRA or QLoRA, then optional DPO from the SFT adapter (TRL + PEFT underneath).

Library entry points (the CLI's ``forge train`` is a thin wrapper):

- ``train_sft(recipe, run_dir, sink=None, resume=False) -> TrainResult``  (``sft.py``)
- ``train_dpo(recipe, run_dir, sink=None, resume=False) -> TrainResult``  (``dpo.py``)

Modules: ``device`` (cuda > mps > cpu, dtype, 4-bit support, each with its reason), ``chat`` (the chat-format
registry's template on the tokenizer), ``encode`` (records -> ids and labels: loss on what the model should learn),
``preflight`` (end-of-turn check, pad token), ``callbacks`` (metrics -> events + metrics.jsonl, atomic checkpoints),
``common`` (model loading, LoRA config, trainer arguments, failures turned into advice). Heavy libraries load inside
the functions that use them, so importing this package is cheap.
"""

from __future__ import annotations

from typing import Any


def train_sft(recipe, run_dir, sink=None, resume: bool = False, **kw: Any):
    from .sft import train_sft as _train

    return _train(recipe, run_dir, sink=sink, resume=resume, **kw)


def train_dpo(recipe, run_dir, sink=None, resume: bool = False, **kw: Any):
    from .dpo import train_dpo as _train

    return _train(recipe, run_dir, sink=sink, resume=resume, **kw)


__all__ = ["train_sft", "train_dpo"]
