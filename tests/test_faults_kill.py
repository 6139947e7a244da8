"""Fault suite: 20 SIGKILLs at seeded random points across ``forge run``, each followed by a rerun.

The points are drawn (seed 20261128) from everything an uninterrupted run passes: every atomic rename, manifest
write, stage start, progress event (training steps, merge/convert tensors, eval prompts), training step and the
quantizer's child. A killed process is followed by the next one on the same run directory, itself killed at the
next drawn point; when a process finishes before its point is reached, the chain's outputs are compared with the
uninterrupted run and the next kill starts a fresh directory. After every process:

- everything the manifest records as finished is on disk with the recorded hash (nothing half-written is "done");
- no stage finished earlier was redone (its manifest entry is unchanged);
- at the end of each chain, data, merged model, F16, quantized GGUF, Modelfile and adapter are byte-identical to the
  uninterrupted run's.
"""

from __future__ import annotations

import json
import random
import signal
from pathlib import Path

import pytest

from tests.test_pipeline import KEEP_ALL, assert_manifest_truthful, assert_same_outputs, forge_run
from tests.test_pipeline import reference, work  # noqa: F401 - module fixtures shared with the pipeline tests

pytestmark = pytest.mark.slow

SEED = 20261128
KILLS = 20
POINTS = ("rename", "manifest", "stage", "progress", "child", "step")


def _entries(run: Path) -> dict[str, dict]:
    out = {}
    for sub in ("", "base"):
        m = run / sub / "manifest.json"
        if m.is_file():
            for stage, e in json.loads(m.read_text()).get("stages", {}).items():
                out[f"{sub}/{stage}"] = {k: v for k, v in e.items() if k != "dropped"}
    return out


def draw(rng: random.Random, counts: dict[str, int]) -> str:
    """A kill point: its kind weighted by the square root of how often a run passes it (64 progress events would
    otherwise leave the one quantizer child almost never drawn), then one of its occurrences uniformly."""
    point = rng.choices(POINTS, weights=[counts.get(p, 0) ** 0.5 for p in POINTS])[0]
    if point == "step":
        return f"step:{rng.randint(1, 6)}"  # sft's optimizer steps (train.max_steps 6)
    return f"{point}:{rng.randint(1, counts[point])}"


def test_twenty_random_sigkills_all_recover_with_nothing_lost(work, reference):  # noqa: F811
    rng = random.Random(SEED)
    counts = {p: reference["points"].count(p) for p in set(reference["points"])}
    counts["step"] = 6
    chain, kills, completions, redone = 0, 0, 0, 0
    run = work / f"fault-{chain}"
    log = []
    while kills < KILLS:
        spec = draw(rng, counts)
        before = _entries(run)
        p = forge_run(work / "recipe.yaml", run, "--no-push", "--set", KEEP_ALL, env={"FORGE_TEST_KILL_AT": spec})
        after = _entries(run)
        changed = [k for k, v in before.items() if after.get(k) != v]
        redone += len(changed)
        assert not changed, f"{spec}: finished stages redone or lost: {changed}"
        if p.returncode == -signal.SIGKILL:
            kills += 1
            assert_manifest_truthful(run)
            log.append(f"{spec}: killed")
            continue
        assert p.returncode == 0, (spec, p.returncode, p.stderr[-2000:])
        completions += 1
        log.append(f"{spec}: finished")
        log[-1] += f" ({assert_same_outputs(run, reference, work)})"
        chain += 1
        run = work / f"fault-{chain}"
    # the last chain: finish it
    p = forge_run(work / "recipe.yaml", run, "--no-push", "--set", KEEP_ALL)
    assert p.returncode == 0, p.stderr[-2000:]
    log.append(f"last chain finished ({assert_same_outputs(run, reference, work)})")
    recovered = kills  # every kill was followed by a process that continued from it and a chain that finished
    print(f"fault suite: {recovered}/{KILLS} recoveries, {chain + 1} chains, {completions} early finishes, "
          f"{redone} finished stages redone; points: " + "; ".join(log))
    assert recovered == KILLS
