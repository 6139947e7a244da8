"""A full disk during convert, quantize, a training checkpoint and `forge data check -o`: one clear line (exit 2),
no partial file left under its final name, the temporary files removed so the space comes back.

Two ways in, both used:
- **A real full disk**: the command runs in a private mount namespace (``unshare -rm``) over a size-limited tmpfs
  mounted on its output directory, so the kernel itself answers ENOSPC to whichever library writes (numpy's
  ``tofile`` in the converter, llama.cpp's C++ streams in the quantizer's child process, safetensors' Rust writer
  and torch.save in the Trainer). What is left on the tmpfs and how much of it is used is read inside the namespace.
  Skipped, with the reason, where user namespaces are not allowed.
- **Injected ENOSPC** in-process at each writer (always runs): the errno form, numpy's short-write form and torch's
  "file write failed" on a full filesystem.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ollama_forge.errors import ForgeError

REPO = Path(__file__).resolve().parents[1]

# Runs inside the namespace: mount the tmpfs, run forge, report what is left there.
INSIDE = r"""
import json, os, subprocess, sys
size, mnt, report, *argv = sys.argv[1:]
os.makedirs(mnt, exist_ok=True)
subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", mnt], check=True)
r = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
files = sorted(os.path.relpath(os.path.join(d, n), mnt) for d, ds, fs in os.walk(mnt) for n in ds + fs)
st = os.statvfs(mnt)
json.dump({"rc": r.returncode, "stdout": r.stdout, "stderr": r.stderr, "files": files,
           "used": (st.f_blocks - st.f_bfree) * st.f_frsize, "size": st.f_blocks * st.f_frsize}, open(report, "w"))
