"""The TUI (issue 10, minus the arena): each screen's main flow driven with Textual's pilot on tiny fixtures.

- Home lists runs with their state and the models forge pushed to the Ollama stand-in, with lineage;
- Recipe: typed values are validated inline, an invalid recipe is not saved, a valid one is saved as YAML that
  loads back to the same recipe;
- Train: a real (tiny) training run in a worker, quit mid-run (stops cleanly with a checkpoint), reopened and resumed
  to the end, with the loss plot receiving points;
- Export: merge/convert/quantize/Modelfile/gate of that run as a stage list, then the gate's table;
- Push: the name is checked as typed; a push to the stand-in registers the model;
- Eval: the eval report's table.

Core logic the screens show (runlist.py) is tested without a terminal at the top.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from ollama_forge import runlist
from tests.tui_seed import EVAL, seed_runs

pytestmark = pytest.mark.timeout(300)


# ---------------------------------------------------------------------------------------------------------------
# runlist: what the screens show, without a terminal
# ---------------------------------------------------------------------------------------------------------------

def test_runs_are_listed_with_state_base_and_last_metric(tmp_path):
    seed_runs(tmp_path / "runs")
    runs = {r.name: r for r in runlist.list_runs(tmp_path / "runs")}
    assert list(runs) == ["alpha", "beta", "gamma"]
    assert runs["alpha"].state == "evaluated"
    assert runs["alpha"].last_metric == "ROUGE-L 64% (tuned)"
    assert runs["alpha"].base_model == "Qwen/Qwen2.5-0.5B-Instruct"
    assert runs["beta"].state == "stopped at step 20"
    assert runs["beta"].last_metric.startswith("loss ") and runs["beta"].last_metric.endswith("@ step 20")
    assert runs["gamma"].state == "new" and runs["gamma"].last_metric == "-"
    assert runlist.list_runs(tmp_path / "missing") == []


def test_recipe_form_covers_every_key_and_round_trips():
    from ollama_forge import recipe as recipes

    keys = {f.key for f in runlist.recipe_fields()}
    documented = {line.split("`")[1] for line in recipes.reference().splitlines() if line.startswith("- `")}
    assert keys == documented  # every key of the recipe reference has a field
    r = recipes.Recipe(base_model="m", dpo=recipes.DPOConfig(data=["p.jsonl"], beta=0.2))
    r.train.target_modules = ["q_proj", "v_proj"]
    r.ollama.parameters = {"temperature": 0.7}
    values = runlist.form_values(r)
    assert runlist.recipe_from_form(values, dpo=True) == r
    assert runlist.recipe_from_form(values, dpo=False).dpo is None
    spec = {f.key: f for f in runlist.recipe_fields()}
    assert runlist.check_value(spec["train.rank"], "sixteen").startswith("train.rank: expected an integer, got "
                                                                          "'sixteen'")
    assert "not one of lora, qlora" in runlist.check_value(spec["train.method"], "full")
    assert runlist.parse_value(spec["data.train"], "a.jsonl, b.jsonl") == ["a.jsonl", "b.jsonl"]
    assert runlist.parse_value(spec["data.eval"], "") is None


def test_eval_and_fidelity_tables(tmp_path):
    seed_runs(tmp_path / "runs")
    t = runlist.eval_table(EVAL)
    assert [r[0] for r in t.rows] == ["base", "tuned"]
    assert t.rows[1][5] == "64% [54%, 74%]" and t.rows[1][2] == "4.12"
    assert any("+43.0 pts" in n and "(primary)" in n for n in t.notes)
    f = runlist.fidelity_table(runlist.load_fidelity(tmp_path / "runs" / "alpha"))
    assert f.title.startswith("fidelity gate PASSED") and [r[-1] for r in f.rows] == ["pass"] * 3


def test_train_status_folds_training_events():
    from tests.tui_seed import train_events

    st = runlist.TrainStatus()
    for ev in train_events():
        st.apply(ev)
    assert (st.state, st.stage, st.step, st.total, st.device) == ("running", "sft", 30, 40, "cpu")
    assert [s for s, _ in st.loss["sft"]] == [5, 10, 15, 20, 25, 30] and len(st.eval_loss["sft"]) == 1
    assert "step 30/40" in st.line() and "ETA 0:15" in st.line() and "1500 tok/s" in st.line()


# ---------------------------------------------------------------------------------------------------------------
# pilot helpers
# ---------------------------------------------------------------------------------------------------------------

async def until(pilot, condition, timeout: float = 120.0, what: str = "") -> None:
    """Let the app run until ``condition()`` holds (stages run in workers; the UI never blocks)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not condition():
        if loop.time() > end:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what or condition}")
        # not pilot.pause(): it waits for every message queue to drain, which a busy stage may keep full
        await asyncio.sleep(0.05)
    if pilot.app.return_code is None:
        await pilot.pause()


