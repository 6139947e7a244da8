"""Shared by the benchmarks: a 0.5B-shaped random model built once, and wall time + peak RSS of a child process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("FORGE_BENCH_CACHE", REPO / ".cache" / "bench"))

# Qwen2.5-0.5B's shape (494 M parameters, tied embeddings, qkv bias); random weights.
QWEN05B = dict(architectures=["Qwen2ForCausalLM"], model_type="qwen2", hidden_size=896, intermediate_size=4864,
               num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
               max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True,
               hidden_act="silu", attention_dropout=0.0, use_sliding_window=False)


def qwen05b(dtype: str = "bfloat16") -> Path:
    """Build (once) a Qwen2.5-0.5B-shaped random model with a tiny fixture's tokenizer swapped for a real-size vocab."""
    out = CACHE / f"qwen05b-{dtype}"
    if (out / "config.json").is_file():
        return out
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    sys.path.insert(0, str(REPO))
    from tests.fixtures.tiny_models import build

    tok_dir = build("qwen2", CACHE / "fixtures")
    cfg = AutoConfig.for_model(**{k: v for k, v in QWEN05B.items() if k != "architectures"})
    cfg.architectures = QWEN05B["architectures"]
    torch.manual_seed(0)
    with torch.device("cpu"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=getattr(torch, dtype))
    tmp = out.with_name(out.name + ".partial")
    model.save_pretrained(tmp)
    for f in tok_dir.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template", "vocab", "merges")):
            (tmp / f.name).write_bytes(f.read_bytes())
    tmp.rename(out)
    return out


# ru_maxrss survives fork+exec on Linux: a child forked from a large parent reports at least the parent's size.
# So each measured command is started by a fresh, small launcher process, whose own child is what we measure.
_LAUNCHER = (
    "import os, subprocess, sys\n"
    "p = subprocess.Popen(sys.argv[2:])\n"
    "_, status, usage = os.wait4(p.pid, 0)\n"
    "open(sys.argv[1], 'w').write(f'{os.waitstatus_to_exitcode(status)} {usage.ru_maxrss}')\n"
)


def measure(cmd: list[str], env: dict | None = None) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of one child process; raises if it fails."""
    import tempfile

    with tempfile.NamedTemporaryFile("r", suffix=".rss") as out:
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", _LAUNCHER, out.name, *cmd], check=True, cwd=REPO,
                       env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})
        wall = time.perf_counter() - t
        rc, kib = map(int, open(out.name).read().split())
    if rc != 0:
        raise SystemExit(f"{' '.join(cmd)} failed with {rc}")
    return wall, kib / 1024  # Linux reports KiB
