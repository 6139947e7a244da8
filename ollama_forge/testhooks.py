"""Kill points for the crash-recovery tests. Without the variables below every call is two dictionary lookups.

``FORGE_TEST_KILL_AT=POINT:N`` SIGKILLs this process at the N-th time it reaches ``POINT`` (counted per process,
from 1). ``FORGE_TEST_KILL_EACH=POINT`` with ``FORGE_TEST_KILL_COVERED=FILE`` SIGKILLs it at the first ``POINT``
whose key (the pipeline stage, what is being written, and how many times this stage wrote it before) is not yet
listed in FILE, after listing it. A redone stage repeats its keys in the same order, so a chain of processes run this
way dies once before every write of every stage, and each process makes progress. ``FORGE_TEST_KILL_LOG=FILE`` appends every point reached to FILE.

Points: ``rename`` (every atomic rename into a final name, just before it happens: the temporary is complete, the
final name still holds the old content or nothing; key: the final name), ``manifest`` (a stage's outputs are in
place, its manifest entry not yet written; key: the stage), ``stage`` (the start of a pipeline stage's work),
``progress`` (every progress event of a pipeline stage: training steps, merge/convert tensors, eval prompts),
``child`` (llama.cpp's quantizer child has started). Training has its own step/save points (``train/callbacks.py``).
"""

from __future__ import annotations

import os
import signal

_counts: dict[str, int] = {}
_each: dict[str, int] = {}
_stage = ""


def enter_stage(name: str) -> None:
    """The pipeline starts a stage: writes are keyed by stage, so a redone stage repeats the same keys."""
    global _stage
    _stage = name
    _each.clear()


def kill_point(point: str, key: str = "") -> None:
    log = os.environ.get("FORGE_TEST_KILL_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as f:
            f.write(point + "\n")
    if os.environ.get("FORGE_TEST_KILL_EACH") == point:
        _each[key] = n = _each.get(key, 0) + 1
        covered_file = os.environ["FORGE_TEST_KILL_COVERED"]
        mark = f"{point} {_stage or '-'}: {key}#{n}"
        try:
            with open(covered_file, encoding="utf-8") as f:
                covered = set(f.read().splitlines())
        except FileNotFoundError:
            covered = set()
        if mark not in covered:
            with open(covered_file, "a", encoding="utf-8") as f:
                f.write(mark + "\n")
            os.kill(os.getpid(), signal.SIGKILL)
    spec = os.environ.get("FORGE_TEST_KILL_AT")
    if not spec:
        return
    name, _, n_s = spec.partition(":")
    if name != point or not n_s.isdigit():
        return
    _counts[point] = _counts.get(point, 0) + 1
    if _counts[point] == int(n_s):
        os.kill(os.getpid(), signal.SIGKILL)
