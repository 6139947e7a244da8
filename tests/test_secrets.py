"""Tokens never reach a run directory or a log.

With HF_TOKEN and HUGGING_FACE_HUB_TOKEN set to random markers, a run directory is built through the real CLI, as a
user would: ``forge --debug train`` (tiny qwen2, 2 steps, a checkpoint per step: the Trainer pickles its arguments
into ``training_args.bin``; TensorBoard event files too when tensorboard is installed), ``forge export``,
``forge quantize``, ``forge modelfile`` and ``forge push`` (to the stand-in: lineage.json and forge's record of
pushed models). Then every byte under the run directory, forge's data directory and the captured stdout/stderr of
each command is read (zip members such as torch's pickles unpacked as well) and no marker may appear: not as
UTF-8, UTF-16, hex or base64.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import os
import secrets
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.train_helpers import chat_records, write_jsonl, write_recipe

REPO = Path(__file__).resolve().parents[1]
TENSORBOARD = any(importlib.util.find_spec(m) for m in ("tensorboard", "tensorboardX"))


def encodings(marker: str) -> dict[str, bytes]:
    """Byte patterns that give ``marker`` away: raw, UTF-16 both ways, hex, and base64 at each of the three byte
    alignments (the stable middle of the encoding, so it matches inside a longer base64 string)."""
    raw = marker.encode()
    out = {"utf-8": raw, "utf-16-le": marker.encode("utf-16-le"), "utf-16-be": marker.encode("utf-16-be"),
           "hex": raw.hex().encode(), "HEX": raw.hex().upper().encode()}
    for shift in range(3):
        enc = base64.b64encode(b"\0" * shift + raw)
        start = (shift * 4 + 2) // 3 + 1  # skip the characters that mix in the padding bytes
        out[f"base64+{shift}"] = enc[start:-4]
        out[f"urlsafe-base64+{shift}"] = base64.urlsafe_b64encode(b"\0" * shift + raw)[start:-4]
    return out


def _blobs(path: Path, data: bytes, depth: int = 0):
    """The file's bytes, then (recursively) the members of a zip archive (torch.save writes one)."""
    yield str(path), data
    if depth < 2 and data[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                for name in z.namelist():
                    yield from _blobs(Path(f"{path}!{name}"), z.read(name), depth + 1)
        except zipfile.BadZipFile:
            pass


def find_secrets(roots: list[Path], markers: dict[str, str]) -> tuple[list[str], int, int]:
    """(hits as "file: env var as encoding", files read, bytes read) over every file under ``roots``."""
    patterns = {f"{var} as {how}": pat for var, m in markers.items() for how, pat in encodings(m).items()}
    hits, files, nbytes = [], 0, 0
    for root in roots:
        for p in sorted(root.rglob("*")) if root.is_dir() else [root]:
            if not p.is_file() or p.is_symlink():
                continue
            files += 1
            for name, data in _blobs(p, p.read_bytes()):
                nbytes += len(data)
                hits += [f"{name}: {what}" for what, pat in patterns.items() if pat in data]
    return hits, files, nbytes


def test_the_scanner_finds_a_planted_token(tmp_path):
    """The scan can fail: a token pickled into a deflated zip member, in UTF-16 and in base64 is found."""
    import pickle

    marker = "hf_" + secrets.token_hex(16)
    with zipfile.ZipFile(tmp_path / "ckpt.bin", "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", pickle.dumps({"hub_token": marker}))
    (tmp_path / "events.out").write_bytes(b"\x08\x01" + marker.encode("utf-16-le"))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "cfg.json").write_bytes(b'{"x": "' + base64.b64encode(b"k=" + marker.encode()) + b'"}')
    (tmp_path / "clean.txt").write_text("nothing here")
    hits, files, _ = find_secrets([tmp_path], {"HF_TOKEN": marker})
    where = {h.split(": ")[0].replace(f"{tmp_path}/", "") for h in hits}
    assert files == 4
    assert where == {"ckpt.bin!archive/data.pkl", "events.out", "sub/cfg.json"}, hits
    assert not any("clean.txt" in h for h in hits)