"""


def namespaces_work() -> str | None:
    """None when ``unshare -rm`` can mount a tmpfs here, else why not."""
    if not shutil.which("unshare"):
        return "no unshare(1) on this machine"
    r = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"], capture_output=True,
                       text=True)
    return None if r.returncode == 0 else f"unshare -rm cannot mount a tmpfs here: {r.stderr.strip()[:120]}"


WHY_NOT = namespaces_work()
real_disk = pytest.mark.skipif(WHY_NOT is not None, reason=str(WHY_NOT))


def on_full_disk(tmp_path: Path, size: str, argv: list[str], mnt: Path) -> dict:
    report = tmp_path / "report.json"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    subprocess.run(["unshare", "-rm", sys.executable, "-c", INSIDE, size, str(mnt), str(report), sys.executable,
                    "-m", "ollama_forge", *argv], env=env, check=True, timeout=300, cwd=tmp_path)
    out = json.loads(report.read_text())
    assert "Traceback" not in out["stderr"], out["stderr"]
    return out


def one_line(out: dict, command: str) -> str:
    assert out["rc"] == 2, out
    errors = [ln for ln in out["stderr"].splitlines() if ln.startswith(f"forge {command}: error: ")]
    assert len(errors) == 1 and out["stderr"].strip().splitlines()[-1] == errors[0], out["stderr"]
    assert "no space left on the device" in errors[0] and "free some space" in errors[0], errors[0]
    return errors[0]



@pytest.fixture
def f16(qwen2_f16_gguf) -> Path:
    return qwen2_f16_gguf


# ---------------------------------------------------------------------------------------------------------------
# A real full disk


@real_disk
def test_convert_on_a_full_disk(tiny_model, tmp_path):
    mnt = tmp_path / "full"
    out = on_full_disk(tmp_path, "100k", ["convert", str(tiny_model("qwen2")), "-o", str(mnt / "model.gguf")], mnt)
    line = one_line(out, "convert")
    assert str(mnt / "model.gguf") in line and "removed" in line
    assert out["files"] == [] and out["used"] == 0, out  # no partial, no final, the space is back


@real_disk
def test_quantize_on_a_full_disk(f16, tmp_path):
    """llama.cpp writes in its child process and only logs "iostream error"; forge still says the disk is full."""
    mnt = tmp_path / "full"
    log = tmp_path / "quantize.log"
    out = on_full_disk(tmp_path, "100k", ["quantize", str(f16), "--type", "Q8_0", "-o", str(mnt / "q.gguf"),
                                          "--log", str(log)], mnt)
    line = one_line(out, "quantize")
    assert str(mnt / "q.gguf") in line and str(log) in line
    assert out["files"] == [] and out["used"] == 0, out
    assert "failed to quantize" in log.read_text()  # llama.cpp's own account stays in the log


@real_disk
def test_training_checkpoint_on_a_full_disk(tiny_model, tmp_path):
    """Room for the recipe and metrics, not for the first checkpoint (adapter + optimizer state, ~500 KB)."""
    from tests.train_helpers import chat_records, write_jsonl

    data = write_jsonl(tmp_path / "train.jsonl", chat_records(3))
    mnt = tmp_path / "full"
    out = on_full_disk(tmp_path, "200k", [
        "train", "--model", str(tiny_model("qwen2")), "--data", str(data), "--max-steps", "2", "--save-steps", "1",
        "--batch-size", "2", "--grad-accum", "1", "--run-dir", str(mnt / "run")], mnt)
    line = one_line(out, "train")
    assert str(mnt / "run" / "checkpoints" / "sft") in line
    left = set(out["files"])
    assert not [f for f in left if "step-" in f or ".staging" in f or "adapter" in f or f.endswith(".partial")], left
    assert left <= {"run", "run/checkpoints", "run/checkpoints/sft", "run/metrics.jsonl", "run/recipe.resolved.yaml",
                    "run/manifest.json"}, left
    assert out["used"] <= 16 * 1024, out  # the half-written checkpoint's space is free again


@real_disk
def test_data_check_output_on_a_full_disk(tmp_path):
    rows = [{"text": f"record {i} " + "x" * 200} for i in range(100)]  # ~21 KB of output on an 8 KB disk
    src = tmp_path / "d.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    mnt = tmp_path / "full"
    out = on_full_disk(tmp_path, "8k", ["data", "check", str(src), "-o", str(mnt / "clean.jsonl")], mnt)
    line = one_line(out, "data")
    assert str(mnt / "clean.jsonl") in line
    assert out["files"] == [] and out["used"] == 0, out


# ---------------------------------------------------------------------------------------------------------------
# Injected ENOSPC (in-process)


@pytest.mark.parametrize("exc", [OSError(errno.ENOSPC, "No space left on device"),
                                 OSError("26624 requested and 11984 written")], ids=["errno", "numpy-short-write"])
def test_convert_injected(tiny_model, tmp_path, monkeypatch, exc):
    from ollama_forge.gguf import convert as conv

    real = conv._write_tensors

    def write_some_then_fail(f, *a, **k):
        f.write(b"\0" * 4096)  # a partial file exists when the disk fills
        raise exc

    monkeypatch.setattr(conv, "_write_tensors", write_some_then_fail)
    out = tmp_path / "m.gguf"
    with pytest.raises(ForgeError) as e:
        conv.convert_hf_to_gguf(tiny_model("qwen2"), out)
    assert e.value.message == f"{out}: no space left on the device while writing the GGUF"
    assert sorted(os.listdir(tmp_path)) == []  # neither the final name nor the hidden partial
    monkeypatch.setattr(conv, "_write_tensors", real)
    conv.convert_hf_to_gguf(tiny_model("qwen2"), out)  # with space, the same call succeeds
    assert out.read_bytes()[:4] == b"GGUF"


def test_quantize_injected(f16, tmp_path, monkeypatch):
    """llama.cpp returns 1 with a half-written file while the filesystem has nothing left."""
    import ollama_forge.llama_child as child
    from ollama_forge import quantize as q

    def half_write(target, kwargs, **k):
        Path(kwargs["out"]).write_bytes(b"GGUF" + b"\0" * 1000)
        return {"rc": 1}

    monkeypatch.setattr(child, "run_in_child", half_write)
    monkeypatch.setattr(q, "free_bytes", lambda p: 0)
    out = tmp_path / "q.gguf"
    with pytest.raises(ForgeError) as e:
        q.quantize_gguf(f16, out, q.QuantizeConfig(type="Q8_0", log_path=str(tmp_path / "q.log")))
    assert e.value.message.startswith(f"{out}: no space left on the device while writing the Q8_0 GGUF")
    assert [n for n in os.listdir(tmp_path) if n != "q.log"] == []  # no q.gguf, no hidden .q.gguf.*.partial
    monkeypatch.setattr(q, "free_bytes", lambda p: 10**12)  # plenty of space: an ordinary llama.cpp failure
    with pytest.raises(ForgeError) as e:
        q.quantize_gguf(f16, out, q.QuantizeConfig(type="Q8_0", log_path=str(tmp_path / "q.log")))
    assert "llama.cpp failed (return code 1)" in e.value.message and not out.exists()


@pytest.mark.parametrize("text", ["No space left on device (os error 28)",
                                  "[enforce fail at inline_container.cc:626] . PytorchStreamWriter failed writing "
                                  "file data/0: file write failed"], ids=["safetensors", "torch-save"])
def test_checkpoint_injected(tmp_path, monkeypatch, text):
    """A save that fails inside trainer.train(): the staging checkpoint is removed and the error is one line."""
    from ollama_forge import errors
    from ollama_forge.train.common import training_errors

    class Plan:
        device, gradient_checkpointing, quantize_4bit = "cpu", False, False

    class T:
        batch_size, max_length = 4, 1024

    staging = tmp_path / "checkpoints" / "sft" / ".staging"
    (staging / "checkpoint-1").mkdir(parents=True)
    (staging / "checkpoint-1" / "optimizer.pt").write_bytes(b"\0" * 5000)
    monkeypatch.setattr(errors, "free_bytes", lambda p: 0)  # the filesystem is full while the error is judged
    with pytest.raises(ForgeError) as e:
        with training_errors(Plan(), T(), staging=staging):
            raise RuntimeError(text)
    assert e.value.message == f"{staging.parent}: no space left on the device while writing a training checkpoint"
    assert not staging.exists() and staging.parent.is_dir()
    # Any other failure still removes the uncommitted staging folder and is raised as it was.
    staging.mkdir()
    monkeypatch.setattr(errors, "free_bytes", lambda p: 10**12)
    with pytest.raises(RuntimeError):
        with training_errors(Plan(), T(), staging=staging):
            raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")
    assert not staging.exists()


def test_cli_turns_any_enospc_into_one_line(tmp_path, monkeypatch, capsys):
    """Wherever a full disk strikes outside the writers above, the CLI still says so in one line, exit 2."""
    from ollama_forge.cli import main

    target = tmp_path / "run" / "recipe.resolved.yaml"

    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", str(target))

    monkeypatch.setattr("ollama_forge.commands.formats.run", full)
    rc = main(["formats", "list"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.strip() == (f"forge formats: error: {target}: no space left on the device while writing a file "
                           "(free some space (or write to another disk) and rerun)")
