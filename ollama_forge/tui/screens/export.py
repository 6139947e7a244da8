"""Export: merge → convert → quantize → Modelfile → fidelity gate of the selected run, as a stage list with
progress, time and size, then the gate's figures hop by hop and the artifacts' sizes.

s runs what is not current (``pipeline.run_pipeline(..., until_stage="gate")``; finished stages show as cached),
f redoes the export from the merge, x stops between stages.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import DataTable, Footer, Label, RichLog, Static

from . import ForgeScreen, JobEvent, JobFinished
from ..widgets.stagelist import StageList

JOB = "export"
EXPORT_STAGES = ("merge", "convert", "quantize", "modelfile", "gate")


class ExportScreen(ForgeScreen):
    MODE = "export"
    SUMMARY = "merge → convert → quantize → Modelfile → fidelity gate"
    BINDINGS = [
        Binding("s", "start", "Export"),
        Binding("f", "start(True)", "Redo"),
        Binding("x", "stop", "Stop"),
        Binding("r", "reload", "Reload"),
    ]
    PALETTE = [("Export the run", "merge, convert, quantize, Modelfile, fidelity gate (what is not current)",
                "start"),
               ("Redo the export", "from the merge on, even if current", "start(True)"),
               ("Stop the export", "between stages", "stop")]

    def __init__(self) -> None:
        super().__init__()
        from ...runlist import StageBoard

        self.board = StageBoard.of(EXPORT_STAGES)

    def compose(self) -> ComposeResult:
        yield from self.nav()
        yield Static("", id="export-target")
        yield StageList(self.board, id="stages")
        with VerticalScroll(id="export-body"):
            yield Label("", id="fidelity-title", classes="section-title")
            yield DataTable(id="fidelity", show_cursor=False)
            yield Static("", id="fidelity-notes", classes="detail")
            yield Static("", id="sizes", classes="detail")
            yield RichLog(id="export-log", max_lines=1000, wrap=False, markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#fidelity", DataTable).add_columns("hop", "top-1", "min", "KL mean", "KL max", "stop rate",
                                                           "result")
        self.action_reload()

    def on_screen_resume(self) -> None:
        super().on_screen_resume()
        if self.is_mounted and not self.app.job_running(JOB):
            self.action_reload()

    def action_reload(self) -> None:
        run = self.app.run_dir
        target = self.query_one("#export-target", Static)
        if run is None:
            target.update(Text("no run selected: pick one on Home (1), or train one (3)", style="yellow"))
        else:
            target.update(Text.assemble(("run ", "dim"), (self.app.display_path(run), "bold"),
                                        ("  s exports what is not current, f redoes it", "dim")))
            if not self.app.job_running(JOB):
                self.board_from_manifest()
        self.show_results()

    def board_from_manifest(self) -> None:
        """Stages the run already finished show as done (from its manifest) before anything runs."""
        from ...runlist import StageBoard, run_state

        board = StageBoard.of(EXPORT_STAGES)
        _, stages = run_state(self.app.run_dir)
        for name in EXPORT_STAGES:
            if name in stages:
                board.mark(name, "ran", "recorded in the manifest")
        if (self.app.run_dir / "Modelfile").is_file():
            board.mark("modelfile", "ran", "Modelfile present")
        self.board = board
        self.query_one(StageList).set_board(board)

    def show_results(self) -> None:
        from ...runlist import artifact_sizes, fidelity_table, load_fidelity

        run = self.app.run_dir
        rep = load_fidelity(run) if run is not None else None
        table = self.query_one("#fidelity", DataTable)
        table.clear()
        title = self.query_one("#fidelity-title", Label)
        notes = self.query_one("#fidelity-notes", Static)
        if rep is None:
            title.update("Fidelity gate: no report yet")
            notes.update("")
        else:
            t = fidelity_table(rep)
            title.update(Text(t.title))
            for row in t.rows:
                style = "bold red" if row[-1] == "FAIL" else "green" if row[-1] == "pass" else "dim"
                table.add_row(*(Text(c) for c in row[:-1]), Text(row[-1], style=style))
            notes.update(Text("\n".join(t.notes)))
        sizes = artifact_sizes(run) if run is not None else []
        self.query_one("#sizes", Static).update(
            Text("artifacts: " + ", ".join(f"{n} {s}" for n, s in sizes) if sizes else "artifacts: none yet"))

    def action_start(self, force: bool = False) -> None:
        picked = self.selected_recipe(need_adapter=True)
        if picked is None:
            return
        run, recipe = picked
        self.reset_board()
        host = self.app.host

        def work(sink: Any, should_stop: Any) -> Any:
            from ...pipeline import run_pipeline

            return run_pipeline(recipe, run, sink, from_stage="merge" if force else None, until_stage="gate",
                                push=False, host=host, should_stop=should_stop)

        if self.start_job(JOB, work):
            self.query_one("#export-log", RichLog).write(f"exporting {self.app.display_path(run)}")

    def reset_board(self) -> None:
        """Every export stage waiting: a run starts (its events then fill the list in)."""
        from ...runlist import StageBoard

        self.board = StageBoard.of(EXPORT_STAGES)
        self.query_one(StageList).set_board(self.board)

    def action_stop(self) -> None:
        if self.stop_job(JOB):
            self.notify("stopping after the current stage")
        else:
            self.notify("no export is running", severity="warning")

    def on_job_event(self, message: JobEvent) -> None:
        if message.job != JOB:
            return
        from ...runlist import event_line

        ev = message.event
        if self.board.apply(ev):
            self.query_one(StageList).redraw()
        if ev.kind in ("log", "choice", "stage"):
            self.query_one("#export-log", RichLog).write(event_line(ev))

    def on_job_finished(self, message: JobFinished) -> None:
        super().on_job_finished(message)
        if message.job != JOB:
            return
        log = self.query_one("#export-log", RichLog)
        if not message.ok:
            self.board.stop_running("failed")
            log.write(f"failed: {message.error}")
            self.notify(message.error or "export failed", severity="error")
        elif getattr(message.result, "stopped", None):
            self.board.stop_running("stopped")
            log.write(f"stopped: {message.result.stopped}")
        else:
            gate = getattr(message.result, "gate_passed", None)
            log.write("export done" + ("" if gate is None else f"; fidelity gate {'passed' if gate else 'FAILED'}"))
        self.query_one(StageList).redraw()
        self.show_results()
