"""Run directory and stage manifest: a stage is current only if inputs, config and outputs all still match."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from ollama_forge.atomic import atomic_open, atomic_path
from ollama_forge.runs import RunDir


def test_stage_is_current_until_inputs_config_or_outputs_change(tmp_path):
    run = RunDir(tmp_path / "run").ensure()
    out = run.gguf("f16")
    out.write_bytes(b"GGUF...")
    run.record("convert", {"merged": "abc"}, {"outtype": "f16"}, [out])
    assert run.is_current("convert", {"merged": "abc"}, {"outtype": "f16"})
    assert not run.is_current("convert", {"merged": "abd"}, {"outtype": "f16"})
    assert not run.is_current("convert", {"merged": "abc"}, {"outtype": "bf16"})
    out.write_bytes(b"GGUF..!")  # output edited or truncated behind our back
    assert not run.is_current("convert", {"merged": "abc"}, {"outtype": "f16"})
    out.unlink()
    assert not run.is_current("convert", {"merged": "abc"}, {"outtype": "f16"})


def test_directory_outputs_are_hashed_by_content(tmp_path):
    run = RunDir(tmp_path).ensure()
    (run.adapter).mkdir()
    (run.adapter / "a.safetensors").write_bytes(b"1")
    run.record("train", {}, {}, [run.adapter])
    assert run.is_current("train", {}, {})
    (run.adapter / "a.safetensors").write_bytes(b"2")
    assert not run.is_current("train", {}, {})


def test_atomic_write_leaves_nothing_on_error(tmp_path):
    final = tmp_path / "out.txt"
    with pytest.raises(RuntimeError):
        with atomic_open(final) as f:
            f.write("half")
            raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "dir") as d:
            d.mkdir()
            (d / "x").write_text("1")
            raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []


def test_sigkill_mid_write_never_leaves_the_final_name(tmp_path):
    """A process killed inside the write leaves at most a hidden .partial, never the final file."""
    code = textwrap.dedent(f"""
        import os, signal
        from ollama_forge.atomic import atomic_open
        with atomic_open({str(tmp_path / 'model.gguf')!r}, 'wb') as f:
            f.write(b'x' * 1000)
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    r = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert r.returncode == -9
    assert not (tmp_path / "model.gguf").exists()
    assert all(p.name.startswith(".") and p.name.endswith(".partial") for p in tmp_path.iterdir())
