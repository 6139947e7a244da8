"""``forge run``: the chain on a tiny model, cached reruns, a quant-type change, --from/--until, the run lock, the
progress display, and the SIGKILL recovery suite (kill at every rename and manifest write, and inside training,
merge, convert and quantize; each rerun completes with outputs byte-identical to an uninterrupted run).

Every run goes through the real CLI in a subprocess (``forge run --json``): SIGKILL needs a process to kill, and the
JSON events say which stages ran.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.pipeline_helpers import small_recipe
from tests.train_helpers import ONE_THREAD_ENV, REPO

pytestmark = pytest.mark.slow

KEEP_ALL = "export.keep=[merged,f16]"  # the kill suite compares every intermediate, so the run keeps them
COMPARED = ["data/report.json", "merged", "model-f16.gguf", "model-q8_0.gguf", "Modelfile", "adapter"]


def forge_run(recipe: Path, run_dir: Path, *extra: str, env: dict[str, str] | None = None,
              timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "ollama_forge", "run", str(recipe), "-o", str(run_dir), "--json", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=recipe.parent,
                          env={**os.environ, "PYTHONPATH": str(REPO), **ONE_THREAD_ENV, **(env or {})})


def statuses(proc: subprocess.CompletedProcess) -> dict[str, str]:
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{") and '"kind": "result"' in line:
            return {s["name"]: s["status"] for s in json.loads(line)["stages"]}
    raise AssertionError(f"no result line (rc {proc.returncode}): {proc.stderr[-1500:]}")


def digests(run: Path) -> dict[str, str]:
    from ollama_forge.runs import hash_path

    return {rel: hash_path(run / rel) for rel in COMPARED if (run / rel).exists()}


ATOL = 1e-5  # tests/test_train_resume.py: a resumed run repeats the arithmetic to float32 rounding


def assert_same_outputs(run: Path, reference: dict, work: Path) -> str:
    """The run's outputs against the uninterrupted run's: data and Modelfile byte-identical; the adapter identical
    or, when training was interrupted and resumed, within ATOL; merged model, F16 and quantized GGUF byte-identical
    to what the export stages make from this run's own adapter (checked by redoing them from it). Returns how."""
    from safetensors.torch import load_file

    got, want = digests(run), reference["digests"]
    if got == want:
        return "byte-identical"
    for rel in ("data/report.json", "Modelfile"):
        assert got[rel] == want[rel], rel
    a = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(reference["run"] / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= ATOL, f"adapter differs by {worst:.3g} > {ATOL}"
    again = work / f"{run.name}-reexport"
    shutil.copytree(run, again)
    p = forge_run(work / "recipe.yaml", again, "--no-push", "--set", KEEP_ALL, "--from", "merge")
    assert p.returncode == 0, p.stderr[-2000:]
    redo = digests(again)
    for rel in ("merged", "model-f16.gguf", "model-q8_0.gguf", "Modelfile"):
        assert got[rel] == redo[rel], f"{rel} differs from a fresh export of the same adapter"
    return f"adapter within {worst:.2g} of the uninterrupted run's; exports byte-identical to a fresh export of it"


def assert_manifest_truthful(run: Path) -> None:
    """Whatever the manifest records as finished is on disk, complete, with the recorded hash."""
    from ollama_forge.runs import RunDir, hash_path

    for r in (RunDir(run), RunDir(run / "base")):
        for stage, entry in r.manifest().get("stages", {}).items():
            dropped = set(entry.get("dropped", []))
            for rel, digest in entry["outputs"].items():
                if rel in dropped:
                    continue
                p = r.root / rel
                assert p.exists(), f"{stage}: {rel} recorded but missing"
                assert hash_path(p) == digest, f"{stage}: {rel} recorded with another hash (half-written?)"


@pytest.fixture(scope="module")
def work(tiny_model, tmp_path_factory) -> Path:
    return small_recipe(tmp_path_factory.mktemp("pipeline"), tiny_model("qwen2")).parent


@pytest.fixture(scope="module")
def reference(work) -> dict:
    """An uninterrupted run keeping every intermediate, with the kill points it passed, counted."""
    run = work / "ref"
    log = work / "points.log"
    p = forge_run(work / "recipe.yaml", run, "--no-push", "--set", KEEP_ALL, env={"FORGE_TEST_KILL_LOG": str(log)})
    assert p.returncode == 0, p.stderr[-3000:]
    points = log.read_text().split()
    events = [json.loads(x) for x in p.stdout.splitlines() if x.startswith("{")]
    return {"run": run, "digests": digests(run), "points": points, "events": events, "status": statuses(p)}


def test_run_walks_every_stage_and_a_rerun_is_all_cached(work, reference):
    assert reference["status"] == {"data": "ran", "sft": "ran", "dpo": "ran", "merge": "ran", "convert": "ran",
                                   "quantize": "ran", "modelfile": "ran", "gate": "ran", "push": "skipped",
                                   "eval": "ran"}
    assert set(reference["digests"]) == set(COMPARED)
    kinds = {e["kind"] for e in reference["events"]}
    assert {"plan", "stage", "progress", "metric", "result"} <= kinds
    run = work / "rerun"
    shutil.copytree(reference["run"], run)
    p = forge_run(work / "recipe.yaml", run, "--no-push", "--set", KEEP_ALL)
    assert p.returncode == 0, p.stderr[-2000:]
    st = statuses(p)
    assert {k for k, v in st.items() if v == "ran"} == set(), st
    assert digests(run) == reference["digests"]


def test_changing_only_the_quant_type_reruns_quantize_and_what_follows(work, reference, url):
    """Default retention (F16 dropped): the quantize stage rebuilds the F16 it needs, byte-identical, and says so;
    training, merge and convert stay cached."""
    run = work / "quant-change"
    first = forge_run(work / "recipe.yaml", run, "--host", url)
    assert first.returncode == 0, first.stderr[-2000:]
    assert not (run / "model-f16.gguf").exists()  # dropped by the default retention policy
    p = forge_run(work / "recipe.yaml", run, "--host", url, "--set", "export.quant_types=[Q4_K_M]")
    assert p.returncode == 0, p.stderr[-2000:]
    st = statuses(p)
    assert st == {"data": "cached", "sft": "cached", "dpo": "cached", "merge": "skipped", "convert": "cached",
                  "quantize": "ran", "modelfile": "ran", "gate": "ran", "push": "ran", "eval": "ran"}, st
    assert "rebuild=model-f16.gguf" in p.stdout  # the choice, with its reason, in the event stream
    assert (run / "model-q4_k_m.gguf").is_file() and not (run / "model-q8_0.gguf").exists()
    assert "FROM ./model-q4_k_m.gguf" in (run / "Modelfile").read_text()


def test_from_and_until(work, reference):
    run = work / "from-until"
    p = forge_run(work / "recipe.yaml", run, "--no-push", "--until", "convert")
    assert p.returncode == 0, p.stderr[-2000:]
    assert list(statuses(p)) == ["data", "sft", "dpo", "merge", "convert"]
    assert (run / "model-f16.gguf").is_file()  # retention waits for the end of the chain
    assert not any(run.glob("model-q*.gguf"))
    p = forge_run(work / "recipe.yaml", run, "--no-push", "--from", "quantize")
    assert p.returncode == 0, p.stderr[-2000:]
    st = statuses(p)
    assert [k for k, v in st.items() if v == "skipped" and k in ("data", "sft", "dpo", "convert")] == \
        ["data", "sft", "dpo", "convert"]
    assert st["quantize"] == st["modelfile"] == st["gate"] == st["eval"] == "ran", st


def test_a_second_process_on_the_same_run_directory_is_refused(work, tmp_path):
    from ollama_forge.errors import ForgeError
    from ollama_forge.pipeline import run_lock

    root = tmp_path / "locked"
    with run_lock(root):
        p = forge_run(work / "recipe.yaml", root, "--no-push")
        assert p.returncode == 2
        assert "another forge process is working in this run directory" in p.stderr
        assert "Traceback" not in p.stderr
        with pytest.raises(ForgeError):
            with run_lock(root):
                pass


def test_terminal_progress_shows_the_stage_list_bar_and_sparkline():
    import io

    from ollama_forge.commands.run import ChainProgress
    from ollama_forge.events import Event

    out = io.StringIO()
    out.isatty = lambda: True  # type: ignore[method-assign]
    p = ChainProgress(["data", "sft", "dpo"], out)
    p(Event("stage", "pipeline", "[1/3] data", {"name": "data", "state": "running"}))
    p(Event("stage", "pipeline", "[1/3] data: ran in 0.1s", {"name": "data", "state": "ran"}))
    p(Event("stage", "pipeline", "[2/3] sft", {"name": "sft", "state": "running"}))
    for step, loss in ((1, 2.0), (2, 1.5), (3, 1.0)):
        p(Event("metric", "sft", f"loss {loss}", {"loss": loss, "step": step}))
        p.last_draw = 0
        p(Event("progress", "sft", "", {"step": step, "total": 6, "eta_s": 30}))
    screen = out.getvalue().split("\r\033[K")[-1]
    assert "✓data ▶sft ·dpo" in screen and "3/6" in screen and "ETA 00:30" in screen, screen
    assert "loss 1.000" in screen and "█" in screen


# ---------------------------------------------------------------------------------------------------------------
# SIGKILL recovery


def _kill_chain(recipe: Path, run: Path, point: str, limit: int) -> list[str]:
    """Run until a process finishes, each one SIGKILLed before the first `point` write not killed before (see
    ollama_forge/testhooks.py). Returns the writes a kill landed before."""
    covered = run.parent / f"{run.name}.covered"
    env = {"FORGE_TEST_KILL_EACH": point, "FORGE_TEST_KILL_COVERED": str(covered)}
    for _ in range(limit):
        p = forge_run(recipe, run, "--no-push", "--set", KEEP_ALL, env=env)
        if p.returncode == 0:
            return covered.read_text().splitlines() if covered.exists() else []
        assert p.returncode == -signal.SIGKILL, (p.returncode, p.stderr[-2000:])
        assert_manifest_truthful(run)
    raise AssertionError(f"no run finished after {limit} kills at {point}")


@pytest.mark.parametrize("point", ["rename", "manifest"])
def test_killed_at_every_rename_or_manifest_write_each_rerun_completes_byte_identical(work, reference, point):
    """A chain of processes, each SIGKILLed just before the first rename (or manifest write) no earlier process died
    before: over the chain a kill lands before every write of the run, and the last process completes it."""
    n = reference["points"].count(point)
    run = work / f"kill-{point}"
    kills = _kill_chain(work / "recipe.yaml", run, point, limit=3 * n + 5)
    assert len(kills) >= n, (len(kills), n, kills)
    how = assert_same_outputs(run, reference, work)
    print(f"{point}: {len(kills)} kills, before each of the {n} {point}s of an uninterrupted run (and the redone "
          f"ones); every rerun recovered; outputs {how}")


def _progress_index(events: list[dict], stage: str, nth: int) -> int:
    """The 1-based index, among all progress events of the run, of ``stage``'s ``nth`` progress event."""
    k = 0
    for e in events:
        if e["kind"] == "progress":
            k += 1
            if e["stage"] == stage:
                nth -= 1
                if nth == 0:
                    return k
    raise AssertionError(f"no progress event {nth} of {stage}")


@pytest.mark.parametrize("where", ["sft", "dpo", "merge", "convert", "quantize"])
def test_killed_inside_a_stage_the_rerun_finishes_without_redoing_finished_stages(work, reference, where):
    run = work / f"kill-in-{where}"
    if where == "quantize":
        spec = "child:1"  # the parent dies while llama.cpp quantizes in its child
    else:
        # sft: after step 3, the step-2 checkpoint complete (save_steps 2); elsewhere the second event
        spec = f"progress:{_progress_index(reference['events'], where, 3 if where == 'sft' else 2)}"
    p = forge_run(work / "recipe.yaml", run, "--no-push", "--set", KEEP_ALL, env={"FORGE_TEST_KILL_AT": spec})
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    assert_manifest_truthful(run)
    before = json.loads((run / "manifest.json").read_text())["stages"]
    p = forge_run(work / "recipe.yaml", run, "--no-push", "--set", KEEP_ALL)
    assert p.returncode == 0, p.stderr[-2000:]
    st = statuses(p)
    names = {"train-sft": "sft", "train-dpo": "dpo"}
    for stage in before:
        assert st[names.get(stage, stage.split("-")[0])] == "cached", (stage, st)
    assert st[where] == "ran", st
    if where in ("sft", "dpo"):
        if where == "sft":
            assert "resume=sft step 2" in p.stdout  # continued from the interrupted run's checkpoint
        assert_same_outputs(run, reference, work)
    else:
        assert digests(run) == reference["digests"]
    assert not list(run.rglob(".*.partial"))
