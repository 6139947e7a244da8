"""The install contract: README's two commands, CI runs exactly the test one, torch pinned only for this machine."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_readme_opens_with_the_two_commands_and_ci_runs_the_test_one():
    text = (REPO / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    commands = [ln.split("#")[0].strip() for ln in block.splitlines() if ln.strip()]
    assert commands == ["bash scripts/demo.sh", "bash scripts/test.sh"]
    assert text.index("```bash") < 40, "the two commands come first"
    ci = (REPO / ".ci" / "run").read_text()
    assert [ln for ln in ci.splitlines() if ln.strip() and not ln.startswith("#")][-1] == "exec bash scripts/test.sh"
    for script in ("demo.sh", "test.sh"):
        assert "bash scripts/setup.sh" in (REPO / "scripts" / script).read_text(), f"{script} sets up first"


def test_torch_is_pinned_for_this_machine_only():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    torch = [d for d in deps if re.match(r"torch\b", d)]
    assert torch and "==" not in torch[0], "users' Macs and CUDA boxes pick their own torch build"
    constraints = (REPO / "constraints" / "linux-cpu.txt").read_text()
    assert re.search(r"^torch==2\.13\.0$", constraints, re.M)
    setup = (REPO / "scripts" / "setup.sh").read_text()
    assert "nvidia-smi" in setup and "constraints/linux-cpu.txt" in setup


def test_llama_wheel_cache_is_keyed_by_cpu_flags():
    setup = (REPO / "scripts" / "setup.sh").read_text()
    assert "/proc/cpuinfo" in setup and "cpu_key" in setup and "WHEELDIR" in setup


def test_setup_is_idempotent_and_quick_when_everything_is_installed():
    r = subprocess.run(["bash", "scripts/setup.sh"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert re.search(r"\[setup\] ready in \d+ s", r.stderr)
    assert "building llama-cpp-python" not in r.stderr and "installing ollama-forge" not in r.stderr
