"""End to end in a real terminal: the app runs in a detached tmux session (120x40, its own tmux server), opens the
arena on two GGUFs, gets a prompt and a vote as keystrokes, and the pair appears in the run's DPO file.

It runs `forge tui --arena LEFT RIGHT --run DIR` once the `tui` command exists, and until then the arena module's
own entry point (`python -m ollama_forge.tui.screens.arena LEFT RIGHT --run DIR`), which hosts the same screen.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.ollama_standin import testing

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


def forge_tui_has_arena() -> bool:
    import argparse
    import importlib

    from ollama_forge.commands import COMMANDS

    module = COMMANDS["tui"][0]
    if module is None:
        return False
    p = argparse.ArgumentParser()
    importlib.import_module(module).add_arguments(p)
    return "--arena" in p._option_string_actions  # noqa: SLF001 - argparse has no public lookup


def arena_command(left: Path, right: Path, run: Path) -> list[str]:
    args = [str(left), str(right), "--run", str(run)]
    forge = Path(sys.executable).parent / "forge"
    if forge_tui_has_arena() and forge.is_file():
        return [str(forge), "tui", "--arena", *args]
    return [sys.executable, "-m", "ollama_forge.tui.screens.arena", *args]


class Tmux:
    """One private tmux server (its own socket) holding one session; everything it starts dies with kill()."""

    def __init__(self, tmp: Path):
        self.socket = f"forge-arena-{uuid.uuid4().hex[:8]}"
        self.conf = tmp / "tmux.conf"
        self.conf.write_text("set -g remain-on-exit on\nset -g history-limit 100\n")  # a crash stays readable

    def run(self, *args: str, check: bool = True) -> str:
        r = subprocess.run(["tmux", "-L", self.socket, "-f", str(self.conf), *args], capture_output=True,
                           text=True, timeout=20)
        if check and r.returncode != 0:
            raise AssertionError(f"tmux {' '.join(args)}: {r.stderr.strip()}")
        return r.stdout

    def start(self, cmd: list[str], env: dict[str, str], cwd: Path, status: Path) -> None:
        """Run ``cmd`` in the session; its exit status is written to ``status`` (tmux itself sometimes never
        collects it: the pane goes dead with the process left a zombie)."""
        wrapped = ["sh", "-c", 'status="$1"; shift; "$@"; echo $? > "$status"', "sh", str(status), *cmd]
        subprocess.run(["tmux", "-L", self.socket, "-f", str(self.conf), "new-session", "-d", "-s", "arena",
                        "-x", "120", "-y", "40", "-c", str(cwd), *wrapped], env=env, check=True, timeout=20)

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "arena")

    def dead(self) -> bool:
        return self.run("display-message", "-p", "-t", "arena", "#{pane_dead}").strip() == "1"

    def keys(self, *keys: str, literal: bool = False) -> None:
        self.run("send-keys", "-t", "arena", *(["-l"] if literal else []), *keys)

    def wait(self, cond, timeout: float, what: str) -> str:
        end = time.monotonic() + timeout
        text = ""
        while time.monotonic() < end:
            text = self.screen()
            if cond(text):
                return text
            if self.dead():
                raise AssertionError(f"the app exited while waiting for {what}:\n{text}")
            time.sleep(0.2)
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; the screen:\n{text}")

    def kill(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=20)


def test_arena_in_tmux_prompt_vote_and_the_pair_lands_in_the_dpo_file(trained, tiny_model, tiny_model_root,
                                                                      tmp_path):
    tuned, base = tmp_path / "tuned.gguf", tmp_path / "base.gguf"
    tuned.symlink_to(trained / "model-f16.gguf")
    base.symlink_to(testing.random_gguf(tiny_model_root, tiny_model("qwen2")))
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "TERM": "xterm-256color", "COLORTERM": "truecolor",
           "OLLAMA_HOST": "127.0.0.1:9"}  # nothing answers there: both models must run in-process
    tmux = Tmux(tmp_path)
    try:
        exit_status = tmp_path / "exit-status"
        tmux.start(arena_command(tuned, base, run), env, REPO, exit_status)
        tmux.wait(lambda s: "both models ready" in s, 60, "both models to load")
        tmux.keys(testing.QUESTION, literal=True)
        tmux.keys("Enter")
        screen = tmux.wait(lambda s: "vote: a = A better" in s, 60, "both answers")
        assert "A · tuned.gguf" in screen and "B · base.gguf" in screen
        left_pane = [line.split("││")[0] for line in screen.splitlines() if "││" in line]
        assert any(testing.ANSWER in cell for cell in left_pane), screen
        tmux.keys("a")
        tmux.wait(lambda s: "A better: pair added" in s, 20, "the vote to be saved")
        pairs = [json.loads(x) for x in (run / "arena-dpo.jsonl").read_text(encoding="utf-8").splitlines()]
        assert len(pairs) == 1
        assert pairs[0]["prompt"] == testing.QUESTION and pairs[0]["chosen"] == testing.ANSWER
        assert pairs[0]["rejected"] and pairs[0]["rejected"] != testing.ANSWER
        (vote,) = [json.loads(x) for x in (run / "votes.jsonl").read_text(encoding="utf-8").splitlines()]
        assert vote["winner_model"] == str(tuned) and vote["right"]["model"] == str(base)
        tmux.keys("C-q")  # quit: the app ends cleanly with status 0
        end = time.monotonic() + 20
        while not exit_status.is_file() and time.monotonic() < end:
            time.sleep(0.2)
        assert exit_status.is_file(), f"still running 20 s after ctrl+q:\n{tmux.screen()}"
        assert exit_status.read_text().strip() == "0", tmux.screen()
    finally:
        tmux.kill()
