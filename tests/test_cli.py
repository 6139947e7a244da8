"""The `forge` CLI: instant start-up, every product subcommand listed, one-line errors, one model-reference rule."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ollama_forge.commands import COMMANDS
from ollama_forge.errors import ForgeError
from ollama_forge.modelref import resolve

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "trl", "peft", "bitsandbytes", "datasets", "llama_cpp", "gguf", "textual")
PRODUCT = ("data", "train", "merge", "convert", "quantize", "modelfile", "push", "chat", "eval", "run", "demo",
           "tui", "formats", "export", "export-adapter", "models")


def forge(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ollama_forge", *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60, **kw)


def test_importing_the_cli_and_building_its_parser_loads_no_heavy_module():
    code = ("import sys, ollama_forge.cli as c; c.build_parser(); "
            f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.stdout.strip() == "", f"heavy modules loaded at start-up: {out.stdout}"


def test_help_lists_every_product_subcommand():
    r = forge("--help")
    assert r.returncode == 0
    for name in PRODUCT:
        assert f"    {name} " in r.stdout or f"    {name}\n" in r.stdout, f"{name} missing from forge --help"
    assert set(PRODUCT) == set(COMMANDS)


def test_version():
    r = forge("--version")
    assert r.returncode == 0 and r.stdout.startswith("ollama-forge ")


def test_plain_forge_without_a_terminal_prints_help():
    r = forge(stdin=subprocess.DEVNULL)
    assert r.returncode == 0 and "usage: forge" in r.stdout


def test_commands_not_built_yet_name_their_issue_and_exit_2():
    missing = [n for n, (mod, _, _) in COMMANDS.items() if mod is None]
    for name in missing:
        r = forge(name, "x")
        issue = COMMANDS[name][2]
        assert r.returncode == 2, name
        assert f"forge {name}: error: forge {name}: not built yet (it comes with issue #{issue}" in r.stderr
        assert "Traceback" not in r.stderr


def test_built_commands_import_nothing_heavy_at_module_level():
    mods = [m for m, _, _ in COMMANDS.values() if m]
    code = ("import sys, importlib\n" + "".join(f"importlib.import_module({m!r})\n" for m in mods) +
            f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.stdout.strip() == ""


# --- the model-reference rule ------------------------------------------------------------------------------------

def test_existing_gguf_file_and_hf_directory(tmp_path):
    g = tmp_path / "m.gguf"
    g.write_bytes(b"GGUF" + b"\0" * 20)
    assert resolve(str(g)).kind == "gguf"
    d = tmp_path / "hf"
    d.mkdir()
    (d / "config.json").write_text("{}")
    assert resolve(str(d)).kind == "hf_dir"


def test_existing_path_of_the_wrong_kind_is_a_clear_error(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("hello")
    with pytest.raises(ForgeError, match="not a GGUF file"):
        resolve(str(f))
    with pytest.raises(ForgeError, match="directory has no config.json"):
        resolve(str(tmp_path))


@pytest.mark.parametrize("ref, kind", [
    ("llama3.2:1b", "ollama"), ("me/my-bot:latest", "ollama"), ("qwen2.5:0.5b-instruct-q4_K_M", "ollama"),
    ("Qwen/Qwen2.5-0.5B-Instruct", "hf_id"), ("gpt2", "hf_id"),
])
def test_tag_means_ollama_else_hub_id(ref, kind):
    assert resolve(ref).kind == kind


def test_untagged_name_known_to_ollama_is_ollama():
    assert resolve("mybot", ollama_knows=lambda n: n == "mybot").kind == "ollama"
    assert resolve("Qwen/Qwen2.5-0.5B", ollama_knows=lambda n: False).kind == "hf_id"

    def down(name):
        raise ConnectionError("refused")
    assert resolve("gpt2", ollama_knows=down).kind == "hf_id"


def test_missing_local_path_is_not_taken_for_a_hub_id():
    with pytest.raises(ForgeError, match="no such file"):
        resolve("./models/missing")
    with pytest.raises(ForgeError, match="no such file"):
        resolve("missing.gguf")
