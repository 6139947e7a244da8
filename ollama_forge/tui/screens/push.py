"""Push: register the selected run's model with Ollama (``ollama.spec_from`` + ``ollama.push`` in a worker).

The top line says where Ollama is (host, version, reachable); the name is checked against Ollama's name rules as
it is typed; progress shows hashing and upload; the result names the model, its digest and what was sent.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import Checkbox, Footer, Input, Label, ProgressBar, RichLog, Static

from . import ForgeScreen, JobEvent, JobFinished

JOB = "push"


class PushScreen(ForgeScreen):
    MODE = "push"
    AUTO_FOCUS = ""  # nothing focused: keys 1-6 switch screens until tab enters the name field
    SUMMARY = "register the run's model with Ollama"
    BINDINGS = [
        Binding("ctrl+r", "push", "Push"),
        Binding("ctrl+t", "check", "Check Ollama"),
        Binding("escape", "leave_field", "Leave field", show=False),
    ]
    PALETTE = [("Push to Ollama", "upload, create, verify and record the run's model", "push"),
               ("Check Ollama", "host, version, reachable", "check")]

    def __init__(self) -> None:
        super().__init__()
        self.reachable = False
        self.shown_run: Any = None

    def compose(self) -> ComposeResult:
        yield from self.nav()
        yield Static("checking Ollama…", id="ollama-status")
        yield Static("", id="push-source")
        with Horizontal(classes="field-line"):
            yield Label("Ollama name", classes="field-key")
            yield Input("", id="name", compact=True, placeholder="e.g. my-assistant:latest")
        yield Static("", id="name-error", classes="field-error")
        yield Checkbox("replace a model not made by forge (it is backed up first)", id="force", compact=True)
        yield Static("", id="push-step", classes="dim")
        yield ProgressBar(total=1, show_eta=False, id="push-progress")
        yield Static("", id="push-result")
        yield RichLog(id="push-log", max_lines=1000, wrap=False, markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.action_check()
        self.show_run()

    def on_screen_resume(self) -> None:
        super().on_screen_resume()
        if self.is_mounted and not self.app.job_running(JOB):
            self.show_run()

    # --- Ollama status ---
    def action_check(self) -> None:
        from ...ollama import base_url

        try:
            url = base_url(self.app.host)
        except Exception as e:  # an invalid OLLAMA_HOST: say so instead of asking
            self.query_one("#ollama-status", Static).update(Text(str(e), style="bold red"))
            return
        self.query_one("#ollama-status", Static).update(Text(f"Ollama {url}: checking…", style="dim"))
        self.check_ollama(url)

    @work(thread=True, exclusive=True, group="ollama-status")
    def check_ollama(self, url: str) -> None:
        from ...errors import ForgeError
        from ...ollama import Ollama

        try:
            with Ollama(self.app.host, timeout=5.0) as conn:
                version = conn.version()
            text = Text.assemble(("Ollama ", "dim"), (url, "bold"), ("  version ", "dim"), version or "?",
                                 ("  ✓ reachable", "green"))
            ok = True
        except ForgeError as e:
            text, ok = Text.assemble(("Ollama ", "dim"), (url, "bold"), ("  ✗ not reachable: ", "bold red"),
                                     e.one_line()), False
        self.app.call_from_thread(self._status, text, ok)

    def _status(self, text: Text, ok: bool) -> None:
        self.reachable = ok
        self.query_one("#ollama-status", Static).update(text)

    # --- what gets pushed ---
    def show_run(self) -> None:
        from ...ollama_names import suggest
        from ...runlist import read_yaml

        run = self.app.run_dir
        src = self.query_one("#push-source", Static)
        if run is None:
            src.update(Text("no run selected: pick one on Home (1)", style="yellow"))
            return
        ggufs = sorted(p.name for p in run.glob("model-*.gguf"))
        mf = "Modelfile" if (run / "Modelfile").is_file() else "no Modelfile yet (written from the chat format)"
        src.update(Text.assemble(("run ", "dim"), (self.app.display_path(run), "bold"), ("  ", ""),
                                 (", ".join(ggufs) if ggufs else "no GGUF: export it first (4)", "dim"),
                                 ("  " + mf, "dim")))
        if self.shown_run != run:
            self.shown_run = run
            recipe = read_yaml(run / "recipe.resolved.yaml")
            name = (recipe.get("ollama") or {}).get("model") or suggest(run.name or "forge-model", "latest")
            self.query_one("#name", Input).value = name

    @on(Input.Changed, "#name")
    def name_changed(self, event: Input.Changed) -> None:
        self.check_name(event.value)

    def check_name(self, text: str) -> str | None:
        from ...ollama_names import problem, suggest

        err = self.query_one("#name-error", Static)
        why = problem(text.strip()) if text.strip() else "give a name"
        if why:
            hint = f" (e.g. {suggest(text)!r})" if text.strip() else ""
            err.update(Text(f"✗ {why}{hint}"))
        else:
            err.update(Text("✓ valid Ollama name", style="green"))
        err.set_class(True, "-shown")
        return why

    @on(Input.Submitted, "#name")
    def submitted(self) -> None:
        self.action_push()

    # --- push ---
    def action_leave_field(self) -> None:
        self.set_focus(None)

    def action_push(self) -> None:
        run = self.app.run_dir
        name = self.query_one("#name", Input).value.strip()
        why = self.check_name(name)
        if run is None:
            self.notify("no run selected (Home, 1)", severity="error")
            return
        if why:
            self.notify(f"name: {why}", severity="error")
            return
        host = self.app.host
        force = self.query_one("#force", Checkbox).value
        self.query_one("#push-result", Static).update("")
        self.query_one("#push-progress", ProgressBar).update(total=None, progress=0)

        def work(sink: Any, should_stop: Any) -> Any:
            from ...ollama import push, spec_from

            spec = spec_from(run, sink=sink)
            return push(name, spec, host=host, force=force, sink=sink)

        if self.start_job(JOB, work):
            self.query_one("#push-log", RichLog).write(f"pushing {self.app.display_path(run)} as {name}")

    def on_job_event(self, message: JobEvent) -> None:
        if message.job != JOB:
            return
        from ...runlist import event_line, human_bytes

        ev = message.event
        if ev.kind == "progress":
            done, total = ev.data.get("done"), ev.data.get("total")
            if isinstance(done, int) and isinstance(total, int) and total:
                self.query_one("#push-progress", ProgressBar).update(total=total, progress=done)
                self.query_one("#push-step", Static).update(
                    Text(f"{ev.message}: {human_bytes(done)} of {human_bytes(total)}"))
            return
        self.query_one("#push-log", RichLog).write(event_line(ev))

    def on_job_finished(self, message: JobFinished) -> None:
        super().on_job_finished(message)
        if message.job != JOB:
            return
        from ...runlist import human_bytes

        out = self.query_one("#push-result", Static)
        if not message.ok:
            out.update(Text("✗ " + (message.error or "push failed"), style="bold red"))
            self.query_one("#push-log", RichLog).write(f"failed: {message.error}")
            return
        r = message.result
        self.query_one("#push-progress", ProgressBar).update(total=1, progress=1)
        what = "created" if r.created else "already this exact model: nothing uploaded or created"
        lines = Text.assemble(("✓ ", "green"), (r.name, "bold"), f" at {r.host}: {what}\n",
                              ("  ", ""), f"{r.quant_type}, {human_bytes(r.uploaded_bytes)} uploaded, digest "
                              f"{r.manifest_digest[:19]}…")
        if r.backup:
            lines.append(f"\n  the model it replaced is at {r.backup} (forge push --rollback {r.name})")
        out.update(lines)
        self.query_one("#push-log", RichLog).write(f"pushed {r.name}")
