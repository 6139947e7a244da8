"""One model's side of a side-by-side chat: its label in the border, the answer as it streams, stats below.

The pane holds text only; whoever drives it (the arena screen) feeds it pieces from a worker's messages. Model
output is shown as plain text (never parsed as markup), wrapped, and kept scrolled to its end while it streams.
"""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Static


# Control characters (a model can emit any byte) would shift the terminal's columns: show them as the Unicode
# "control pictures" (U+2400 block: \x01 -> ␁), C1 controls as U+FFFD. Display only; ``ChatPane.text`` keeps them.
_VISIBLE = {c: 0x2400 + c for c in range(0x20) if chr(c) not in "\n\t"}
_VISIBLE.update({0x7F: 0x2421, **{c: 0xFFFD for c in range(0x80, 0xA0)}})


def visible(text: str) -> str:
    return text.translate(_VISIBLE)


class ChatPane(VerticalScroll):
    """A bordered, scrollable answer. States: idle, loading, waiting (prompt sent), streaming, done, error."""

    DEFAULT_CSS = """
    ChatPane {
        border: round $primary-darken-1;
        border-title-color: $text;
        border-title-style: bold;
        border-subtitle-color: $text-muted;
        padding: 0 1;
        height: 1fr;
        width: 1fr;
    }
    ChatPane:focus-within, ChatPane:focus {
        border: round $accent;
    }
    ChatPane.-winner {
        border: round $success;
    }
    ChatPane.-error {
        border: round $error;
    }
    ChatPane > .chatpane--body {
        width: 1fr;
        height: auto;
    }
    ChatPane > .chatpane--note {
        color: $text-muted;
        text-style: italic;
        width: 1fr;
        height: auto;
    }
    """

    can_focus = True

    def __init__(self, label: str = "", *, id: str | None = None, classes: str | None = None):
        super().__init__(id=id, classes=classes)
        self.label = label
        self.text = ""
        self.state = "idle"
        self.stats: Any = None
        self.error: str | None = None

    def compose(self) -> ComposeResult:
        yield Static("", markup=False, classes="chatpane--note")
        yield Static("", markup=False, classes="chatpane--body")

    def on_mount(self) -> None:
        self.border_title = self.label
        self._note("")

    @property
    def _body(self) -> Static:
        return self.query_one(".chatpane--body", Static)

    def _note(self, text: str) -> None:
        note = self.query_one(".chatpane--note", Static)
        note.update(text)
        note.display = bool(text)

    def set_label(self, label: str) -> None:
        self.label = label
        self.border_title = label

    def set_status(self, text: str) -> None:
        """A muted line above the answer (loading…, waiting…), or none."""
        self._note(text)

    def set_subtitle(self, text: str) -> None:
        self.border_subtitle = text

    def start(self, note: str = "waiting for the first token…") -> None:
        """A new round: clear the answer."""
        self.text = ""
        self.stats = None
        self.error = None
        self.state = "waiting"
        self.remove_class("-winner", "-error")
        self._body.update("")
        self.border_subtitle = ""
        self._note(note)

    def append(self, piece: str) -> None:
        if self.state != "streaming":
            self.state = "streaming"
            self._note("")
        self.text += piece
        self._body.update(visible(self.text))
        self.scroll_end(animate=False)

    def finish(self, stats: Any = None, error: str | None = None, subtitle: str | None = None) -> None:
        self.stats = stats
        self.error = error
        self.state = "error" if error else "done"
        if error:
            self.add_class("-error")
            self._note(error)
        elif not self.text:
            self._note("(empty answer)")
        if subtitle is not None:
            self.border_subtitle = subtitle

    def mark_winner(self, winner: bool) -> None:
        self.set_class(winner, "-winner")