@pytest.fixture(scope="module")
def built(tiny_model, tmp_path_factory):
    """A run directory built through the CLI with the tokens set, plus the captured output of every command."""
    from tests.ollama_standin import testing

    root = tmp_path_factory.mktemp("secrets")
    markers = {"HF_TOKEN": "hf_" + secrets.token_hex(16), "HUGGING_FACE_HUB_TOKEN": "hf_" + secrets.token_hex(16)}
    data_dir = root / "forge-data"
    pythonpath = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, **markers, "PYTHONPATH": pythonpath, "OMP_NUM_THREADS": "1", "FORGE_DATA_DIR": str(data_dir)}
    run, logs = root / "run", root / "logs"
    logs.mkdir()
    train = write_jsonl(root / "train.jsonl", chat_records(3))
    report_to = ["tensorboard"] if TENSORBOARD else []
    recipe = write_recipe(root / "recipe.yaml", {
        "base_model": str(tiny_model("qwen2")), "data": {"train": [str(train)], "eval_split": 0.1},
        "train": {"max_steps": 2, "save_steps": 1, "eval_steps": 1, "logging_steps": 1, "batch_size": 2,
                  "grad_accum": 1, "report_to": report_to},
        "ollama": {"model": "secret-scan:v1"}})
    url = testing.standin().url
    steps = {
        "train": ["--debug", "train", str(recipe), "--run-dir", str(run)],
        "export": ["export", str(run)],
        "quantize": ["quantize", str(run / "model-f16.gguf"), "--type", "Q8_0"],
        "modelfile": ["modelfile", str(run / "model-q8_0.gguf"), "-o", str(run / "Modelfile")],
        "push": ["push", f"secret-scan-{os.getpid()}:v1", str(run), "--host", url],
    }
    for name, argv in steps.items():
        with open(logs / f"{name}.out", "wb") as out, open(logs / f"{name}.err", "wb") as err:
            r = subprocess.run([sys.executable, "-m", "ollama_forge", *argv], stdout=out, stderr=err, env=env,
                               cwd=root, timeout=600, stdin=subprocess.DEVNULL)
        assert r.returncode == 0, f"forge {name} failed:\n{(logs / f'{name}.err').read_text()[-3000:]}"
    return {"root": root, "run": run, "logs": logs, "data_dir": data_dir, "markers": markers}


def test_run_directory_and_logs_hold_no_token(built):
    run = built["run"]
    # The scan covers what matters: pickled Trainer arguments, optimizer state, GGUF metadata, Modelfile, lineage.
    must = [*run.glob("checkpoints/sft/step-*/training_args.bin"), *run.glob("checkpoints/sft/step-*/optimizer.pt"),
            run / "model-f16.gguf", run / "model-q8_0.gguf", run / "Modelfile", run / "lineage.json",
            run / "recipe.resolved.yaml", run / "metrics.jsonl", built["data_dir"] / "pushed.json"]
    missing = [str(p) for p in must if not p.is_file()]
    assert not missing, missing
    assert len(list(run.glob("checkpoints/sft/step-*/training_args.bin"))) == 2
    hits, files, nbytes = find_secrets([run, built["data_dir"], built["logs"]], built["markers"])
    assert not hits, "token found:\n" + "\n".join(hits)
    assert files >= 30 and nbytes > 500_000, (files, nbytes)
    print(f"secret scan: {files} files, {nbytes / 1e6:.1f} MB (zip members unpacked), no token")


def test_tensorboard_event_files_hold_no_token(built):
    if not TENSORBOARD:
        pytest.skip("tensorboard is not installed: train.report_to [tensorboard] cannot run here")
    events = list(built["run"].rglob("events.out.tfevents.*"))
    assert events, "report_to tensorboard wrote no event files under the run directory"
    hits, _, _ = find_secrets(events, built["markers"])
    assert not hits, hits
