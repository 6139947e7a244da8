"""Kill -9 and resume: a training process killed between checkpoints, then again inside a checkpoint save, resumes
with ``forge train --resume`` from the newest complete checkpoint and ends where an uninterrupted run of the same
seed ends: same step count, same adapter weights (tolerance below)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.train_helpers import ONE_THREAD_ENV, chat_records, forge, one_thread, write_jsonl, write_recipe

STEPS, SAVE = 12, 4
# Same seed, same data order, optimizer/scheduler/RNG restored: on CPU the resumed run repeats the uninterrupted one's
# arithmetic, so the weights agree to float32 rounding. 1e-5 absolute leaves room for summation-order noise while a
# resume that lost the optimizer state, the RNG (LoRA dropout) or the data position differs by 1e-3 or more.
ATOL = 1e-5


def _weights(adapter: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(adapter / "adapter_model.safetensors"))


@pytest.mark.slow
def test_sigkill_between_and_inside_checkpoints_then_resume_matches_an_uninterrupted_run(tiny_model, tmp_path):
    from ollama_forge import recipe as R
    from ollama_forge.train.callbacks import COMPLETE, read_metrics
    from ollama_forge.train.sft import train_sft

    data = write_jsonl(tmp_path / "train.jsonl", chat_records()[:24])
    spec = {"base_model": str(tiny_model("llama")), "data": {"train": [str(data)], "eval_split": 0.0},
            "train": {"max_steps": STEPS, "save_steps": SAVE, "logging_steps": 1}}
    recipe_path = write_recipe(tmp_path / "recipe.yaml", spec)

    # Reference: the same recipe, never interrupted (in-process: the library path the CLI wraps).
    with one_thread():  # the same thread count as the subprocesses below: the same summation order
        ref = train_sft(R.load(recipe_path), tmp_path / "ref")
    assert ref.steps == STEPS

    run = tmp_path / "run"
    ckpts = run / "checkpoints" / "sft"
    # 1. Killed between checkpoints (after step 6; step-4 is the newest complete checkpoint).
    r = forge("train", str(recipe_path), "--run-dir", str(run),
              env={**ONE_THREAD_ENV, "FORGE_TEST_KILL_AT": "step:6"})
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert sorted(p.name for p in ckpts.glob("step-*")) == ["step-4"]
    assert not (run / "adapter").exists()  # nothing that looks finished

    # 2. Resumed, then killed inside the save of checkpoint 8: adapter written, optimizer state not yet.
    r = forge("train", str(recipe_path), "--run-dir", str(run), "--resume",
              env={**ONE_THREAD_ENV, "FORGE_TEST_KILL_AT": "save:8"})
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    partial = ckpts / ".staging" / "checkpoint-8"
    assert (partial / "adapter_model.safetensors").is_file() and not (partial / "optimizer.pt").exists()
    from transformers.trainer_utils import get_last_checkpoint

    # transformers alone would resume from this half-written folder; forge never sees it as a checkpoint.
    assert get_last_checkpoint(str(ckpts / ".staging")) == str(partial)
    assert sorted(p.name for p in ckpts.glob("step-*")) == ["step-4"] and (ckpts / "step-4" / COMPLETE).is_file()

    # 3. Resumed again: from step-4 (the incomplete step-8 ignored and discarded), to the end.
    r = forge("train", str(recipe_path), "--run-dir", str(run), "--resume", env=ONE_THREAD_ENV)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from step 4" in r.stdout, r.stdout
    assert not (ckpts / ".staging" / "checkpoint-8").exists()

    steps = [row["step"] for row in read_metrics(run / "metrics.jsonl", "sft") if "loss" in row]
    assert steps == list(range(1, STEPS + 1))  # rows the killed runs logged past step 4 were replaced, not doubled
    got, want = _weights(run / "adapter"), _weights(ref.adapter)
    assert got.keys() == want.keys()
    worst = max((got[k] - want[k]).abs().max().item() for k in want)
    print(f"max |resumed - uninterrupted| over the adapter weights: {worst:.3g} (tolerance {ATOL})")
    assert worst <= ATOL, f"resumed adapter differs from the uninterrupted run by {worst:.3g}"
    assert any((want[k].abs().max() > 0) for k in want if "lora_B" in k)  # it trained (B starts at zero)
