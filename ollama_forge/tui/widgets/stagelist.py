"""A list of pipeline stages with their state, time, size and progress (from a ``runlist.StageBoard``)."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import DataTable

from ...runlist import StageBoard, human_bytes

STYLES = {"running": "bold yellow", "ran": "green", "cached": "cyan", "skipped": "dim", "failed": "bold red",
          "stopped": "magenta", "waiting": "dim"}
MARKS = {"running": "▶", "ran": "✓", "cached": "≡", "skipped": "–", "failed": "✗", "stopped": "■", "waiting": "·"}


def _bar(done: int, total: int, width: int = 10) -> str:
    if not total:
        return ""
    filled = int(width * min(1.0, done / total))
    return "█" * filled + "░" * (width - filled) + f" {100 * done / total:3.0f}%"


class StageList(DataTable):
    DEFAULT_CSS = """
    StageList {
        height: auto;
        max-height: 12;
    }
    """

    def __init__(self, board: StageBoard, **kw) -> None:
        super().__init__(cursor_type="row", zebra_stripes=False, show_cursor=False, **kw)
        self.board = board

    def on_mount(self) -> None:
        self.add_columns("stage", "state", "time", "size", "progress / note")
        self.redraw()

    def set_board(self, board: StageBoard) -> None:
        self.board = board
        self.redraw()

    def redraw(self) -> None:
        self.clear()
        for r in self.board.rows:
            style = STYLES.get(r.state, "")
            note = _bar(r.done, r.total) if r.state == "running" and r.total else r.message
            self.add_row(Text(r.name), Text(f"{MARKS.get(r.state, ' ')} {r.state}", style=style),
                         Text("-" if r.seconds is None else f"{r.seconds:.1f} s"),
                         Text(human_bytes(r.bytes) if r.bytes else "-"), Text(note, overflow="ellipsis"),
                         key=r.name)