def row(table, i: int) -> list[str]:
    return [str(c) for c in table.get_row_at(i)]


def app_for(tmp_path, **kw):
    from ollama_forge.tui.app import ForgeApp

    return ForgeApp(runs_root=tmp_path / "runs", **kw)


# ---------------------------------------------------------------------------------------------------------------
# Home
# ---------------------------------------------------------------------------------------------------------------

def test_home_lists_runs_and_the_models_forge_pushed(tmp_path, run_dir, url, monkeypatch):
    from ollama_forge import ollama
    from textual.widgets import DataTable

    monkeypatch.chdir(tmp_path)
    seed_runs(tmp_path / "runs")
    ollama.push("tui-home:latest", ollama.spec_from(run_dir), host=url)

    async def go():
        app = app_for(tmp_path, host=url)
        async with app.run_test(size=(120, 40)) as pilot:
            models = app.screen.query_one("#models", DataTable)
            # The stand-in is shared by the session: other tests may have registered the same model (same digest,
            # so also forge's) under other names. This test's name must be among the rows.
            names = lambda: [row(models, i)[0] for i in range(models.row_count)]  # noqa: E731
            await until(pilot, lambda: "tui-home:latest" in names(), 30, "models")
            runs = app.screen.query_one("#runs", DataTable)
            assert [row(runs, i)[0] for i in range(runs.row_count)] == ["alpha", "beta", "gamma"]
            name, run, quant, fmt, base, _size, _pushed = row(models, names().index("tui-home:latest"))
            assert (name, fmt, run) == ("tui-home:latest", "chatml", "run")
            assert base != "-"  # lineage: the base model the run was trained from
            assert app.run_dir == tmp_path / "runs" / "alpha"
            await pilot.press("down")  # highlighting a run selects it for the other screens
            assert app.run_dir == tmp_path / "runs" / "beta"
            await pilot.press("e")
            assert app.current_mode == "eval"

    asyncio.run(go())


def test_home_arena_entry_asks_for_two_models_and_opens_the_arena(tmp_path, monkeypatch):
    import sys
    import types

    from textual.screen import Screen

    monkeypatch.chdir(tmp_path)
    seed_runs(tmp_path / "runs")
    opened = []

    class FakeArena(Screen):
        def __init__(self, left, right, *, run_dir=None, blind=False, host=None):
            super().__init__()
            opened.append((left, right, run_dir, blind, host))

    monkeypatch.setitem(sys.modules, "ollama_forge.tui.screens.arena", types.SimpleNamespace(ArenaScreen=FakeArena))

    async def go():
        from textual.widgets import Input

        app = app_for(tmp_path, host="127.0.0.1:9")
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: app.run_dir is not None, 10, "runs")
            await pilot.press("a")
            await until(pilot, lambda: app.screen.query("#left"), 5, "dialog")
            left, right = app.screen.query_one("#left", Input), app.screen.query_one("#right", Input)
            assert left.value == "Qwen/Qwen2.5-0.5B-Instruct"  # the selected run's base ...
            assert right.value.endswith("alpha/model-q4_k_m.gguf")  # ... and its tuned GGUF
            right.focus()
            await pilot.press("enter")
            await until(pilot, lambda: opened, 5, "arena")
            assert isinstance(app.screen, FakeArena)

    asyncio.run(go())
    assert opened[0][0] == "Qwen/Qwen2.5-0.5B-Instruct" and opened[0][2] == tmp_path / "runs" / "alpha"
    assert opened[0][3] is False and opened[0][4] == "127.0.0.1:9"


# ---------------------------------------------------------------------------------------------------------------
# Recipe
# ---------------------------------------------------------------------------------------------------------------

