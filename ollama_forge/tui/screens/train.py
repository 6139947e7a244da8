"""Train: the recipe's data and training stages (``pipeline.run_pipeline(..., until_stage="dpo")``) in a worker,
with the live loss plot (train and eval), a progress bar with ETA, tokens/s, the device, and the log.

s starts, or resumes: the pipeline continues an interrupted run from its last checkpoint when the inputs and
settings match. x stops: the trainer saves a checkpoint at the next step and the stage returns. f retrains from
step 0 (``from_stage="sft"``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import Footer, ProgressBar, RichLog, Static

from . import ForgeScreen, JobEvent, JobFinished
from ..widgets.lossplot import LossPlot

JOB = "train"


class TrainScreen(ForgeScreen):
    MODE = "train"
    SUMMARY = "live loss plot, progress, ETA, tokens/s, device, log; stop and resume"
    BINDINGS = [
        Binding("s", "start", "Start/resume"),
        Binding("x", "stop", "Stop"),
        Binding("f", "start(True)", "Retrain"),
    ]
    PALETTE = [("Start or resume training", "run data, sft (and dpo) of the recipe; resumes a stopped run", "start"),
               ("Stop training", "checkpoint at the next step, then stop", "stop"),
               ("Retrain from step 0", "discard the checkpoints and train again", "start(True)")]

    def __init__(self) -> None:
        super().__init__()
        from ...runlist import TrainStatus

        self.status = TrainStatus()
        self.run_dir: Path | None = None
        self._plotted_at = 0.0
        self._plot_pending = False

    def compose(self) -> ComposeResult:
        yield from self.nav()
        yield Static("", id="train-target")
        yield Static("", id="train-status")
        yield ProgressBar(total=1, show_eta=False, id="train-progress")
        yield LossPlot(id="loss-plot")
        yield RichLog(id="train-log", max_lines=2000, wrap=False, markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.show_target()

    def on_screen_resume(self) -> None:
        super().on_screen_resume()
        if self.is_mounted and not self.app.job_running(JOB):
            self.show_target()

    # --- what would train ---
    def show_target(self) -> None:
        from ...runlist import checkpoint_steps, loss_curves, short_model

        recipe, run, why = self.app.train_target()
        target = self.query_one("#train-target", Static)
        if recipe is None:
            target.update(Text(why or "", style="yellow"))
            self.run_dir = None
            self.refresh_status()
            return
        self.run_dir = run
        src = self.app.display_path(self.app.recipe_path) if self.app.use_recipe and self.app.recipe_path else \
            "recipe in the form (unsaved)" if self.app.use_recipe else "the run's recipe"
        steps = f"max_steps {recipe.train.max_steps}" if recipe.train.max_steps > 0 else \
            f"{recipe.train.epochs:g} epochs"
        target.update(Text.assemble(("run ", "dim"), (self.app.display_path(run), "bold"), ("  from ", "dim"), src,
                                    ("  base ", "dim"), short_model(recipe.base_model), ("  " + steps, "dim")))
        if run is not None and self.status.state == "idle":
            loss, eval_loss = loss_curves(run)
            self.query_one(LossPlot).set_data(loss, eval_loss)
            ck = checkpoint_steps(run)
            last = max((s for pts in loss.values() for s, _ in pts), default=0)
            if ck:
                self.status.message = f"stopped at step {ck[-1]}: s resumes from its checkpoint"
                if recipe.train.max_steps > 0:
                    self.status.step, self.status.total = ck[-1], recipe.train.max_steps
            elif (run / "adapter").is_dir():
                self.status.message = (f"trained ({last} steps logged): s reruns only what is not current, "
                                       "f retrains from step 0")
            elif run.is_dir():
                self.status.message = "not trained yet: s starts"
            else:
                self.status.message = "a new run: s starts training"
        self.refresh_status()

    def refresh_status(self) -> None:
        st = self.status
        line = Text(st.line())
        if st.message:
            line.append("\n" + st.message, style="dim")
        self.query_one("#train-status", Static).update(line)
        bar = self.query_one("#train-progress", ProgressBar)
        if st.total:
            bar.update(total=st.total, progress=st.step)
        elif st.state in ("done",):
            bar.update(total=1, progress=1)

    # --- actions ---
    def action_start(self, force: bool = False) -> None:
        if self.app.job_running(JOB):
            self.notify("training is already running (x stops it)", severity="warning")
            return
        self.show_target()
        recipe, run, why = self.app.train_target()
        if recipe is None or run is None:
            self.notify(why or "nothing to train", severity="error")
            return
        if not recipe.base_model:
            self.notify("the recipe has no base_model: set it on the Recipe screen (2, ctrl+b)", severity="error")
            return
        if not recipe.data.train:
            self.notify("the recipe has no data.train: pick a file on the Recipe screen (2, ctrl+f)",
                        severity="error")
            return
        from ...runlist import TrainStatus, with_absolute_paths

        recipe = with_absolute_paths(recipe, self.app.recipe_path if self.app.use_recipe else None)
        self.status = TrainStatus(state="running")
        self.query_one(LossPlot).set_data({}, {})
        self.query_one("#train-progress", ProgressBar).update(total=None, progress=0)
        log = self.query_one("#train-log", RichLog)
        log.write(f"{'retraining' if force else 'training'} into {self.app.display_path(run)}")
        until = "dpo" if recipe.dpo is not None else "sft"
        host = self.app.host

        def work(sink: Any, should_stop: Any) -> Any:
            from ...pipeline import run_pipeline

            return run_pipeline(recipe, run, sink, from_stage="sft" if force else None, until_stage=until,
                                push=False, host=host, should_stop=should_stop)

        self.app.select_run(Path(run))
        self.start_job(JOB, work)
        self.refresh_status()

    def action_stop(self) -> None:
        if self.stop_job(JOB):
            self.status.state = "stopping"
            self.status.message = "stopping: the trainer saves a checkpoint at the next step"
            self.refresh_status()
        else:
            self.notify("no training is running", severity="warning")

    # --- events ---
    PLOT_EVERY_S = 0.3  # a fast trainer logs many points a second: redraw the plot at most this often

    def schedule_plot(self) -> None:
        import time

        now = time.monotonic()
        if now - self._plotted_at >= self.PLOT_EVERY_S:
            self.flush_plot()
        elif not self._plot_pending:
            self._plot_pending = True
            self.set_timer(self.PLOT_EVERY_S, self.flush_plot)

    def flush_plot(self) -> None:
        import time

        self._plot_pending = False
        self._plotted_at = time.monotonic()
        self.query_one(LossPlot).set_data(self.status.loss, self.status.eval_loss)

    def on_job_event(self, message: JobEvent) -> None:
        if message.job != JOB:
            return
        from ...runlist import event_line

        ev = message.event
        changed = self.status.apply(ev)
        if ev.kind == "metric":
            self.schedule_plot()
        if ev.kind in ("log", "choice", "stage", "metric"):
            self.query_one("#train-log", RichLog).write(event_line(ev))
        if changed:
            self.refresh_status()

    def on_job_finished(self, message: JobFinished) -> None:
        super().on_job_finished(message)
        if message.job != JOB:
            return
        self.flush_plot()
        log = self.query_one("#train-log", RichLog)
        report = message.result
        if not message.ok:
            self.status.state = "failed"
            self.status.message = message.error or "failed"
            log.write(f"failed: {message.error}")
        elif report is not None and getattr(report, "stopped", None):
            self.status.state = "stopped"
            self.status.message = f"{report.stopped}; s resumes from the checkpoint"
            log.write(f"stopped: {report.stopped}")
        else:
            self.status.state = "done"
            notes = [f"{s.name} {s.status}" + (f" ({s.note})" if s.note else "")
                     for s in getattr(report, "stages", []) if s.name in ("sft", "dpo")]
            self.status.message = "; ".join(notes) or "done"
            log.write("done: " + self.status.message)
        self.refresh_status()
