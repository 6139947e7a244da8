"""Snapshots of every TUI screen at 80x24 (the smallest supported terminal) and 160x50, on seeded runs
(tests/tui_seed.py: fixed names, fixed contents, fixed mtimes, paths shown relative to a fixed working directory).

Update after an intended change with ``pytest tests/test_tui_snapshots.py --snapshot-update``, then look at the SVGs
under tests/__snapshots__/test_tui_snapshots/.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tui_seed import export_events, seed_runs, train_events

SIZES = [pytest.param((80, 24), id="80x24"), pytest.param((160, 50), id="160x50")]
UNREACHABLE = "127.0.0.1:9"  # refused at once: the same "not running" line everywhere

MODELS = [{"name": "alpha-assistant:latest", "digest": "d" * 64, "size": 396_004,
           "modified_at": "2025-01-01T00:00:00Z", "quantization_level": "Q4_K_M", "parameter_size": "494M",
           "pushed_as": "alpha-assistant:latest", "pushed_at": "2025-01-01T00:00:00Z", "run_dir": "runs/alpha",
           "lineage": {"base_model": "Qwen/Qwen2.5-0.5B-Instruct", "chat_format": "chatml", "quant_type": "Q4_K_M"}}]


@pytest.fixture
def seeded(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    seed_runs(Path("runs"))
    return tmp_path


def make_app(**kw):
    from ollama_forge.tui.app import ForgeApp

    kw.setdefault("host", UNREACHABLE)
    kw.setdefault("models_loader", lambda host: MODELS)
    return ForgeApp(runs_root=Path("runs"), **kw)


async def settle(pilot) -> None:
    """Workers done (run lists, Ollama status, previews) and the screen repainted."""
    from textual.widgets import Input, TextArea

    for _ in range(3):
        await pilot.app.workers.wait_for_complete()
        for w in [*pilot.app.screen.query(Input), *pilot.app.screen.query(TextArea)]:
            w.cursor_blink = False  # a blinking cursor is drawn or not depending on when the frame is taken
        await pilot.pause(0.05)


def goto(key: str, then=None):
    async def run_before(pilot) -> None:
        await settle(pilot)
        if key:
            await pilot.press(key)
        await settle(pilot)
        if then is not None:
            await then(pilot)
            await settle(pilot)

    return run_before


@pytest.mark.parametrize("size", SIZES)
def test_home(snap_compare, seeded, size):
    assert snap_compare(make_app(), terminal_size=size, run_before=goto(""))


@pytest.mark.parametrize("size", SIZES)
def test_recipe(snap_compare, seeded, size):
    """The form with a loaded recipe, one field in error (shown on top and under the field)."""
    (seeded / "data").mkdir()
    (seeded / "data" / "train.jsonl").write_text(
        '{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}\n'
        '{"messages": [{"role": "user", "content": "Bye"}]}\n')
    (seeded / "my.yaml").write_text("base_model: Qwen/Qwen2.5-0.5B-Instruct\nchat_format: chatml\n"
                                    "data:\n  train: [data/train.jsonl]\ntrain:\n  max_steps: 40\n")

    async def edit(pilot) -> None:
        screen = pilot.app.screen
        screen.set_value("train.rank", "0")
        field = screen.query_one("#f-data-train")
        field.cursor_blink = False  # a blinking cursor is drawn or not depending on when the frame is taken
        field.focus()

    assert snap_compare(make_app(recipe_path=Path("my.yaml")), terminal_size=size, run_before=goto("2", edit))


@pytest.mark.parametrize("size", SIZES)
def test_train(snap_compare, seeded, size):
    """A run in progress, replayed from fixed events: loss plot (train and eval), progress, ETA, tokens/s, log."""
    async def replay(pilot) -> None:
        from ollama_forge.tui.screens import JobEvent

        screen = pilot.app.screen
        for ev in train_events():
            screen.post_message(JobEvent("train", ev))
        await pilot.pause(0.1)
        screen.flush_plot()  # the plot redraws at most every 0.3 s: draw the last points now

    assert snap_compare(make_app(run_dir=Path("runs/alpha")), terminal_size=size, run_before=goto("3", replay))


@pytest.mark.parametrize("size", SIZES)
def test_export(snap_compare, seeded, size):
    """An export in progress (three stages done, the Modelfile running), with the gate table of the last one."""
    async def replay(pilot) -> None:
        from ollama_forge.tui.screens import JobEvent

        screen = pilot.app.screen
        screen.reset_board()
        for ev in export_events():
            screen.post_message(JobEvent("export", ev))

    assert snap_compare(make_app(run_dir=Path("runs/alpha")), terminal_size=size, run_before=goto("4", replay))


@pytest.mark.parametrize("size", SIZES)
def test_push(snap_compare, seeded, size):
    """Ollama unreachable (said on top), the run's default name, validated."""
    assert snap_compare(make_app(run_dir=Path("runs/alpha")), terminal_size=size, run_before=goto("5"))


@pytest.mark.parametrize("size", SIZES)
def test_eval(snap_compare, seeded, size):
    assert snap_compare(make_app(run_dir=Path("runs/alpha")), terminal_size=size, run_before=goto("6"))


@pytest.mark.parametrize("size", SIZES)
def test_help(snap_compare, seeded, size):
    assert snap_compare(make_app(), terminal_size=size, run_before=goto("f1"))