def test_recipe_form_validates_inline_and_saves_yaml(tmp_path, monkeypatch):
    from ollama_forge import recipe as recipes
    from textual.widgets import Input, Static

    monkeypatch.chdir(tmp_path)
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi"},
                                             {"role": "assistant", "content": "Hello!"}]}) + "\n")

    async def go():
        app = app_for(tmp_path)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("2")
            screen = app.screen
            await until(pilot, lambda: screen.is_mounted and screen.loaded_version >= 0, 10, "form")

            async def type_into(key: str, text: str, keys: bool = False) -> None:
                """Keys for short values (as a person types), else the value set whole (same Changed event)."""
                field = screen.query_one(f"#f-{key.replace('.', '-')}", Input)
                field.focus()
                field.value = "" if keys else text
                if keys:
                    await pilot.press(*text)
                await pilot.pause()

            await type_into("base_model", "Qwen/Qwen2.5-0.5B")
            await type_into("data.train", "train.jsonl")
            await type_into("train.rank", "x", keys=True)
            err = screen.query_one("#err-f-train-rank", Static)
            assert "train.rank: expected an integer, got 'x'" in str(err.content)
            assert "✗" in str(screen.query_one("#recipe-status", Static).content)
            await pilot.press("ctrl+s")  # refused: nothing saved while the form is invalid
            assert not list(tmp_path.glob("*.yaml"))
            await type_into("train.rank", "8", keys=True)
            await type_into("train.alpha", "0")  # type-checks, but the recipe refuses it
            assert "train.alpha: must be positive" in str(screen.query_one("#err-f-train-alpha", Static).content)
            await type_into("train.alpha", "16")
            await type_into("ollama.model", "my model")  # Ollama's name rules, checked as typed
            assert "not a valid Ollama name" in str(screen.query_one("#err-f-ollama-model", Static).content)
            await type_into("ollama.model", "my-model:v1")
            assert "valid" in str(screen.query_one("#recipe-status", Static).content)
            await until(pilot, lambda: "1 valid" in str(screen.query_one("#data-preview", Static).content), 20,
                        "data preview")
            assert "format: messages" in str(screen.query_one("#data-preview", Static).content)
            await pilot.press("ctrl+s")
            await until(pilot, lambda: app.screen.query("#path"), 5, "save dialog")
            path = app.screen.query_one("#path", Input)
            path.value = "my.yaml"
            await pilot.press("enter")
            await until(pilot, lambda: (tmp_path / "my.yaml").is_file(), 5, "saved file")
            assert app.recipe_path == Path("my.yaml").resolve() or app.recipe_path == Path("my.yaml")

    asyncio.run(go())
    saved = recipes.load(tmp_path / "my.yaml")
    assert (saved.base_model, saved.data.train, saved.train.rank, saved.train.alpha, saved.ollama.model) == \
        ("Qwen/Qwen2.5-0.5B", ["train.jsonl"], 8, 16, "my-model:v1")
    assert saved.train.learning_rate == recipes.TrainConfig().learning_rate  # untouched keys keep their defaults
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_recipe_loads_a_file_and_reports_a_broken_one(tmp_path, monkeypatch):
    from textual.widgets import Input, Static

    monkeypatch.chdir(tmp_path)
    (tmp_path / "good.yaml").write_text("base_model: org/model\ntrain:\n  rank: 4\n")
    (tmp_path / "bad.yaml").write_text("base_model: org/model\ntrain:\n  rnak: 4\n")

    async def go():
        app = app_for(tmp_path)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("2", "ctrl+o")
            await until(pilot, lambda: app.screen.query("#path"), 5, "open dialog")
            app.screen.query_one("#path", Input).value = "bad.yaml"
            await pilot.press("enter")
            await pilot.pause(0.2)
            status = str(app.screen.query_one("#recipe-status", Static).content)
            assert "unknown key 'rnak'" in status and "did you mean 'rank'" in status
            await pilot.press("ctrl+o")
            await until(pilot, lambda: app.screen.query("#path"), 5, "open dialog")
            app.screen.query_one("#path", Input).value = "good.yaml"
            await pilot.press("enter")
            await pilot.pause(0.2)
            assert app.screen.query_one("#f-train-rank", Input).value == "4"
            assert app.screen.query_one("#f-base_model", Input).value == "org/model"

    asyncio.run(go())


