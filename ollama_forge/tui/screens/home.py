"""Home: the runs under the runs root (state, base model, last metric) and the models forge registered in Ollama,
with their lineage. Selecting a run makes it the one the other screens work on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Footer, Label, Static

from . import ForgeScreen

STATE_STYLE = {"evaluated": "green", "pushed": "green", "gated": "green", "gate failed": "bold red", "new": "dim"}


class HomeScreen(ForgeScreen):
    MODE = "home"
    SUMMARY = "runs (state, base, last metric) and forge's models in Ollama, with lineage"
    BINDINGS = [
        Binding("r", "refresh", "Refresh"),
        Binding("n", "new_recipe", "New recipe"),
        Binding("a", "app.arena", "Arena"),
        Binding("t", "open('train')", "Train", show=False),
        Binding("x", "open('export')", "Export", show=False),
        Binding("p", "open('push')", "Push", show=False),
        Binding("e", "open('eval')", "Eval", show=False),
    ]
    PALETTE = [("Refresh runs and models", "read the runs root and ask Ollama again", "refresh"),
               ("New recipe", "an empty recipe form", "new_recipe")]

    def compose(self) -> ComposeResult:
        yield from self.nav()
        yield Label("", id="runs-title", classes="section-title")
        yield DataTable(id="runs", cursor_type="row", zebra_stripes=True)
        yield Static("", id="run-detail", classes="detail")
        yield Label("Models in Ollama made by forge", classes="section-title")
        yield Static("asking Ollama…", id="models-status", classes="dim")
        yield DataTable(id="models", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#runs", DataTable).add_columns("run", "state", "base model", "last metric")
        self.query_one("#models", DataTable).add_columns("name", "run", "quant", "format", "base", "size",
                                                         "pushed")
        self.action_refresh()

    def on_screen_resume(self) -> None:
        super().on_screen_resume()
        if self.is_mounted and getattr(self, "_loaded", False):
            self.load_runs()

    def action_refresh(self) -> None:
        self.load_runs()
        self.load_models()

    # --- runs ---
    @work(thread=True, exclusive=True, group="runs")
    def load_runs(self) -> None:
        from ...runlist import is_run_dir, list_runs, run_info

        runs = list_runs(self.app.runs_root)
        chosen = self.app.run_dir  # `forge tui --run DIR` outside the runs root: listed too, and kept selected
        if chosen is not None and is_run_dir(chosen) and chosen.resolve() not in {r.path.resolve() for r in runs}:
            runs.append(run_info(chosen))
        self.app.call_from_thread(self._show_runs, runs)

    def _show_runs(self, runs: list[Any]) -> None:
        self._loaded = True
        self.runs = {str(r.path): r for r in runs}
        title = f"Runs in {self.app.display_path(self.app.runs_root)}/ ({len(runs)})"
        self.query_one("#runs-title", Label).update(title)
        table = self.query_one("#runs", DataTable)
        table.clear()
        for r in runs:
            table.add_row(Text(r.name), Text(r.state, style=STATE_STYLE.get(r.state, "")), Text(r.short_base),
                          Text(r.last_metric), key=str(r.path))
        selected = str(self.app.run_dir.resolve()) if self.app.run_dir else None
        if runs:
            keys = [str(r.path.resolve()) for r in runs]
            row = keys.index(selected) if selected in keys else 0
            table.move_cursor(row=row)
            self._select(runs[row])
        else:
            self.query_one("#run-detail", Static).update(
                "no runs yet: 2 opens the recipe form, 3 trains it (or `forge run RECIPE` / `forge demo`)")

    @on(DataTable.RowHighlighted, "#runs")
    def highlighted(self, event: DataTable.RowHighlighted) -> None:
        r = getattr(self, "runs", {}).get(str(event.row_key.value))
        if r is not None:
            self._select(r)

    def _select(self, r: Any) -> None:
        self.app.select_run(r.path)
        stages = " → ".join(r.stages) if r.stages else "nothing recorded yet"
        ggufs = ", ".join(r.ggufs) if r.ggufs else "no GGUF yet"
        self.query_one("#run-detail", Static).update(
            Text.assemble(("selected ", "dim"), (r.name, "bold"), ("  stages: ", "dim"), stages, ("  ", ""),
                          (ggufs, "dim")))

    @on(DataTable.RowSelected, "#runs")
    def opened(self, event: DataTable.RowSelected) -> None:
        self.action_open("train")

    def action_open(self, mode: str) -> None:
        table = self.query_one("#runs", DataTable)
        if table.row_count:
            key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
            self.app.select_run(Path(str(key)), explicit=True)
        self.app.switch_mode(mode)

    def action_new_recipe(self) -> None:
        self.app.set_recipe(None, None)
        self.app.switch_mode("recipe")

    # --- models ---
    @work(thread=True, exclusive=True, group="models")
    def load_models(self) -> None:
        from ...errors import ForgeError
        from ...ollama import base_url
        from ...runlist import model_rows

        loader = self.app.models_loader
        try:
            url = base_url(self.app.host)
            if loader is None:
                from ...ollama import forge_models

                models = forge_models(host=self.app.host, timeout=5.0)
            else:
                models = loader(self.app.host)
            rows, status = model_rows(models), f"Ollama at {url}: {len(models)} model(s) made by forge"
            if not models:
                status += " (forge push, or 5 Push, registers one)"
        except ForgeError as e:
            rows, status = [], e.one_line()
        self.app.call_from_thread(self._show_models, rows, status)

    def _show_models(self, rows: list[Any], status: str) -> None:
        self.query_one("#models-status", Static).update(Text(status))
        table = self.query_one("#models", DataTable)
        table.clear()
        for m in rows:
            table.add_row(*(Text(c) for c in (m.name, m.run, m.quant, m.chat_format, m.base, m.size, m.pushed_at)),
                          key=m.name)

    def selected_run(self) -> Path | None:
        return self.app.run_dir
