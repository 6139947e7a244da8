"""Offline text for the demo: the Python standard library's own source files (code, comments and docstrings).

Everything the demo learns comes from here, so it needs no network: the base model is pretrained on the sources of
the *training* modules, and the demo's task data (``data.py``) cuts code and prose snippets out of the same files.
Modules are split by a hash of their name, so a module's side never depends on which other modules a Python version
ships: about one module in five (``HELD_OUT_EVERY``) is held out, and neither the base model nor any training data
ever sees it; only the evaluation does.

Files are parsed with ``ast``, never imported (importing runs module code, and what it prints or registers differs
between machines), and read in sorted order, so the corpus is a pure function of the standard library's files.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import sys
import sysconfig
import textwrap
from pathlib import Path
from typing import Iterator

# Modules skipped: "this" is rot13 text (noise to a tokenizer) and "antigravity" is a two-line joke.
EXCLUDE = frozenset({"this", "antigravity"})
# One module in five held out: with the 149 public top-level modules of CPython 3.11 that is 38 modules, enough
# held-out snippets for an eval of n=200 drawn from modules nothing was trained on.
HELD_OUT_EVERY = 5
# Snippet bounds in characters: long enough to carry a signal (a statement or a sentence), short enough that a
# prompt stays under ~100 tokens for the demo tokenizer (the recipe's max_length is 256).
MIN_CHARS, MAX_CHARS = 50, 240
MAX_LINES = 6


@dataclasses.dataclass(frozen=True)
class Module:
    name: str
    path: Path

    @property
    def held_out(self) -> bool:
        return is_held_out(self.name)

    def source(self) -> str:
        return self.path.read_text(encoding="utf-8", errors="replace")


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def is_held_out(name: str) -> bool:
    """A module's side, from its name alone (stable across Python versions that add or drop other modules)."""
    return int(hashlib.sha256(name.encode("utf-8")).hexdigest()[:8], 16) % HELD_OUT_EVERY == 0


def modules(root: Path | None = None) -> list[Module]:
    """The public top-level modules of the standard library (``*.py`` directly under it), sorted by name."""
    root = root or stdlib_dir()
    return [Module(p.stem, p) for p in sorted(root.glob("*.py"))
            if not p.stem.startswith("_") and p.stem not in EXCLUDE]


def fingerprint(mods: list[Module] | None = None) -> str:
    """Identity of the corpus without reading it: Python version, module names and file sizes."""
    mods = modules() if mods is None else mods
    h = hashlib.sha256(f"python {sys.version_info[:3]}\n".encode())
    for m in mods:
        h.update(f"{m.name}:{m.path.stat().st_size}\n".encode())
    return h.hexdigest()[:16]


def pretraining_documents(mods: list[Module] | None = None) -> list[str]:
    """The base model's pretraining text: the full source of every training module (held-out ones excluded)."""
    mods = modules() if mods is None else mods
    return [m.source() for m in mods if not m.held_out]


# ---------------------------------------------------------------------------------------------------------------
# Snippets: statements from function bodies (code) and docstring paragraphs (prose)


def _parse(m: Module) -> tuple[ast.AST, list[str]] | None:
    src = m.source()
    try:
        return ast.parse(src), src.splitlines()
    except (SyntaxError, ValueError):  # a file this Python cannot parse (should not happen for its own stdlib)
        return None


def _has_docstring(body: list[ast.stmt]) -> bool:
    return bool(body) and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None),
                                                                         ast.Constant) \
        and isinstance(body[0].value.value, str)


def _functions(tree: ast.AST) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    fns = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    return sorted(fns, key=lambda n: (n.lineno, n.col_offset))


def code_snippets(m: Module, parsed: tuple[ast.AST, list[str]] | None = None) -> list[str]:
    """Runs of whole statements from function bodies (docstrings left out), dedented, MIN..MAX_CHARS long."""
    parsed = parsed or _parse(m)
    if parsed is None:
        return []
    tree, lines = parsed
    out: list[str] = []
    for fn in _functions(tree):
        body = fn.body[1:] if _has_docstring(fn.body) else fn.body
        start = 0
        while start < len(body):
            first = body[start].lineno
            end = start
            text = ""
            while end < len(body):
                last = body[end].end_lineno or body[end].lineno
                candidate = textwrap.dedent("\n".join(lines[first - 1:last])).strip("\n")
                if len(candidate) > MAX_CHARS or candidate.count("\n") + 1 > MAX_LINES:
                    break
                text = candidate
                end += 1
                if len(text) >= MIN_CHARS:
                    break
            if len(text) >= MIN_CHARS and '"""' not in text and "'''" not in text:
                out.append(text)
            start = max(end, start + 1)
    return out


def _prose_like(par: str) -> bool:
    if len(par) < MIN_CHARS or ">>>" in par or any(c in par for c in "={}[]<>_`|\\#@"):
        return False
    if not par[0].isalpha() or any(line[:1].isspace() for line in par.splitlines()):
        return False  # indented lines in a docstring are examples or tables, not sentences
    letters = sum(c.isalpha() or c in " \n" for c in par)
    return letters / len(par) >= 0.9 and len(par.split()) >= 8


def prose_snippets(m: Module, parsed: tuple[ast.AST, list[str]] | None = None) -> list[str]:
    """Docstring paragraphs that read as sentences, cut at a line end to at most MAX_CHARS."""
    parsed = parsed or _parse(m)
    if parsed is None:
        return []
    tree, _ = parsed
    nodes = [tree] + sorted((n for n in ast.walk(tree) if isinstance(
        n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))), key=lambda n: (n.lineno, n.col_offset))
    out: list[str] = []
    for node in nodes:
        doc = ast.get_docstring(node, clean=True)
        if not doc:
            continue
        for par in doc.split("\n\n"):
            kept: list[str] = []
            for line in par.strip("\n").splitlines():
                if len("\n".join(kept + [line.rstrip()])) > MAX_CHARS:
                    break
                kept.append(line.rstrip())
            text = "\n".join(kept).strip()
            if _prose_like(text):
                out.append(text)
    return out


def iter_snippets(mods: list[Module] | None = None) -> Iterator[tuple[Module, str, list[str]]]:
    """(module, kind, snippets) for every module: kind "code" then "prose", modules in sorted order."""
    for m in modules() if mods is None else mods:
        parsed = _parse(m)
        yield m, "code", code_snippets(m, parsed) if parsed else []
        yield m, "prose", prose_snippets(m, parsed) if parsed else []