# ---------------------------------------------------------------------------------------------------------------
# Train (a real tiny run), then Export of what it made
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tui_training(tiny_model, tmp_path_factory):
    """Train through the TUI: start, quit mid-run (the stage stops with a checkpoint and the app exits), reopen,
    resume to the end. Returns what was observed on the way."""
    import torch

    from ollama_forge import recipe as recipes
    from tests.train_helpers import chat_records

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("tui-train")
    data = root / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in chat_records(per_class=3)))
    recipe = recipes.from_dict({
        "base_model": str(tiny_model("qwen2")), "chat_format": "chatml",
        "data": {"train": [str(data)], "eval_split": 0.25},
        "train": {"max_steps": 12, "learning_rate": 5e-3, "rank": 4, "alpha": 8, "batch_size": 2, "grad_accum": 1,
                  "save_steps": 1, "eval_steps": 2, "logging_steps": 1, "warmup_ratio": 0.0, "seed": 1},
        "export": {"keep": ["adapter", "quantized", "f16"]},
        "eval": {"compare_base": False},
    })
    path = root / "tiny.yaml"
    from ollama_forge.runlist import save_recipe

    save_recipe(recipe, path)
    seen: dict = {}

    import threading

    from ollama_forge.tui.screens.train import TrainScreen

    # The tiny model trains faster than a test can press a key, so the trainer is held (inside its step-2 progress
    # event, on the worker thread) until ctrl+q was pressed: the quit then lands mid-run on every machine.
    at_step_2, go_on = threading.Event(), threading.Event()
    original_post = TrainScreen.post_message

    def post_message(self, message):
        ev = getattr(message, "event", None)
        if ev is not None and ev.kind == "progress" and ev.data.get("step") == 2 and not go_on.is_set():
            result = original_post(self, message)
            at_step_2.set()
            go_on.wait(60)
            return result
        return original_post(self, message)

    async def first(app_cls):
        app = app_cls(runs_root=root / "runs", recipe_path=path)
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.press("3")
            screen = app.screen
            seen["target"] = str(screen.query_one("#train-target").content)
            await pilot.press("s")
            await until(pilot, lambda: at_step_2.is_set() or screen.status.state == "failed", 180, "step 2")
            await until(pilot, lambda: screen.status.step >= 2 or screen.status.state == "failed", 10, "step 2 shown")
            assert screen.status.state == "running", screen.status.message
            seen["step_at_quit"] = screen.status.step
            seen["device"] = screen.status.device
            await pilot.press("ctrl+q")  # quits mid-run: the stage stops cleanly first
            go_on.set()
            await until(pilot, lambda: app.return_code is not None, 120, "the app to exit")
            seen["stopped_state"] = screen.status.state

    async def second(app_cls):
        app = app_cls(runs_root=root / "runs", recipe_path=path)
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.press("3")
            screen = app.screen
            seen["resume_message"] = screen.status.message
            await pilot.press("s")
            await until(pilot, lambda: not app.job_running("train") and screen.status.state in ("done", "failed"),
                        180, "training to finish")
            seen["final"] = (screen.status.state, screen.status.message, screen.status.step, screen.status.total)
            from ollama_forge.tui.widgets.lossplot import LossPlot

            plot = screen.query_one(LossPlot)
            seen["plot"] = (len(plot.loss.get("sft", [])), len(plot.eval_loss.get("sft", [])))
            seen["log"] = "\n".join(str(line.text) for line in screen.query_one("#train-log").lines)
            seen["status_line"] = screen.status.line()

    from ollama_forge.tui.app import ForgeApp

    TrainScreen.post_message = post_message
    try:
        asyncio.run(first(ForgeApp))
    finally:
        TrainScreen.post_message = original_post
        go_on.set()
    run = root / "runs" / "tiny"
    seen["checkpoints_after_quit"] = runlist.checkpoint_steps(run)
    seen["adapter_after_quit"] = (run / "adapter" / "adapter_config.json").is_file()
    asyncio.run(second(ForgeApp))
    seen["run"] = run
    return seen


def test_train_quit_mid_run_stops_cleanly_then_resumes_with_the_loss_plot(tui_training):
    s = tui_training
    assert "runs/tiny" in s["target"] and "max_steps 12" in s["target"]
    assert s["device"] == "cpu"
    assert s["stopped_state"] == "stopped", s  # quitting asked the stage to stop; it did, with a checkpoint
    assert s["step_at_quit"] == 2 and s["checkpoints_after_quit"][-1] == 2  # stopped right after step 2, saved
    assert not s["adapter_after_quit"]
    assert "s resumes" in s["resume_message"]
    state, message, step, total = s["final"]
    assert (state, step, total) == ("done", 12, 12), message
    assert "resumed from step" in message
    points, eval_points = s["plot"]
    assert points >= 12 - s["checkpoints_after_quit"][-1] and eval_points >= 1  # the plot got the resumed steps
    assert "[sft]" in s["log"] and "loss=" in s["log"]
    assert (s["run"] / "adapter" / "adapter_config.json").is_file()


