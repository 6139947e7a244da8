"""Eval: the selected run's eval report (eval/eval.json) as a table, with the paired differences against the
baseline. e runs the pipeline's eval stage (held-out prompts through base and tuned GGUFs) in a worker."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import DataTable, Footer, RichLog, Static

from . import ForgeScreen, JobEvent, JobFinished

JOB = "eval"


class EvalScreen(ForgeScreen):
    MODE = "eval"
    SUMMARY = "the eval report as a table"
    BINDINGS = [
        Binding("e", "run_eval", "Run eval"),
        Binding("r", "reload", "Reload"),
    ]
    PALETTE = [("Run the eval", "held-out prompts through base and tuned (the pipeline's eval stage)", "run_eval"),
               ("Reload the eval report", "read eval/eval.json again", "reload")]

    def compose(self) -> ComposeResult:
        yield from self.nav()
        yield Static("", id="eval-target")
        yield Static("", id="eval-title", classes="section-title")
        yield DataTable(id="eval-table", zebra_stripes=True, cursor_type="row")
        with VerticalScroll(id="eval-body"):
            yield Static("", id="eval-notes", classes="detail")
            yield RichLog(id="eval-log", max_lines=500, wrap=False, markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.action_reload()

    def on_screen_resume(self) -> None:
        super().on_screen_resume()
        if self.is_mounted:
            self.action_reload()

    def on_resize(self) -> None:
        if self.is_mounted:
            self.action_reload()

    def action_reload(self) -> None:
        from ...runlist import eval_table, load_eval

        run = self.app.run_dir
        target = self.query_one("#eval-target", Static)
        table = self.query_one("#eval-table", DataTable)
        table.clear(columns=True)
        title = self.query_one("#eval-title", Static)
        notes = self.query_one("#eval-notes", Static)
        if run is None:
            target.update(Text("no run selected: pick one on Home (1)", style="yellow"))
            title.update("")
            notes.update("")
            return
        target.update(Text.assemble(("run ", "dim"), (self.app.display_path(run), "bold")))
        report = load_eval(run)
        if report is None:
            title.update("no eval report yet (eval/eval.json): e runs the eval")
            notes.update("")
            return
        t = eval_table(report, compact=self.size.width < 110)
        title.update(Text(t.title))
        for i, label in enumerate(t.head):  # explicit widths: the table is rebuilt whole (compact or not)
            table.add_column(label, width=max(len(r[i]) for r in [t.head, *t.rows]))
        for row in t.rows:
            table.add_row(*(Text(c) for c in row))
        notes.update(Text("\n".join(t.notes)))

    def action_run_eval(self) -> None:
        picked = self.selected_recipe()
        if picked is None:
            return
        run, recipe = picked
        host = self.app.host

        def work(sink: Any, should_stop: Any) -> Any:
            from ...pipeline import run_pipeline

            return run_pipeline(recipe, run, sink, until_stage="eval", push=False, host=host,
                                should_stop=should_stop)

        if self.start_job(JOB, work):
            self.query_one("#eval-log", RichLog).write(f"evaluating {self.app.display_path(run)} "
                                                       "(every earlier stage that is not current runs first)")

    def on_job_event(self, message: JobEvent) -> None:
        if message.job == JOB and message.event.kind in ("log", "choice", "stage"):
            from ...runlist import event_line

            self.query_one("#eval-log", RichLog).write(event_line(message.event))

    def on_job_finished(self, message: JobFinished) -> None:
        super().on_job_finished(message)
        if message.job != JOB:
            return
        log = self.query_one("#eval-log", RichLog)
        if not message.ok:
            log.write(f"failed: {message.error}")
            self.notify(message.error or "eval failed", severity="error")
        else:
            log.write("eval done")
        self.action_reload()
