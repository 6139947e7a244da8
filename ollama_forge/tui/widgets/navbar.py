"""The one-line bar at the top of every screen: the screens by key, the current one marked, running jobs."""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget

SCREENS = [("1", "home", "Home"), ("2", "recipe", "Recipe"), ("3", "train", "Train"), ("4", "export", "Export"),
           ("5", "push", "Push"), ("6", "eval", "Eval")]


class NavBar(Widget):
    DEFAULT_CSS = """
    NavBar {
        height: 1;
        width: 1fr;
        background: $panel;
    }
    """

    def __init__(self, current: str, **kw) -> None:
        super().__init__(**kw)
        self.current = current

    def render(self) -> Text:
        t = Text(no_wrap=True, overflow="ellipsis")
        t.append(" forge ", style="bold reverse")
        for key, mode, label in SCREENS:
            t.append(" ")
            if mode == self.current:
                t.append(f"{key} {label}", style="bold reverse")
            else:
                t.append(key, style="bold")
                t.append(f" {label}")
        jobs = getattr(self.app, "running_jobs", lambda: [])()
        if jobs:
            t.append("  ")
            t.append("● " + ", ".join(jobs), style="bold yellow")
        return t