def test_export_runs_the_stages_and_shows_the_gate(tui_training, tmp_path):
    from textual.widgets import DataTable

    from ollama_forge.tui.widgets.stagelist import StageList

    run = shutil.copytree(tui_training["run"], tmp_path / "runs" / "tiny")

    async def go():
        app = app_for(tmp_path, run_dir=run)
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.press("4")
            screen = app.screen
            await pilot.press("s")
            await until(pilot, lambda: "export" in app.jobs, 5, "export to start")
            await until(pilot, lambda: not app.job_running("export"), 240, "export to finish")
            await pilot.pause(0.2)
            states = {r.name: r.state for r in screen.board.rows}
            sizes = {r.name: r.bytes for r in screen.board.rows}
            rows = screen.query_one(StageList).row_count
            fid = screen.query_one("#fidelity", DataTable)
            hops = [row(fid, i)[0] for i in range(fid.row_count)]
            title = str(screen.query_one("#fidelity-title").content)
            artifacts = str(screen.query_one("#sizes").content)
            return states, sizes, rows, hops, title, artifacts

    states, sizes, rows, hops, title, artifacts = asyncio.run(go())
    assert rows == 5
    assert states == {"merge": "skipped", "convert": "ran", "quantize": "ran", "modelfile": "ran", "gate": "ran"}
    assert sizes["convert"] > 0 and sizes["quantize"] > 0
    assert hops[0] == "adapter -> merged" and len(hops) >= 3
    assert title.startswith("fidelity gate ")
    assert "model-q4_k_m.gguf" in artifacts and "Modelfile" in artifacts
    assert (run / "model-q4_k_m.gguf").is_file() and (run / "Modelfile").is_file()


# ---------------------------------------------------------------------------------------------------------------
# Push, Eval
# ---------------------------------------------------------------------------------------------------------------

def test_push_checks_the_name_as_typed_and_registers_with_the_standin(tmp_path, run_dir, url, monkeypatch):
    from textual.widgets import Input, Static

    from ollama_forge import ollama

    monkeypatch.chdir(tmp_path)

    async def go():
        app = app_for(tmp_path, host=url, run_dir=run_dir)
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.press("5")
            screen = app.screen
            status = screen.query_one("#ollama-status", Static)
            await until(pilot, lambda: "reachable" in str(status.content), 20, "Ollama status")
            assert "✓ reachable" in str(status.content) and url.split("//")[1] in str(status.content)
            name = screen.query_one("#name", Input)
            name.focus()
            name.value = ""
            await pilot.press(*"bad name")
            assert "✗" in str(screen.query_one("#name-error", Static).content)
            await pilot.press("ctrl+r")  # refused while the name is invalid
            assert not app.job_running("push")
            name.value = ""
            await pilot.press(*"tui-push:v1")
            assert "✓ valid" in str(screen.query_one("#name-error", Static).content)
            await pilot.press("enter")
            await until(pilot, lambda: "push" in app.jobs, 5, "push to start")
            await until(pilot, lambda: not app.job_running("push"), 60, "push to finish")
            await pilot.pause(0.1)
            return str(screen.query_one("#push-result", Static).content)

    result = asyncio.run(go())
    assert result.startswith("✓ tui-push:v1") and "created" in result
    models = ollama.forge_models(host=url)
    assert "tui-push:v1" in [m["name"] for m in models]
    assert (run_dir / "lineage.json").is_file()


def test_eval_screen_shows_the_report_table(tmp_path, monkeypatch):
    from textual.widgets import DataTable, Static

    monkeypatch.chdir(tmp_path)
    seed_runs(tmp_path / "runs")

    async def go():
        app = app_for(tmp_path, host="127.0.0.1:9", run_dir=tmp_path / "runs" / "alpha")
        async with app.run_test(size=(120, 30)) as pilot:
            await pilot.press("6")
            table = app.screen.query_one("#eval-table", DataTable)
            rows = [row(table, i) for i in range(table.row_count)]
            head = [str(c.label) for c in table.columns.values()]
            notes = str(app.screen.query_one("#eval-notes", Static).content)
            app.select_run(tmp_path / "runs" / "gamma")
            await pilot.press("1", "6")  # shown again for another run: reloaded
            empty = str(app.screen.query_one("#eval-title", Static).content)
            return rows, head, notes, empty

    rows, head, notes, empty = asyncio.run(go())
    assert head[:6] == ["model", "n", "ppl", "exact", "contains", "ROUGE-L"]
    assert [r[0] for r in rows] == ["base", "tuned"] and rows[1][5] == "64% [54%, 74%]"
    assert "tuned vs base: ROUGE-L +43.0 pts" in notes
    assert "no eval report yet" in empty


