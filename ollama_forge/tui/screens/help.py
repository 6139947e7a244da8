"""Help: the flow, and every key of every screen (read from the screens' bindings, so it cannot go stale)."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Footer, Static

FLOW = ("recipe (2) → train (3) → export (4) → push (5) → eval (6); Home (1) lists runs and the models forge "
        "registered. Every stage runs in the background: switch screens while it works. Quitting (ctrl+q) stops "
        "a running stage cleanly first (training saves a checkpoint; s on Train resumes it).")


def _keys(bindings: list, shown_only: bool = False) -> list[tuple[str, str]]:
    out = []
    for b in bindings:
        if isinstance(b, Binding) and b.description and (b.show or not shown_only):
            out.append((b.key.replace("question_mark", "?").replace(",", " / "), b.description))
    return out


class HelpScreen(ModalScreen):
    BINDINGS = [Binding("escape,q,f1,question_mark", "close", "Close")]

    def __init__(self, mode: str = "") -> None:
        super().__init__()
        self.mode = mode

    def compose(self) -> ComposeResult:
        from ..app import ForgeApp
        from ..widgets.navbar import SCREENS

        t = Text()
        t.append("forge: keys\n", style="bold")
        t.append(FLOW + "\n\n")
        t.append("everywhere\n", style="bold underline")
        rows = [("1 … 6", "switch screen (Home Recipe Train Export Push Eval)"),
                ("ctrl+p", "command palette: every action by name"), ("a (Home)", "arena: two models side by side"),
                ("tab / shift+tab", "next / previous field"), ("escape", "leave a text field (then keys work)")]
        rows += _keys(ForgeApp.BINDINGS, shown_only=True)
        for k, d in rows:
            t.append(f"  {k:<18}", style="bold cyan")
            t.append(d + "\n")
        for key, mode, label in SCREENS:
            screen = ForgeApp.MODES[mode]
            keys = _keys(getattr(screen, "BINDINGS", []))
            t.append(f"\n{key} {label}", style="bold underline" + (" reverse" if mode == self.mode else ""))
            t.append(f"  {screen.SUMMARY}\n", style="dim")
            for k, d in keys:
                t.append(f"  {k:<18}", style="bold cyan")
                t.append(d + "\n")
        with VerticalScroll(classes="dialog dialog-tall", id="help"):
            yield Static(t)
        yield Footer()

    def action_close(self) -> None:
        self.dismiss(None)
