"""The arena screen driven with Textual's pilot: two real models answer side by side (in-process llama.cpp on two
GGUFs, or the Ollama stand-in), the vote lands in the run's DPO file with the right answer as ``chosen``, blind mode
shuffles the sides with its seed and still credits the right model, the DPO key shows the core's refusal and
progress; snapshots at 80x24 and 160x50 after one round.

The two GGUFs: the untrained tiny qwen2 ("base": greedy garbage until the token limit) and the same model trained
to answer (``trained`` fixture: "Paris." to the capital question, then the end of the turn).
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.ollama_standin import testing

pytest.importorskip("textual")

from textual.app import App  # noqa: E402
from textual.widgets import Input, ProgressBar, Static  # noqa: E402

from ollama_forge.tui.screens.arena import ArenaScreen  # noqa: E402

OPTIONS = {"num_predict": 24}  # the untrained model never stops: keep its answers short


class ArenaTestApp(App):
    """The arena alone, as `forge tui --arena` opens it."""

    def __init__(self, *args, **kwargs):
        super().__init__()
        self._args, self._kwargs = args, kwargs

    def on_mount(self) -> None:
        self.push_screen(ArenaScreen(*self._args, **self._kwargs))


@pytest.fixture
def ggufs(trained, tiny_model, tiny_model_root, tmp_path) -> tuple[Path, Path]:
    """(base.gguf, tuned.gguf): links to the untrained and the trained fixture model, with stable names."""
    base = tmp_path / "base.gguf"
    tuned = tmp_path / "tuned.gguf"
    base.symlink_to(testing.random_gguf(tiny_model_root, tiny_model("qwen2")))
    tuned.symlink_to(trained / "model-f16.gguf")
    return base, tuned


async def wait_for(pilot, cond, timeout: float = 60.0, what: str = "") -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what or cond}")
        await pilot.pause(0.05)


def arena(app) -> ArenaScreen:
    assert isinstance(app.screen, ArenaScreen)
    return app.screen


async def ready(pilot) -> ArenaScreen:
    await wait_for(pilot, lambda: isinstance(pilot.app.screen, ArenaScreen), 10, "the arena screen")
    s = arena(pilot.app)
    await wait_for(pilot, lambda: all(b is not None for b in s.backends) or any(s.load_errors), 60, "models")
    assert not any(s.load_errors), s.load_errors
    return s


async def ask(pilot, prompt: str) -> ArenaScreen:
    """Type the prompt, press Enter, wait until both answers are in."""
    s = arena(pilot.app)
    assert s.query_one("#arena-input", Input).has_focus
    await pilot.press(*prompt)
    await pilot.press("enter")
    await wait_for(pilot, lambda: s.round is not None and all(s.round["finished"].values()), 60, "both answers")
    return s


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def status(s: ArenaScreen) -> str:
    return str(s.query_one("#arena-status", Static).content)


def test_both_panes_stream_and_a_vote_for_a_makes_the_left_answer_chosen(ggufs, tmp_path):
    asyncio.run(_test_both_panes_stream_and_a_vote_for_a_makes_the_left_answer_chosen(ggufs, tmp_path))


async def _test_both_panes_stream_and_a_vote_for_a_makes_the_left_answer_chosen(ggufs, tmp_path):
    base, tuned = ggufs
    run = tmp_path / "run"
    app = ArenaTestApp(str(base), str(tuned), run_dir=run, options=OPTIONS)
    async with app.run_test(size=(100, 30)) as pilot:
        s = await ready(pilot)
        assert s.pane("left").label == "A · base.gguf" and s.pane("right").label == "B · tuned.gguf"
        await ask(pilot, testing.QUESTION)
        left, right = s.pane("left"), s.pane("right")
        assert right.text == testing.ANSWER and right.stats.done_reason == "stop"
        assert left.text and left.text != testing.ANSWER and left.stats.tokens == OPTIONS["num_predict"]
        shown = str(left.query_one(".chatpane--body", Static).content)
        assert shown and all(c >= " " or c in "\n\t" for c in shown)  # control characters shown, not emitted
        assert str(s.query_one("#arena-prompt", Static).content) == f"› {testing.QUESTION}"
        assert not s.query_one("#arena-input", Input).has_focus  # the vote keys reach the screen
        await pilot.press("a")
        await wait_for(pilot, lambda: s.votes == 1, 10, "the vote to be saved")
        assert "pair added" in status(s) and left.has_class("-winner") and not right.has_class("-winner")
        assert s.query_one("#arena-input", Input).has_focus  # ready for the next prompt
        await pilot.press("a")  # typed into the prompt box now: no second vote
        assert s.query_one("#arena-input", Input).value == "a"
        await pilot.press("escape", "a")  # escape lets go of the prompt box; the round already has its vote
        await pilot.pause(0.2)
        assert "this round has its vote" in status(s) and s.votes == 1
    pairs = lines(run / "arena-dpo.jsonl")
    assert pairs == [{"prompt": testing.QUESTION, "chosen": left.text, "rejected": testing.ANSWER}]
    (v,) = lines(run / "votes.jsonl")
    assert v["left"] == {"model": str(base), "answer": left.text}
    assert v["right"] == {"model": str(tuned), "answer": testing.ANSWER}
    assert v["winner"] == "left" and v["winner_model"] == str(base) and v["blind"] is False
    assert v["options"] == {"temperature": 0.0, "seed": 0, "num_predict": OPTIONS["num_predict"]}


def test_blind_mode_hides_names_shuffles_with_its_seed_and_credits_the_right_model(ggufs, tmp_path):
    asyncio.run(_test_blind_mode_hides_names_shuffles_with_its_seed_and_credits_the_right_model(ggufs, tmp_path))


async def _test_blind_mode_hides_names_shuffles_with_its_seed_and_credits_the_right_model(ggufs, tmp_path):
    base, tuned = ggufs
    run = tmp_path / "run"
    app = ArenaTestApp(str(base), str(tuned), run_dir=run, blind=True, seed=1, options=OPTIONS)
    async with app.run_test(size=(100, 30)) as pilot:
        s = await ready(pilot)
        # Round 1: seed 1 swaps the sides, so the tuned model answers on the left, under a hidden name.
        await ask(pilot, testing.QUESTION)
        assert s.pane("left").label == "A · hidden" and s.pane("right").label == "B · hidden"
        assert s.pane("left").text == testing.ANSWER and s.pane("right").text != testing.ANSWER
        await pilot.press("a")
        await wait_for(pilot, lambda: s.votes == 1, 10, "vote 1")
        assert s.pane("left").label == "A · tuned.gguf" and s.pane("right").label == "B · base.gguf"  # revealed
        # Round 2: not swapped; B (right) is the tuned model now.
        await ask(pilot, "Say hello.")
        assert s.pane("left").label == "A · hidden"
        assert s.pane("right").text == "Hello!" and s.pane("left").text != "Hello!"
        await pilot.press("b")
        await wait_for(pilot, lambda: s.votes == 2, 10, "vote 2")
    v1, v2 = lines(run / "votes.jsonl")
    assert (v1["blind"], v1["seed"], v1["round"], v1["swapped"]) == (True, 1, 0, True)
    assert v1["left"]["model"] == str(tuned) and v1["winner"] == "left" and v1["winner_model"] == str(tuned)
    assert (v2["round"], v2["swapped"]) == (1, False)
    assert v2["right"]["model"] == str(tuned) and v2["winner"] == "right" and v2["winner_model"] == str(tuned)
    pairs = lines(run / "arena-dpo.jsonl")
    assert [(p["prompt"], p["chosen"]) for p in pairs] == [(testing.QUESTION, testing.ANSWER),
                                                           ("Say hello.", "Hello!")]
    assert pairs[0]["rejected"] == v1["right"]["answer"] and pairs[1]["rejected"] == v2["left"]["answer"]


def test_arena_against_the_ollama_standin(url, run_dir, ggufs, tmp_path):
    asyncio.run(_test_arena_against_the_ollama_standin(url, run_dir, ggufs, tmp_path))


async def _test_arena_against_the_ollama_standin(url, run_dir, ggufs, tmp_path):
    """Left: a model registered in Ollama (the stand-in answers with llama.cpp); right: a GGUF in-process."""
    from ollama_forge import ollama as forge_ollama

    base, _ = ggufs
    name = f"forge-test-arena-{uuid.uuid4().hex[:8]}:v1"
    forge_ollama.push(name, forge_ollama.spec_from(run_dir), host=url)
    votes_dir = tmp_path / "votes"
    try:
        app = ArenaTestApp(name, str(base), run_dir=votes_dir, host=url, options=OPTIONS)
        async with app.run_test(size=(100, 30)) as pilot:
            s = await ready(pilot)
            assert s.backends[0].name == "ollama" and s.backends[1].name == "llamacpp"
            assert s.pane("left").label == f"A · {name}"
            await ask(pilot, testing.QUESTION)
            assert s.pane("left").text == testing.ANSWER and s.pane("left").stats.backend == "ollama"
            await pilot.press("t")  # a tie: recorded, never a pair
            await wait_for(pilot, lambda: s.votes == 1, 10, "the tie")
            assert "Tie: recorded, never a pair" in status(s)
            await ask(pilot, "Say hello.")
            await pilot.press("a")
            await wait_for(pilot, lambda: s.votes == 2, 10, "the vote")
    finally:
        import ollama

        try:
            ollama.Client(url).delete(name)
        except ollama.ResponseError:
            pass
    tie, win = lines(votes_dir / "votes.jsonl")
    assert tie["winner"] == "tie" and tie["pair"] is False and tie["left"]["model"] == name
    assert win["winner_model"] == name and win["prompt"] == "Say hello."
    pairs = lines(votes_dir / "arena-dpo.jsonl")
    assert len(pairs) == 1 and pairs[0]["chosen"] == win["left"]["answer"] == "Hello!"


def test_dpo_key_refuses_too_few_pairs_then_shows_the_rounds_progress(ggufs, tmp_path, monkeypatch):
    asyncio.run(_test_dpo_key_refuses_too_few_pairs_then_shows_the_rounds_progress(ggufs, tmp_path, monkeypatch))


async def _test_dpo_key_refuses_too_few_pairs_then_shows_the_rounds_progress(ggufs, tmp_path, monkeypatch):
    from ollama_forge import arena
    from ollama_forge.events import emit

    base, tuned = ggufs
    run = tmp_path / "run"
    app = ArenaTestApp(str(base), str(tuned), run_dir=run, options=OPTIONS, min_pairs=2)
    async with app.run_test(size=(100, 30)) as pilot:
        s = await ready(pilot)
        await ask(pilot, testing.QUESTION)
        await pilot.press("b")
        await wait_for(pilot, lambda: s.votes == 1, 10, "the vote")
        await pilot.press("escape", "d")
        await wait_for(pilot, lambda: not s.dpo_running and "DPO round:" in status(s), 10, "the refusal")
        assert "1 voted pair; a DPO round needs at least 2" in status(s)
        assert s.query_one("#arena-status").has_class("-error")

        # With enough pairs the core runs the chain; its events drive the status line and the progress bar.
        arena.record_vote(run, arena.Vote("Say hello.", "x", "y", "Hello!", "Bye.", "left"))
        half, release = threading.Event(), threading.Event()
        calls = []

        def fake_dpo_from_votes(run_dir, *, min_pairs, sink, host, should_stop):
            calls.append((run_dir, min_pairs, arena.count_pairs(run_dir)))
            emit(sink, "stage", "dpo", "DPO on 2 pairs")
            emit(sink, "progress", "dpo", "", step=3, total=10)
            half.set()
            release.wait(10)
            emit(sink, "progress", "dpo", "", step=10, total=10)
            return "done"

        monkeypatch.setattr(arena, "dpo_from_votes", fake_dpo_from_votes)
        await pilot.press("d")
        await wait_for(pilot, lambda: half.is_set() and "3/10" in status(s), 10, "progress")
        bar = s.query_one("#arena-progress", ProgressBar)
        assert bar.display and bar.total == 10 and bar.progress == 3
        await pilot.press("d")
        await pilot.pause(0.1)
        assert "already running" in status(s)
        release.set()
        await wait_for(pilot, lambda: not s.dpo_running, 10, "the end of the round")
        assert "DPO round finished" in status(s) and not bar.display
        assert calls == [(run, 2, 2)]
        await wait_for(pilot, lambda: all(b is not None for b in s.backends), 60, "the models to reload")


# --- snapshots --------------------------------------------------------------------------------------------------

@pytest.fixture
def twins(trained, tmp_path) -> tuple[Path, Path]:
    """The trained model under two names: greedy answers that are the same on every machine."""
    a, b = tmp_path / "left.gguf", tmp_path / "right.gguf"
    a.symlink_to(trained / "model-f16.gguf")
    b.symlink_to(trained / "model-f16.gguf")
    return a, b


async def one_round(pilot) -> None:
    s = await ready(pilot)
    await ask(pilot, testing.QUESTION)
    await pilot.press("t")
    await wait_for(pilot, lambda: s.votes == 1, 10, "the vote")
    for side in ("left", "right"):  # tokens per second vary from run to run: mask them
        pane = s.pane(side)
        pane.set_subtitle(re.sub(r"\d+ tok/s", "N tok/s", str(pane.border_subtitle)))
    from textual.widgets import Input

    for w in pilot.app.screen.query(Input):
        w.cursor_blink = False  # a blinking cursor is drawn or not depending on when the frame is taken
    await pilot.pause(0.1)


@pytest.mark.parametrize("size", [(80, 24), (160, 50)], ids=["80x24", "160x50"])
def test_snapshot_after_one_round(snap_compare, twins, tmp_path, size):
    a, b = twins
    app = ArenaTestApp(str(a), str(b), run_dir=tmp_path / "run", options=OPTIONS)
    assert snap_compare(app, terminal_size=size, run_before=one_round)


# --- a real DPO round from the votes ----------------------------------------------------------------------------

@pytest.mark.slow
def test_dpo_key_runs_a_real_round_from_the_votes_and_pushes_after_the_gate(ggufs, tmp_path, tiny_model):
    """A run trained up to SFT (no dpo section); two A/B votes; `d` sets dpo.data to the arena pairs and runs the
    chain from DPO: the status follows the stages, and the model is registered only after the fidelity gate."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        asyncio.run(_real_dpo_round(ggufs, tmp_path, tiny_model))
    finally:
        torch.set_num_threads(threads)


