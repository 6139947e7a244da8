"""Shared pytest fixtures for the ollama-forge test suite.

Keep this file to fixtures several test files share; one test file's helpers live in that file.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Callable

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def fixture_cache_root() -> Path:
    """Where tiny models are cached between runs: $FORGE_FIXTURE_CACHE, else <repo>/.cache/fixtures (gitignored)."""
    env = os.environ.get("FORGE_FIXTURE_CACHE")
    return Path(env).expanduser() if env else REPO_ROOT / ".cache" / "fixtures"


@pytest.fixture(scope="session")
def tiny_model_root() -> Path:
    """The cache folder `tiny_model` builds into."""
    return fixture_cache_root()


@pytest.fixture(scope="session")
def tiny_model(tiny_model_root: Path) -> Callable[[str], Path]:
    """Factory: ``tiny_model("qwen2") -> Path`` to a saved tiny HF model directory (built on first request).

    Families: tests.fixtures.tiny_models.FAMILY_NAMES ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3",
    "phi3", and the 256-aligned "llama-q", "qwen2-q" for quantization). A fixture is built once per definition and
    reused across sessions; a cold build of all of them takes a few seconds. Treat the directory as read-only:
    copy it (shutil.copytree) before changing anything in it.
    """
    from tests.fixtures.tiny_models import build

    built: dict[str, Path] = {}
    lock = threading.Lock()  # build() is process-safe by itself; this only avoids re-hashing per call

    def factory(family: str) -> Path:
        with lock:
            if family not in built:
                built[family] = build(family, tiny_model_root)
            return built[family]

    return factory


@pytest.fixture(autouse=True)
def _forge_logger_state():
    """cli.main() gives the 'ollama_forge' logger its own stderr handler and stops propagation; a test that runs
    main() in-process would otherwise hide every later test's log records from caplog."""
    import logging

    lg = logging.getLogger("ollama_forge")
    saved = (lg.handlers[:], lg.propagate, lg.level)
    yield
    lg.handlers[:], lg.propagate, lg.level = saved


# --- Ollama: the stand-in (and a real Ollama when one answers) ---------------------------------------------------

OLLAMA_SERVERS = ["standin", pytest.param("real", marks=pytest.mark.ollama)]


@pytest.fixture(autouse=True)
def forge_data(tmp_path, monkeypatch) -> Path:
    """forge's record of pushed models goes to a per-test folder, never the user's."""
    d = tmp_path / "forge-data"
    monkeypatch.setenv("FORGE_DATA_DIR", str(d))
    return d


@pytest.fixture(scope="module")
def trained(tiny_model, tiny_model_root) -> Path:
    """A run directory (adapter, GGUF, Modelfile) of qwen2 trained briefly to answer and stop; built once, on disk."""
    from tests.ollama_standin import testing

    return testing.trained_run(tiny_model_root, tiny_model("qwen2"))


@pytest.fixture
def run_dir(trained, tmp_path) -> Path:
    from tests.ollama_standin import testing

    return testing.copy_run(trained, tmp_path / "run")


@pytest.fixture(params=OLLAMA_SERVERS)
def url(request) -> str:
    """The stand-in's URL, then a real Ollama's (marker `ollama`; skipped with the reason when none answers)."""
    from tests.ollama_standin import testing

    return testing.server_url(request.param)


@pytest.fixture
def forge_log(caplog):
    """caplog for the ollama_forge logger, even after a CLI test set it not to propagate (cli._setup_logging)."""
    logger = logging.getLogger("ollama_forge")
    old = logger.propagate
    logger.propagate = True
    caplog.set_level(logging.INFO, logger="ollama_forge")
    yield caplog
    logger.propagate = old


@pytest.fixture(scope="session")
def qwen2_f16_gguf(tiny_model, tmp_path_factory) -> Path:
    """An F16 GGUF of the tiny qwen2 (chatml template), converted once per session; copy it before changing it."""
    from ollama_forge.gguf.convert import convert_hf_to_gguf

    out = tmp_path_factory.mktemp("qwen2-gguf") / "model-f16.gguf"
    convert_hf_to_gguf(tiny_model("qwen2"), out)
    return out
