"""Modal dialogs: a path prompt (save/open), the base-model picker, the data-file picker with preview, the arena's
two models. Each dismisses with its answer, or None on escape."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Checkbox, DirectoryTree, Footer, Input, Label, OptionList, Static
from textual.widgets.option_list import Option


class _Dialog(ModalScreen):
    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def action_cancel(self) -> None:
        self.dismiss(None)


class PathDialog(_Dialog):
    """Ask for a file path (enter accepts); ``must_exist`` refuses a missing file inline."""

    def __init__(self, title: str, value: str = "", *, must_exist: bool = False) -> None:
        super().__init__()
        self.title_text = title
        self.value = value
        self.must_exist = must_exist

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.title_text, classes="dialog-title")
            yield Input(self.value, id="path", compact=True)
            yield Static("", id="path-error", classes="field-error")
            yield Footer()

    @on(Input.Submitted, "#path")
    def accept(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        if not text:
            self.query_one("#path-error", Static).update("give a path")
            return
        if self.must_exist and not Path(text).expanduser().is_file():
            self.query_one("#path-error", Static).update(Text(f"{text}: no such file"))
            return
        self.dismiss(text)


class BaseModelDialog(_Dialog):
    """Pick a base model: HF cache snapshots and model directories under a folder (type one and press enter)."""

    def __init__(self, folder: str = ".") -> None:
        super().__init__()
        self.folder = folder

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Base model: local HF cache, or HF model directories under a folder", classes="dialog-title")
            yield Input(self.folder, id="folder", compact=True, placeholder="folder to search, or a model directory")
            yield OptionList(id="models")
            yield Static("", id="models-note", classes="dim")
            yield Footer()

    def on_mount(self) -> None:
        self.search(self.folder)

    @on(Input.Submitted, "#folder")
    def folder_given(self, event: Input.Submitted) -> None:
        self.search(event.value.strip() or ".")

    @work(thread=True, exclusive=True, group="scan")
    def search(self, folder: str) -> None:
        from ...runlist import hf_cache_dir, local_models

        found = local_models([folder])
        self.app.call_from_thread(self._show, found, str(hf_cache_dir()))

    def _show(self, found: list[tuple[str, str]], cache: str) -> None:
        ol = self.query_one("#models", OptionList)
        ol.clear_options()
        ol.add_options([Option(label, id=value) for label, value in found])
        if found:
            ol.highlighted = 0
        note = f"{len(found)} found (HF cache: {cache}); enter picks one" if found else \
            f"no HF model directory found (HF cache: {cache}); type a folder and press enter"
        self.query_one("#models-note", Static).update(Text(note))
        (ol if found else self.query_one("#folder", Input)).focus()

    @on(OptionList.OptionSelected, "#models")
    def chosen(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)


class DataTree(DirectoryTree):
    def filter_paths(self, paths: Iterable[Path]) -> Iterable[Path]:
        from ...runlist import DATA_SUFFIXES

        return [p for p in paths if not p.name.startswith(".") and (p.is_dir() or p.suffix.lower() in DATA_SUFFIXES)]


class DataFileDialog(_Dialog):
    """Browse for a data file; selecting one shows the `data check` report and its first records; u uses it."""

    BINDINGS = [Binding("escape", "cancel", "Cancel"), Binding("u", "use", "Use this file")]

    def __init__(self, root: str = ".") -> None:
        super().__init__()
        self.root = root
        self.chosen: str | None = None

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog dialog-tall"):
            yield Label("Training data: enter previews a file, u uses it", classes="dialog-title")
            yield DataTree(self.root, id="tree")
            with VerticalScroll(id="data-preview-box"):
                yield Static("", id="file-preview")
            yield Footer()

    @on(DirectoryTree.FileSelected)
    def selected(self, event: DirectoryTree.FileSelected) -> None:
        self.chosen = str(event.path)
        self.query_one("#file-preview", Static).update(Text(f"checking {event.path.name}…"))
        self.preview(self.chosen)

    @work(thread=True, exclusive=True, group="preview")
    def preview(self, path: str) -> None:
        from ...runlist import data_preview

        p = data_preview(path, n=3)
        self.app.call_from_thread(self.query_one("#file-preview", Static).update, preview_text(p))

    def action_use(self) -> None:
        if self.chosen:
            self.dismiss(self.chosen)
        else:
            self.notify("select a file first (enter)", severity="warning")


def preview_text(p: Any) -> Any:
    t = Text()
    for i, line in enumerate(p.report):
        t.append(line + "\n", style="" if i < 2 else "red")
    for r in p.records:
        t.append("› " + r + "\n", style="dim")
    return t


class ArenaDialog(_Dialog):
    """The two models for the arena (GGUF path, Ollama name or run directory); enter on the second opens it."""

    def __init__(self, left: str, right: str) -> None:
        super().__init__()
        self.left, self.right = left, right

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Arena: two models (GGUF path, Ollama name or run directory)", classes="dialog-title")
            yield Label("A (left)")
            yield Input(self.left, id="left", compact=True)
            yield Label("B (right)")
            yield Input(self.right, id="right", compact=True)
            yield Checkbox("blind (hide which is which, shuffle sides each round)", id="blind", compact=True)
            yield Static("", id="arena-error", classes="field-error")
            yield Footer()

    @on(Input.Submitted, "#left")
    def next_field(self) -> None:
        self.query_one("#right", Input).focus()

    @on(Input.Submitted, "#right")
    def accept(self) -> None:
        left = self.query_one("#left", Input).value.strip()
        right = self.query_one("#right", Input).value.strip()
        if not left or not right:
            self.query_one("#arena-error", Static).update("give both models")
            return
        self.dismiss((left, right, self.query_one("#blind", Checkbox).value))
