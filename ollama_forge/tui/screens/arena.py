"""The arena: two models answer the same prompt side by side; your votes become DPO pairs.

Keys (shown in the footer): type a prompt and Enter; when both answers are in, ``a`` (A is better), ``b`` (B is
better) or ``t`` (tie); ``n`` asks another prompt without voting; ``d`` starts a DPO round from the votes; ``escape``
leaves. Blind mode hides which model is which and shuffles the sides every round with a seeded RNG (the seed and
round are saved with the vote); the names are revealed after the vote.

Everything slow runs in thread workers (loading the models, both answers streamed at once, saving a vote, the DPO
round) and reaches the screen as messages, so the UI never waits. The record itself is ``ollama_forge.arena``.

``python -m ollama_forge.tui.screens.arena LEFT RIGHT [--run DIR] [--blind] [--host H]`` opens this screen alone.
"""

from __future__ import annotations

import random
import secrets
import threading
from pathlib import Path
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Input, ProgressBar, Static

from ...errors import ForgeError
from ...events import Event
from ..widgets.chatpane import ChatPane

# Both models decode alike: greedy (temperature 0), one seed, one length limit. Saved with every vote.
DEFAULT_OPTIONS: dict[str, Any] = {"temperature": 0.0, "seed": 0, "num_predict": 512}
SIDES = ("left", "right")
SIDE_NAME = {"left": "A", "right": "B"}


def model_id(ref: str) -> str:
    """What a vote records for a model: a local file or directory as an absolute path, else the name as given."""
    p = Path(ref).expanduser()
    return str(p.absolute()) if p.exists() else ref


def model_label(ref: str) -> str:
    """Short name of a model reference: a file's or directory's name, else the Ollama name as given."""
    p = Path(ref).expanduser()
    if p.is_file():
        return p.name
    if p.is_dir():
        return p.resolve().name + "/"
    return ref


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


