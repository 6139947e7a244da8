"""Python side of the Go reference renderer for Ollama TEMPLATEs (tests only).

``build()`` compiles ``main.go`` once into ``<repo>/.cache/gotemplate/<hash of main.go>/`` (gitignored) with the Go
toolchain offline (GOPROXY=off, stdlib only); later sessions reuse the binary while main.go is unchanged.
``render_many(jobs)`` renders a whole batch in one process. A missing ``go`` is an error, never a skip: the parity
proof is the point of these tests, and scripts/setup.sh installs Debian's golang-go.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterable

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
MAIN_GO = HERE / "main.go"
CACHE = Path(os.environ.get("FORGE_GOTEMPLATE_CACHE", REPO / ".cache" / "gotemplate"))
# Fixed date for currentDate/yesterdayDate so a template using them renders the same on every run.
FIXED_DATE = "2026-01-15"


class GoMissing(RuntimeError):
    pass


# Where Go lives when it is installed but not on PATH (Debian's golang-go, the official tarball).
GO_CANDIDATES = ("/usr/lib/go/bin/go", "/usr/local/go/bin/go")


def _go() -> str:
    go = shutil.which("go") or next((p for p in GO_CANDIDATES if Path(p).exists()), None)
    if go is None:
        raise GoMissing("the Go toolchain ('go') is not installed: the Ollama TEMPLATE parity tests need it to build "
                        "tests/gotemplate/main.go (stdlib only, offline). Install it with scripts/setup.sh "
                        "(apt-get install golang-go) or from https://go.dev/dl/")
    return go


@functools.lru_cache(maxsize=1)
def build() -> Path:
    """Compile the renderer (once per main.go content) and return the binary's path."""
    digest = hashlib.sha256(MAIN_GO.read_bytes()).hexdigest()[:16]
    out_dir = CACHE / digest
    binary = out_dir / "render"
    if binary.is_file() and os.access(binary, os.X_OK):
        return binary
    go = _go()
    out_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, GOFLAGS="-mod=mod", GOPROXY="off", GOCACHE=str(CACHE / "gocache"),
               GOPATH=str(CACHE / "gopath"), CGO_ENABLED="0", GO111MODULE="auto")
    fd, tmp = tempfile.mkstemp(prefix=".render.", suffix=".partial", dir=out_dir)
    os.close(fd)
    try:
        proc = subprocess.run([go, "build", "-o", tmp, str(MAIN_GO)], env=env, cwd=HERE,
                              capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"go build of {MAIN_GO} failed:\n{proc.stdout}{proc.stderr}")
        os.chmod(tmp, 0o755)
        os.replace(tmp, binary)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return binary


def render_many(jobs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Render each job ({"template", "messages", ...} as main.go documents); one result dict per job."""
    jobs = list(jobs)
    binary = build()
    env = dict(os.environ, FORGE_TEMPLATE_DATE=FIXED_DATE)
    proc = subprocess.run([str(binary)], input=json.dumps({"jobs": jobs}), capture_output=True, text=True,
                          env=env, timeout=300, encoding="utf-8")
    if proc.returncode != 0:
        raise RuntimeError(f"Go renderer failed (exit {proc.returncode}): {proc.stderr.strip()}")
    results = json.loads(proc.stdout)["results"]
    assert len(results) == len(jobs)
    return results


def render(template: str, messages: list[dict[str, Any]] | None = None, **kw: Any) -> str:
    """Render one template the way Ollama would; raises RuntimeError with the Go error if execution fails."""
    job = {"template": template, "messages": messages or [], **kw}
    (res,) = render_many([job])
    if "error" in res:
        raise RuntimeError(f"Go template error: {res['error']}")
    return res["output"]