async def _real_dpo_round(ggufs, tmp_path, tiny_model):
    import ollama

    from ollama_forge import recipe as recipes
    from ollama_forge.pipeline import run_pipeline
    from tests.pipeline_helpers import small_recipe

    base, tuned = ggufs
    name = f"forge-arena-{uuid.uuid4().hex[:8]}:latest"
    recipe_path = small_recipe(tmp_path / "work", tiny_model("qwen2"), dpo=None, ollama={"model": name})
    run = tmp_path / "work" / "run"
    first = run_pipeline(recipes.load(recipe_path), run, until_stage="sft", push=False)
    assert first.ran() == ["data", "sft"]
    url = testing.standin().url
    app = ArenaTestApp(str(base), str(tuned), run_dir=run, host=url, options=OPTIONS, min_pairs=2)
    try:
        async with app.run_test(size=(100, 30)) as pilot:
            s = await ready(pilot)
            for prompt, answer in [(testing.QUESTION, testing.ANSWER), ("Say hello.", "Hello!")]:
                await ask(pilot, prompt)
                assert s.pane("right").text == answer
                await pilot.press("b")
                await wait_for(pilot, lambda: s.round["voted"] and "pair added" in status(s), 10, "the vote")
            seen: list[str] = []
            set_status = s._set_status
            s._set_status = lambda text, error=False: (seen.append(text), set_status(text, error))
            await pilot.press("escape", "d")
            await wait_for(pilot, lambda: s.dpo_running is False and any("DPO round" in x for x in seen[1:]), 240,
                           "the DPO round")
            assert status(s) == f"DPO round finished: fidelity gate passed, pushed {name}; reloading the models", \
                seen[-12:]
            assert any(x.startswith("dpo:") and "/" in x for x in seen), seen  # training progress was shown
            assert any(x.startswith("gate:") for x in seen), seen
            await wait_for(pilot, lambda: all(b is not None for b in s.backends), 60, "the models to reload")
        saved = recipes.load(run / "recipe.resolved.yaml")
        assert saved.dpo.data == [str((run / "arena-dpo.jsonl").resolve())]
        assert ollama.Client(url).show(name).modelfile
    finally:
        try:
            ollama.Client(url).delete(name)
        except ollama.ResponseError:
            pass


def test_control_characters_are_shown_as_symbols_and_kept_in_the_answer():
    from ollama_forge.tui.widgets.chatpane import visible

    assert visible("a\x01b\nc\td\x1b[31m\x7f\x85") == "a\u2401b\nc\td\u241b[31m\u2421\ufffd"
