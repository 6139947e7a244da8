"""The TUI's screens and what they share: the screen bar, and jobs (library stages in worker threads).

A job is a library call run in a thread worker with a ``sink`` that posts each event to the screen that started it
(``JobEvent``) and a ``should_stop`` that turns true when the user stops it, quits, or the worker is cancelled; its
end arrives as ``JobFinished``. The UI thread never waits for a stage.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any, Callable

from textual.app import ComposeResult
from textual.message import Message
from textual.screen import Screen
from textual.worker import Worker, get_current_worker

from ...events import Event
from ..widgets.navbar import NavBar


class JobEvent(Message):
    """An event a job's stage emitted (posted from the worker thread)."""

    def __init__(self, job: str, event: Event) -> None:
        super().__init__()
        self.job = job
        self.event = event


class JobFinished(Message):
    """A job ended: ``ok`` with its result, or ``error`` (one line); ``stopped`` when a stop was requested."""

    def __init__(self, job: str, ok: bool, result: Any = None, error: str | None = None,
                 stopped: bool = False) -> None:
        super().__init__()
        self.job = job
        self.ok = ok
        self.result = result
        self.error = error
        self.stopped = stopped


@dataclasses.dataclass
class Job:
    name: str
    worker: Worker
    stop: threading.Event
    screen: "ForgeScreen"

    @property
    def running(self) -> bool:
        return self.worker.is_running or self.worker.state.name == "PENDING"


Work = Callable[[Callable[[Event], None], Callable[[], bool]], Any]


class ForgeScreen(Screen):
    """A screen of the app: the screen bar on top, the footer below, and jobs it can start and stop."""

    MODE = ""
    SUMMARY = ""

    def notify(self, message: str, *, title: str = "", severity: Any = "information", timeout: float | None = None,
               markup: bool = False) -> None:
        """Notices carry paths and error text: shown as typed, never read as markup."""
        self.app.notify(message, title=title, severity=severity, timeout=timeout, markup=markup)

    def nav(self) -> ComposeResult:
        yield NavBar(self.MODE)

    def selected_recipe(self, need_adapter: bool = False) -> tuple[Any, Any] | None:
        """(run directory, its resolved recipe) of the run selected on Home, or None after saying what is missing."""
        from ...errors import ForgeError
        from ...runlist import run_recipe

        run = self.app.run_dir
        if run is None:
            self.notify("no run selected (Home, 1)", severity="error")
            return None
        if need_adapter and not (run / "adapter" / "adapter_config.json").is_file():
            self.notify("this run has no trained adapter yet: train it first (3)", severity="error")
            return None
        try:
            return run, run_recipe(run)
        except ForgeError as e:
            self.notify(e.one_line(), severity="error")
            return None

    # --- jobs ---
    def start_job(self, name: str, work: Work) -> bool:
        """Run ``work(sink, should_stop)`` in a thread worker; False (and a notice) if ``name`` already runs."""
        if self.app.job_running(name):
            self.notify(f"{name} is already running", severity="warning")
            return False
        stop = threading.Event()

        def run() -> None:
            worker = get_current_worker()

            def should_stop() -> bool:
                return stop.is_set() or worker.is_cancelled

            def sink(event: Event) -> None:
                self.post_message(JobEvent(name, event))

            from ...errors import ForgeError

            try:
                result = work(sink, should_stop)
            except ForgeError as e:
                self.post_message(JobFinished(name, False, error=e.one_line(), stopped=stop.is_set()))
            except Exception as e:  # a bug or an untranslated library error: one line, as the CLI prints it
                msg = " ".join(str(e).split()) or type(e).__name__
                self.post_message(JobFinished(name, False, error=f"{type(e).__name__}: {msg}",
                                              stopped=stop.is_set()))
            else:
                self.post_message(JobFinished(name, True, result=result, stopped=stop.is_set()))

        worker = self.run_worker(run, name=name, group=name, thread=True, exit_on_error=False)
        self.app.register_job(Job(name, worker, stop, self))
        return True

    def stop_job(self, name: str) -> bool:
        return self.app.stop_job(name)

    def on_job_finished(self, message: JobFinished) -> None:
        self.app.refresh_nav()

    def on_screen_resume(self) -> None:
        self.app.refresh_nav()