class ArenaScreen(Screen):
    """Two models, one prompt, your vote. See the module docstring."""

    BINDINGS = [
        Binding("a", "vote('left')", "A better"),
        Binding("b", "vote('right')", "B better"),
        Binding("t", "vote('tie')", "Tie"),
        Binding("n", "new_prompt", "Prompt"),
        Binding("d", "dpo", "DPO round"),
        Binding("escape", "leave", "Back"),
    ]

    DEFAULT_CSS = """
    ArenaScreen {
        layout: vertical;
    }
    ArenaScreen #arena-head {
        height: 1;
        padding: 0 1;
        background: $panel;
        color: $text;
    }
    ArenaScreen #arena-prompt {
        height: auto;
        max-height: 3;
        padding: 0 1;
        color: $text;
        text-style: bold;
    }
    ArenaScreen #arena-panes {
        height: 1fr;
    }
    ArenaScreen #arena-status-row {
        height: 1;
        padding: 0 1;
    }
    ArenaScreen #arena-status {
        width: 1fr;
        height: 1;
        color: $text-muted;
    }
    ArenaScreen #arena-status.-error {
        color: $error;
    }
    ArenaScreen #arena-progress {
        width: 36;
        height: 1;
        display: none;
    }
    ArenaScreen #arena-progress.-running {
        display: block;
    }
    ArenaScreen #arena-input {
        margin: 0 0;
    }
    """

    # --- messages from the workers -------------------------------------------------------------------------

    class Loaded(Message):
        def __init__(self, index: int, backend: Any, error: str | None) -> None:
            super().__init__()
            self.index, self.backend, self.error = index, backend, error

    class Piece(Message):
        def __init__(self, round_id: int, side: str, text: str) -> None:
            super().__init__()
            self.round_id, self.side, self.text = round_id, side, text

    class Answered(Message):
        def __init__(self, round_id: int, side: str, stats: Any, error: str | None) -> None:
            super().__init__()
            self.round_id, self.side, self.stats, self.error = round_id, side, stats, error

    class Voted(Message):
        def __init__(self, round_id: int, result: Any, error: str | None) -> None:
            super().__init__()
            self.round_id, self.result, self.error = round_id, result, error

    class Counted(Message):
        def __init__(self, votes: int, pairs: int) -> None:
            super().__init__()
            self.votes, self.pairs = votes, pairs

    class Progress(Message):
        """An event from the core (a DPO round, a backend's choices)."""

        def __init__(self, event: Event) -> None:
            super().__init__()
            self.event = event

    class DpoDone(Message):
        def __init__(self, result: Any, error: str | None) -> None:
            super().__init__()
            self.result, self.error = result, error

    # --- set-up --------------------------------------------------------------------------------------------

    def __init__(self, left: str, right: str, *, run_dir: Path | None = None, blind: bool = False,
                 host: str | None = None, seed: int | None = None, options: dict[str, Any] | None = None,
                 min_pairs: int | None = None, chat_format: str | None = None, system: str | None = None,
                 name: str | None = None, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(name=name, id=id, classes=classes)
        from ... import arena

        self.models = (str(left), str(right))
        self.labels = (model_label(self.models[0]), model_label(self.models[1]))
        self.blind = blind
        self.host = host
        self.chat_format = chat_format
        self.system = system
        self.seed = seed if seed is not None else secrets.randbelow(2 ** 31)
        self.rng = random.Random(self.seed)
        self.options = {**DEFAULT_OPTIONS, **(options or {})}
        self.min_pairs = arena.MIN_PAIRS if min_pairs is None else min_pairs
        self.run_dir, self.run_dir_reason = arena.arena_run_dir(self.models[0], self.models[1], run_dir)
        self.backends: list[Any] = [None, None]
        self.load_errors: list[str | None] = [None, None]
        self.round_id = 0  # rounds started; the current round's id
        self.round: dict[str, Any] | None = None  # id, index, prompt, swapped, finished (per side), voted
        self.pending_prompt: str | None = None  # typed before the models were loaded
        self.votes = 0
        self.pairs = 0
        self.dpo_running = False
        self.stop = threading.Event()

    def compose(self) -> ComposeResult:
        yield Static("", id="arena-head", markup=False)
        yield Static("", id="arena-prompt", markup=False)
        with Horizontal(id="arena-panes"):
            yield ChatPane(self._pane_label("left", reveal=False), id="pane-left")
            yield ChatPane(self._pane_label("right", reveal=False), id="pane-right")
        with Horizontal(id="arena-status-row"):
            yield Static("", id="arena-status", markup=False)
            yield ProgressBar(total=None, show_eta=False, id="arena-progress")
        yield Input(placeholder="Prompt for both models; Enter sends", id="arena-input")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#arena-prompt", Static).display = False
        for side in SIDES:
            self.pane(side).set_status("loading model…")
        self._count_votes()
        self._update_head()
        self._set_status(f"votes go to {self.run_dir.name}/ ({self.run_dir_reason}); loading both models…")
        for i in range(2):
            self._load(i)
        self.query_one("#arena-input", Input).focus()

    def on_unmount(self) -> None:
        self.stop.set()
        self._close_backends()

    def _close_backends(self) -> None:
        backends, self.backends = self.backends, [None, None]
        for b in backends:
            if b is not None:
                try:
                    b.close()  # waits for a generation in flight to see the stop flag (one token at most)
                except Exception:  # noqa: BLE001 - closing is best effort at exit
                    pass

    # --- helpers -------------------------------------------------------------------------------------------

    def pane(self, side: str) -> ChatPane:
        return self.query_one(f"#pane-{side}", ChatPane)

    def _order(self) -> tuple[int, int]:
        """Model index shown on (left, right) this round."""
        return (1, 0) if self.round and self.round["swapped"] else (0, 1)

    def _pane_label(self, side: str, reveal: bool) -> str:
        name = SIDE_NAME[side]
        if self.blind and not reveal:
            return f"{name} · hidden"
        index = self._order()[SIDES.index(side)] if self.round else SIDES.index(side)
        return f"{name} · {self.labels[index]}"

    def _update_head(self) -> None:
        o = self.options
        decoding = ("greedy" if float(o.get("temperature", 0)) == 0 else f"temperature {o['temperature']}") + \
            f", seed {o.get('seed')}, ≤{o.get('num_predict')} tokens"
        parts = [f"Arena · {self.run_dir.name}/", _plural(self.votes, "vote"), _plural(self.pairs, "pair")]
        if self.blind:
            parts.append("blind")  # the seed is saved with each vote, not shown: it would tell the sides apart
        parts.append(decoding)
        self.query_one("#arena-head", Static).update(" · ".join(parts))

    def _set_status(self, text: str, error: bool = False) -> None:
        status = self.query_one("#arena-status", Static)
        status.update(text)
        status.set_class(error, "-error")

    def _sink(self, event: Event) -> None:
        """Core events from worker threads: posted to the screen (thread-safe)."""
        self.post_message(self.Progress(event))

    @work(thread=True, group="arena-count")
    def _count_votes(self) -> None:
        from ... import arena

        try:
            votes = len(arena.read_jsonl(arena.votes_path(self.run_dir))[0])
            pairs = len(arena.read_pairs(self.run_dir))
        except ForgeError as e:
            self.post_message(self.Voted(-1, None, e.one_line()))
            return
        self.post_message(self.Counted(votes, pairs))

    @on(Counted)
    def _counted(self, msg: Counted) -> None:
        self.votes, self.pairs = msg.votes, msg.pairs
        self._update_head()

    # --- loading the models --------------------------------------------------------------------------------

    @work(thread=True, group="arena-load")
    def _load(self, index: int) -> None:
        from ...backends import open_backend

        try:
            backend = open_backend(self.models[index], host=self.host, chat_format=self.chat_format,
                                   system=self.system, sink=self._sink)
        except ForgeError as e:
            self.post_message(self.Loaded(index, None, e.one_line()))
            return
        except Exception as e:  # noqa: BLE001 - shown in the pane; the other model keeps going
            self.post_message(self.Loaded(index, None, f"{type(e).__name__}: {e}"))
            return
        if self.stop.is_set():
            backend.close()
            return
        self.post_message(self.Loaded(index, backend, None))

    @on(Loaded)
    def _loaded(self, msg: Loaded) -> None:
        if self.stop.is_set():
            if msg.backend is not None:
                msg.backend.close()
            return
        self.backends[msg.index] = msg.backend
        self.load_errors[msg.index] = msg.error
        # Before the first round, pane i shows model i.
        side = SIDES[msg.index] if self.round is None else SIDES[self._order().index(msg.index)]
        pane = self.pane(side)
        if msg.error:
            pane.finish(error=f"cannot load {self.labels[msg.index]}: {msg.error}")
            self._set_status(f"{SIDE_NAME[side]}: {msg.error}", error=True)
            return
        if self.round is None:
            pane.set_status("ready: type a prompt below")
        if all(b is not None for b in self.backends):
            if self.pending_prompt is not None:
                prompt, self.pending_prompt = self.pending_prompt, None
                self._start_round(prompt)
            else:
                self._set_status("both models ready: type a prompt and press Enter")

    # --- a round -------------------------------------------------------------------------------------------

    @on(Input.Submitted, "#arena-input")
    def _submitted(self, event: Input.Submitted) -> None:
        prompt = event.value.strip()
        if not prompt:
            return
        if self.round is not None and not all(self.round["finished"].values()):
            self._set_status("both models are still answering: wait for them, then vote", error=True)
            return
        event.input.clear()
        if any(self.load_errors):
            self._set_status("a model failed to load; see its pane", error=True)
            return
        if any(b is None for b in self.backends):
            self.pending_prompt = prompt
            self._show_prompt(prompt)
            self._set_status("the prompt is sent as soon as both models are loaded")
            self.pane("left").focus()
            return
        self._start_round(prompt)

    def _show_prompt(self, prompt: str) -> None:
        shown = self.query_one("#arena-prompt", Static)
        shown.update(f"› {prompt}")
        shown.display = True

    def _start_round(self, prompt: str) -> None:
        self.round_id += 1
        swapped = self.rng.random() < 0.5 if self.blind else False
        self.round = {"id": self.round_id, "index": self.round_id - 1, "prompt": prompt, "swapped": swapped,
                      "finished": {"left": False, "right": False}, "voted": False}
        self._show_prompt(prompt)
        for side in SIDES:
            pane = self.pane(side)
            pane.set_label(self._pane_label(side, reveal=False))
            pane.start()
        self._set_status("both models are answering…")
        self.pane("left").focus()  # the vote keys work once the prompt box lets go
        order = self._order()
        for side, index in zip(SIDES, order):
            self._answer(self.round_id, side, self.backends[index], prompt)

    @work(thread=True, group="arena-answer")
    def _answer(self, round_id: int, side: str, backend: Any, prompt: str) -> None:
        stream = None
        try:
            stream = backend.chat([{"role": "user", "content": prompt}], dict(self.options))
            for piece in stream:
                if self.stop.is_set() or round_id != self.round_id:
                    break
                self.post_message(self.Piece(round_id, side, piece))
            self.post_message(self.Answered(round_id, side, stream.stats, None))
        except ForgeError as e:
            self.post_message(self.Answered(round_id, side, None, e.one_line()))
        except Exception as e:  # noqa: BLE001 - shown in that pane; the other keeps streaming
            self.post_message(self.Answered(round_id, side, None, f"{type(e).__name__}: {e}"))
        finally:
            if stream is not None:
                stream.close()

    @on(Piece)
    def _piece(self, msg: Piece) -> None:
        if msg.round_id == self.round_id:
            self.pane(msg.side).append(msg.text)

    @on(Answered)
    def _answered(self, msg: Answered) -> None:
        if self.round is None or msg.round_id != self.round_id:
            return
        st = msg.stats
        subtitle = (f"{st.tokens} tok · {st.tokens_per_s:.0f} tok/s · {st.done_reason}" if st is not None else "")
        self.pane(msg.side).finish(stats=st, error=msg.error, subtitle=subtitle)
        self.round["finished"][msg.side] = True
        if all(self.round["finished"].values()):
            if any(self.pane(s).error for s in SIDES):
                self._set_status("an answer failed: n for a new prompt", error=True)
            else:
                self._set_status("vote: a = A better · b = B better · t = tie · n = next prompt without voting")

    # --- voting --------------------------------------------------------------------------------------------

    def action_vote(self, winner: str) -> None:
        r = self.round
        if r is None:
            self._set_status("nothing to vote on yet: type a prompt first", error=True)
            return
        if not all(r["finished"].values()):
            self._set_status("wait for both answers before voting", error=True)
            return
        if r["voted"]:
            self._set_status("this round has its vote: type the next prompt (n)", error=True)
            return
        if any(self.pane(s).error for s in SIDES):
            self._set_status("an answer failed; this round cannot be voted on", error=True)
            return
        from ... import arena

        left_i, right_i = self._order()
        vote = arena.Vote(prompt=r["prompt"], left_model=model_id(self.models[left_i]),
                          right_model=model_id(self.models[right_i]),
                          left_answer=self.pane("left").text, right_answer=self.pane("right").text, winner=winner,
                          blind=self.blind, seed=self.seed if self.blind else None, round=r["index"],
                          swapped=r["swapped"], options=dict(self.options))
        r["voted"] = True
        self._save_vote(r["id"], vote)

    @work(thread=True, group="arena-vote")
    def _save_vote(self, round_id: int, vote: Any) -> None:
        from ... import arena

        try:
            result = arena.record_vote(self.run_dir, vote)
        except ForgeError as e:
            self.post_message(self.Voted(round_id, None, e.one_line()))
            return
        except OSError as e:
            self.post_message(self.Voted(round_id, None, f"cannot write the vote: {e}"))
            return
        self.post_message(self.Voted(round_id, (vote, result), None))

    @on(Voted)
    def _voted(self, msg: Voted) -> None:
        if msg.error:
            self._set_status(msg.error, error=True)
            if self.round is not None and msg.round_id == self.round_id:
                self.round["voted"] = False  # not saved: the user may vote again
            return
        vote, result = msg.result
        self.votes, self.pairs = result.votes, result.pairs
        self._update_head()
        if msg.round_id == self.round_id:
            for side in SIDES:
                pane = self.pane(side)
                pane.set_label(self._pane_label(side, reveal=True))
                pane.mark_winner(vote.winner == side)
        verdict = {"left": "A better", "right": "B better", "tie": "Tie"}[vote.winner]
        who = f" ({Path(vote.winner_model).name if vote.winner_model else 'tie'})" if self.blind else ""
        self._set_status(f"{verdict}{who}: {result.why} · next prompt below")
        self.query_one("#arena-input", Input).focus()

    def action_new_prompt(self) -> None:
        self.query_one("#arena-input", Input).focus()

    def action_leave(self) -> None:
        inp = self.query_one("#arena-input", Input)
        if inp.has_focus and self.round is not None:
            self.pane("left").focus()  # escape from the prompt box first: the vote keys work again
            return
        stack = self.app.screen_stack
        if len(stack) > 2 or (len(stack) == 2 and type(stack[0]) is not Screen):
            self.app.pop_screen()
        else:
            self.app.exit()

    # --- a DPO round from the votes ------------------------------------------------------------------------

    def action_dpo(self) -> None:
        if self.dpo_running:
            self._set_status("a DPO round is already running", error=True)
            return
        self.dpo_running = True
        bar = self.query_one("#arena-progress", ProgressBar)
        bar.update(total=None, progress=0)
        bar.add_class("-running")
        self._set_status(f"DPO round: checking the pairs in {self.run_dir.name}/ …")
        self._dpo()

    @work(thread=True, group="arena-dpo", exit_on_error=False)
    def _dpo(self) -> None:
        from ... import arena

        try:
            result = arena.dpo_from_votes(self.run_dir, min_pairs=self.min_pairs, sink=self._sink, host=self.host,
                                          should_stop=self.stop.is_set)
        except ForgeError as e:
            self.post_message(self.DpoDone(None, e.one_line()))
            return
        except Exception as e:  # noqa: BLE001 - one line in the status; the arena stays usable
            self.post_message(self.DpoDone(None, f"{type(e).__name__}: {e}"))
            return
        self.post_message(self.DpoDone(result, None))

    @on(Progress)
    def _progress(self, msg: Progress) -> None:
        e = msg.event
        if e.kind == "progress" and self.dpo_running:
            done = e.data.get("done", e.data.get("step"))
            total = e.data.get("total")
            bar = self.query_one("#arena-progress", ProgressBar)
            if total:
                bar.update(total=total, progress=done or 0)
            self._set_status(f"{e.stage}: {e.message} {done}/{total}".replace("  ", " "))
        elif e.kind in ("stage", "metric", "log") and e.message:
            self._set_status(f"{e.stage}: {e.message}" if e.stage else e.message)

    @on(DpoDone)
    def _dpo_done(self, msg: DpoDone) -> None:
        self.dpo_running = False
        bar = self.query_one("#arena-progress", ProgressBar)
        bar.remove_class("-running")
        if msg.error:
            self._set_status(f"DPO round: {msg.error}", error=True)
            return
        r = msg.result
        if getattr(r, "stopped", None):
            self._set_status(f"DPO round stopped: {r.stopped}")
            return
        passed = getattr(r, "gate_passed", None)
        gate = {True: "fidelity gate passed", False: "fidelity gate FAILED", None: "not gated"}[passed]
        pushed = getattr(r, "pushed", None)
        note = f"pushed {pushed}" if pushed else (getattr(r, "push_note", "") or "not pushed")
        self._set_status(f"DPO round finished: {gate}, {note}; reloading the models", error=passed is False)
        # The run's GGUF (and the model registered from it) changed: answer with the new ones from now on.
        old, self.backends = self.backends, [None, None]
        for side in SIDES:
            self.pane(side).set_status("reloading model…")
        self._reload(old)

    @work(thread=True, group="arena-load")
    def _reload(self, old: list[Any]) -> None:
        for b in old:
            if b is not None:
                try:
                    b.close()  # off the UI thread: it waits for an answer in flight to end
                except Exception:  # noqa: BLE001 - the new load below reports what matters
                    pass
        for i in range(2):
            self._load(i)


# ---------------------------------------------------------------------------------------------------------------
# A minimal app hosting the screen alone (until `forge tui --arena` exists)

def main(argv: list[str] | None = None) -> int:
    import argparse

    from textual.app import App

    p = argparse.ArgumentParser(prog="python -m ollama_forge.tui.screens.arena",
                                description="Open the arena on two models (GGUF, Ollama name or run directory).")
    p.add_argument("left")
    p.add_argument("right")
    p.add_argument("--run", type=Path, help="run directory that receives votes.jsonl and arena-dpo.jsonl")
    p.add_argument("--blind", action="store_true", help="hide which model is which; shuffle sides each round")
    p.add_argument("--host", help="Ollama address")
    p.add_argument("--seed", type=int, help="seed of the blind-mode side shuffle")
    args = p.parse_args(argv)

    class ArenaApp(App):
        TITLE = "forge arena"

        def on_mount(self) -> None:
            self.push_screen(ArenaScreen(args.left, args.right, run_dir=args.run, blind=args.blind,
                                         host=args.host, seed=args.seed))

    ArenaApp().run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