def test_quit_waits_for_a_running_job_to_stop(tmp_path):
    """ctrl+q with a stage running sets its stop flag and exits once the worker returned (never mid-write)."""
    import threading

    finished = threading.Event()

    async def go():
        app = app_for(tmp_path)
        async with app.run_test(size=(80, 24)) as pilot:
            screen = app.screen

            def work(sink, should_stop):
                while not should_stop():
                    threading.Event().wait(0.01)
                threading.Event().wait(0.2)  # the stage's own clean-up (a checkpoint) takes a moment
                finished.set()
                return "stopped"

            screen.start_job("slow", work)
            await until(pilot, lambda: app.job_running("slow"), 5, "job")
            await pilot.press("ctrl+q")
            await until(pilot, lambda: app.return_code is not None, 10, "exit")
            assert finished.is_set()  # the app exited only after the job returned

    asyncio.run(go())


def test_forge_tui_is_a_subcommand_and_help_stays_light():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "ollama_forge", "tui", "--help"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and "--runs DIR" in r.stdout
    code = ("import sys, ollama_forge.commands.tui, ollama_forge.runlist; "
            "print('textual' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_training_gets_absolute_data_paths(tmp_path, monkeypatch):
    """The run's resolved recipe must find its data from any working directory: the TUI trains with the paths
    typed in the form (relative to where it runs) made absolute; what exists nowhere (a Hub id) is kept."""
    from ollama_forge import recipe as recipes

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.jsonl").write_text("{}\n")
    monkeypatch.chdir(tmp_path)
    r = recipes.Recipe(base_model="m")
    r.data.train = ["d/a.jsonl", "org/hub-set"]
    out = runlist.with_absolute_paths(r)
    assert out.data.train == [str(tmp_path / "d" / "a.jsonl"), "org/hub-set"]
    assert r.data.train == ["d/a.jsonl", "org/hub-set"]  # the form's recipe is left as typed


def test_command_palette_reaches_screens_and_screen_actions(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    seed_runs(tmp_path / "runs")

    async def go():
        from ollama_forge.tui.screens.help import HelpScreen

        app = app_for(tmp_path, host="127.0.0.1:9")
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: app.run_dir is not None, 10, "runs")

            async def palette(text: str) -> None:
                await pilot.press("ctrl+p")
                await pilot.pause(0.2)
                await pilot.press(*text)
                await pilot.pause(0.5)
                await pilot.press("enter")
                await pilot.pause(0.3)

            await palette("Export")
            assert app.current_mode == "export"
            await palette("Home")
            assert app.current_mode == "home"
            await palette("New recipe")  # a screen's own entry (Home's)
            assert app.current_mode == "recipe"
            await palette("Help")
            assert isinstance(app.screen, HelpScreen)

    asyncio.run(go())


def test_forge_tui_arena_opens_the_arena_at_start(tmp_path, monkeypatch):
    """`forge tui --arena LEFT RIGHT --run DIR [--blind]` starts on the arena, over Home."""
    import argparse
    import sys
    import types

    from textual.screen import Screen

    from ollama_forge.commands import tui as tui_cmd

    p = argparse.ArgumentParser()
    tui_cmd.add_arguments(p)
    args = p.parse_args(["--arena", "a.gguf", "b:latest", "--run", "runs/x", "--blind"])
    assert (args.arena, args.run, args.blind) == (["a.gguf", "b:latest"], "runs/x", True)
    opened = []

    class FakeArena(Screen):
        def __init__(self, left, right, *, run_dir=None, blind=False, host=None):
            super().__init__()
            opened.append((left, right, run_dir, blind))

    monkeypatch.setitem(sys.modules, "ollama_forge.tui.screens.arena", types.SimpleNamespace(ArenaScreen=FakeArena))

    async def go():
        app = app_for(tmp_path, run_dir=tmp_path / "r", arena=("a.gguf", "b:latest", True))
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: opened, 5, "arena")
            assert isinstance(app.screen, FakeArena)

    asyncio.run(go())
    assert opened == [("a.gguf", "b:latest", tmp_path / "r", True)]
