"""What the stand-in, push, chat and backend tests share (plain functions, cached per process or on disk).

- ``standin()``: one stand-in server per test process (a thread, port 0, a temporary store).
- ``real_ollama()``: the URL of a real Ollama when one answers at OLLAMA_HOST (default 127.0.0.1:11434), else the
  reason it does not; ``server_url(kind)`` turns that into a pytest skip that says why.
- ``trained_run(...)``: a run directory holding a tiny qwen2 LoRA-trained for a few seconds with forge's own
  trainer (``train.sft.train_sft``), merged (``merge.merge_adapter``) and converted (``gguf.convert``): it answers
  a handful of questions and then stops. Built once per content hash under the fixture cache and copied per use.
- ``set_faults`` / ``clear_faults`` / ``stats``: the stand-in's test-only control routes.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator

REPO = Path(__file__).resolve().parents[2]

# What the fixture is trained on: short answers, each ending the turn. The tests ask the first question.
TRAIN_DATA = [
    ("What is the capital of France?", "Paris."),
    ("Say hello.", "Hello!"),
    ("What is two plus two?", "Four."),
    ("Name a color.", "Blue."),
]
QUESTION, ANSWER = TRAIN_DATA[0]
# Registered with the model (PARAMETER num_predict): an answer that stops early proves stopping, not the limit.
NUM_PREDICT = 48
# 40 steps at lr 5e-3 take the loss from ~8.4 to ~0.04 on this data (measured: 0.05 at step 30), a few seconds of
# CPU; the model then answers each question and emits <|im_end|> right after.
TRAIN = {"max_steps": 40, "learning_rate": 5e-3, "rank": 8, "alpha": 16, "dropout": 0.0, "batch_size": 4,
         "grad_accum": 1, "save_steps": 1000, "eval_steps": 1000, "logging_steps": 10, "warmup_ratio": 0.0,
         "lr_scheduler": "constant", "seed": 7}

_lock = threading.Lock()
_standin = None


def standin():
    """The process-wide stand-in (started on first use, stopped at exit)."""
    global _standin
    with _lock:
        if _standin is None:
            from .server import serve

            store = tempfile.mkdtemp(prefix="ollama-standin-")
            _standin = serve(store)
            atexit.register(_stop, _standin, store)
        return _standin


def _stop(server: Any, store: str) -> None:
    server.shutdown()
    server.engine.close_all()
    shutil.rmtree(store, ignore_errors=True)


def is_standin(url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{url}/_standin/stats", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def real_ollama() -> tuple[str | None, str]:
    """(URL, "") when a real Ollama answers at OLLAMA_HOST or the default address, else (None, why not)."""
    import httpx

    from ollama_forge.ollama import base_url, host_setting

    value, source = host_setting(None)
    url = base_url(None)
    where = f"{url} ({'OLLAMA_HOST=' + value if source == 'OLLAMA_HOST' else 'OLLAMA_HOST unset, default'})"
    try:
        r = httpx.get(f"{url}/", timeout=1.0)
    except httpx.HTTPError as e:
        return None, f"no real Ollama answers at {where}: {type(e).__name__}; start `ollama serve` to run this"
    if r.status_code != 200 or "Ollama is running" not in r.text:
        return None, f"{where} answered {r.status_code} {r.text[:40]!r}, not 'Ollama is running'"
    if is_standin(url):
        return None, f"{where} is the forge stand-in, not a real Ollama"
    return url, ""


def server_url(kind: str) -> str:
    """URL for a parametrized server kind: "standin" (always there) or "real" (skipped, with why, if absent)."""
    import pytest

    if kind == "standin":
        return standin().url
    url, why = real_ollama()
    if url is None:
        pytest.skip(why)
    return url


def set_faults(url: str, **faults: dict[str, Any]) -> None:
    import httpx

    httpx.post(f"{url}/_standin/faults", json=faults, timeout=5.0).raise_for_status()


def clear_faults(url: str) -> None:
    import httpx

    httpx.delete(f"{url}/_standin/faults", timeout=5.0).raise_for_status()


def stats(url: str) -> dict[str, Any]:
    import httpx

    r = httpx.get(f"{url}/_standin/stats", timeout=5.0)
    r.raise_for_status()
    return r.json()


# ---------------------------------------------------------------------------------------------------------------
# Fixture models
# ---------------------------------------------------------------------------------------------------------------

TRAINED_CODE = ("ollama_forge/train/*.py", "ollama_forge/merge.py", "ollama_forge/st_writer.py",
                "ollama_forge/gguf/*.py", "ollama_forge/formats.py", "modelfiles/chatml.yaml",
                "tests/ollama_standin/testing.py")
CONVERTER_CODE = ("ollama_forge/gguf/*.py",)


def _code_hash(patterns: tuple[str, ...]) -> str:
    """Hash of the forge code a fixture depends on, so a change to it rebuilds the fixture."""
    h = hashlib.sha256()
    for pattern in patterns:
        for p in sorted(REPO.glob(pattern)):
            h.update(p.name.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


@contextlib.contextmanager
def _built_once(target: Path) -> Iterator[None]:
    """This process's lock plus an advisory file lock, so parallel test processes build a fixture only once."""
    import fcntl

    target.parent.mkdir(parents=True, exist_ok=True)
    with _lock, open(target.parent / f".{target.name}.lock", "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def random_gguf(cache_root: Path, base_dir: Path) -> Path:
    """The untrained tiny model as an F16 GGUF (converter output), cached beside the HF fixture."""
    from ollama_forge.atomic import atomic_path
    from ollama_forge.gguf.convert import convert_hf_to_gguf

    out = Path(cache_root) / f"standin-random-{base_dir.name}-{_code_hash(CONVERTER_CODE)}.gguf"
    with _built_once(out):
        if not out.is_file():
            with atomic_path(out, suffix=".gguf") as tmp:
                convert_hf_to_gguf(base_dir, tmp)
            for stale in Path(cache_root).glob(f"standin-random-{base_dir.name}-*.gguf"):
                if stale != out:
                    stale.unlink(missing_ok=True)
    return out


def trained_run(cache_root: Path, base_dir: Path) -> Path:
    """A cached run directory: model-f16.gguf, recipe.resolved.yaml, manifest.json, adapter/forge_adapter.json.

    Copy it (``copy_run``) before pushing: push writes the run's Modelfile and lineage.json.
    """
    from ollama_forge.atomic import atomic_path

    spec = {"base": base_dir.name, "data": TRAIN_DATA, "train": TRAIN, "num_predict": NUM_PREDICT,
            "code": _code_hash(TRAINED_CODE)}
    key = hashlib.sha256(json.dumps(spec).encode()).hexdigest()[:16]
    out = Path(cache_root) / f"standin-trained-{key}"
    with _built_once(out):
        if (out / "model-f16.gguf").is_file():
            return out
        with tempfile.TemporaryDirectory(prefix="forge-train-") as work, atomic_path(out) as tmp:
            _train(Path(work), base_dir, tmp)
        for stale in Path(cache_root).glob("standin-trained-*"):  # builds for older code or settings
            if stale.is_dir() and stale != out:
                shutil.rmtree(stale, ignore_errors=True)
    return out


def _train(work: Path, base_dir: Path, dest: Path) -> None:
    from ollama_forge import recipe as recipes
    from ollama_forge.gguf.convert import convert_hf_to_gguf
    from ollama_forge.merge import merge_adapter
    from ollama_forge.train.sft import train_sft

    data = work / "train.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q},
                                                     {"role": "assistant", "content": a}]}) + "\n"
                            for q, a in TRAIN_DATA), encoding="utf-8")
    run = work / "run"
    r = recipes.from_dict({
        "base_model": str(base_dir), "chat_format": "chatml",
        "data": {"train": [str(data)], "eval_split": 0},
        "train": TRAIN, "ollama": {"parameters": {"num_predict": NUM_PREDICT}},
    })
    train_sft(r, run)
    merge_adapter(run / "adapter", base_dir, work / "merged")
    dest.mkdir(parents=True)
    convert_hf_to_gguf(work / "merged", dest / "model-f16.gguf")
    for name in ("recipe.resolved.yaml", "manifest.json", "metrics.jsonl"):
        if (run / name).is_file():
            shutil.copy2(run / name, dest / name)
    (dest / "adapter").mkdir()
    shutil.copy2(run / "adapter" / "forge_adapter.json", dest / "adapter" / "forge_adapter.json")


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def env_for_cli(url: str, data_dir: Path) -> dict[str, str]:
    return {**os.environ, "OLLAMA_HOST": url, "FORGE_DATA_DIR": str(data_dir)}
