"""Beyond one machine: the same `forge train` under torchrun, 2 CPU processes (DDP over gloo). Each rank trains on
different batches; rank 0 alone writes the run's artifacts (one adapter, one metrics row per step)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from tests.train_helpers import ONE_THREAD_ENV, REPO, chat_records, write_jsonl, write_recipe

STEPS = 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_on_different_batches_and_write_one_adapter(tiny_model, tmp_path):
    from ollama_forge.train.callbacks import read_metrics

    data = write_jsonl(tmp_path / "train.jsonl", chat_records())
    recipe = write_recipe(tmp_path / "recipe.yaml", {
        "base_model": str(tiny_model("llama")), "data": {"train": [str(data)], "eval_split": 0.0},
        "train": {"max_steps": STEPS, "batch_size": 2, "grad_accum": 1, "save_steps": 2, "logging_steps": 1}})
    run, batches = tmp_path / "run", tmp_path / "batches"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "ollama_forge", "train", str(recipe), "--run-dir", str(run)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "FORGE_TEST_BATCH_LOG": str(batches), **ONE_THREAD_ENV}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]

    rank0 = (batches / "rank0.txt").read_text().split()
    rank1 = (batches / "rank1.txt").read_text().split()
    assert len(rank0) >= STEPS and len(rank1) >= STEPS  # every rank trained every step
    assert not set(rank0) & set(rank1), "both ranks saw the same batch"

    # Exactly one adapter, written once by rank 0; nothing half-written left behind.
    assert sorted(p.name for p in run.iterdir()) == ["adapter", "adapter-sft", "checkpoints", "manifest.json",
                                                     "metrics.jsonl", "recipe.resolved.yaml"]
    assert len(list(run.rglob("adapter_model.safetensors"))) == 2 + 2  # adapter, adapter-sft, 2 checkpoints
    assert not list(run.rglob("*.partial"))
    steps = [row["step"] for row in read_metrics(run / "metrics.jsonl", "sft") if "loss" in row]
    assert steps == list(range(1, STEPS + 1))  # one row per step: rank 1 wrote none
    ckpt = run / "checkpoints" / "sft" / f"step-{STEPS}"
    assert (ckpt / "rng_state_0.pth").is_file() and (ckpt / "rng_state_1.pth").is_file()  # both ranks' RNG kept
    assert r.stdout.count("sft: ") == 1  # one summary line: rank 0 alone talks
