"""The forge app: six screens as modes (keys 1-6), help, the arena, the command palette, and clean quitting.

Shared state lives here: the runs root, the Ollama host, the selected run and the recipe being edited. Screens
read it when they are shown. Quitting while a stage runs asks it to stop (training saves a checkpoint first) and
waits for it; a second ctrl+q quits at once (the worker is cancelled, which the stage also polls).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Iterable

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from .screens import Job
from .screens.eval import EvalScreen
from .screens.export import ExportScreen
from .screens.home import HomeScreen
from .screens.push import PushScreen
from .screens.recipe import RecipeScreen
from .screens.train import TrainScreen
from .widgets.navbar import SCREENS, NavBar

FIRST_FRAME_ENV = "FORGE_TUI_FIRST_FRAME"  # file to write "seconds since T0" into at the first frame, then exit
T0_ENV = "FORGE_TUI_T0"  # time.time() when the process was started (bench/startup.py sets it)


class ForgeApp(App):
    CSS_PATH = "forge.tcss"
    TITLE = "ollama-forge"
    MODES = {"home": HomeScreen, "recipe": RecipeScreen, "train": TrainScreen, "export": ExportScreen,
             "push": PushScreen, "eval": EvalScreen}
    DEFAULT_MODE = "home"
    BINDINGS = [
        *[Binding(key, f"switch_mode('{mode}')", label, show=False) for key, mode, label in SCREENS],
        Binding("f1,question_mark", "help", "Help"),
        Binding("ctrl+q", "quit", "Quit", priority=True),
    ]

    def __init__(self, runs_root: Path = Path("runs"), *, host: str | None = None, recipe_path: Path | None = None,
                 run_dir: Path | None = None, models_loader: Any = None,
                 arena: tuple[str, str, bool] | None = None) -> None:
        super().__init__()
        self.start_arena = arena
        self.runs_root = Path(runs_root)
        self.host = host
        self.recipe_path: Path | None = recipe_path
        self.recipe: Any = None  # the Recipe the Recipe screen holds (validated), or None
        self.run_dir: Path | None = run_dir
        self.use_recipe = recipe_path is not None  # Train uses the form's recipe (else the selected run's)
        self.recipe_version = 0  # bumped by set_recipe: the Recipe screen reloads its form when it changes
        self.recipe_error: str | None = None
        self.jobs: dict[str, Job] = {}
        self._quitting = False
        # ollama.forge_models by default; tests pass a stand-in callable
        self.models_loader = models_loader
        if recipe_path is not None:
            from .. import recipe as recipes
            from ..errors import ForgeError

            try:
                self.recipe = recipes.load(recipe_path)
            except ForgeError as e:
                self.recipe_error = e.one_line()

    # --- state shared by the screens ---
    def select_run(self, path: Path | None, *, explicit: bool = False) -> None:
        """The run the screens work on; ``explicit`` (enter, or a screen key on Home) also makes Train use the
        run's own recipe instead of the one in the form."""
        self.run_dir = path
        if explicit:
            self.use_recipe = False

    def train_target(self) -> tuple[Any, Path | None, str | None]:
        """(recipe, run directory, why not) for Train: the form's recipe when it was the last thing edited, else
        the selected run's resolved recipe."""
        from ..errors import ForgeError
        from ..runlist import default_run_dir, run_recipe

        if self.recipe is not None and self.use_recipe:
            return self.recipe, default_run_dir(self.recipe, self.recipe_path, self.runs_root), None
        if self.run_dir is not None:
            try:
                return run_recipe(self.run_dir), self.run_dir, None
            except ForgeError as e:
                return None, self.run_dir, e.one_line()
        return None, None, "no recipe and no run yet: open or write a recipe (2), or pick a run on Home (1)"

    def set_recipe(self, recipe: Any, path: Path | None) -> None:
        self.recipe, self.recipe_path = recipe, path
        self.recipe_version += 1
        self.use_recipe = recipe is not None

    def notify(self, message: str, *, title: str = "", severity: Any = "information", timeout: float | None = None,
               markup: bool = False) -> None:
        super().notify(message, title=title, severity=severity, timeout=timeout, markup=markup)

    def display_path(self, path: Path | str | None) -> str:
        """A path as the screens show it: relative to the working directory when under it."""
        if path is None:
            return "-"
        p = Path(path)
        try:
            return str(p.resolve().relative_to(Path.cwd().resolve()))
        except ValueError:
            return str(p)

    # --- jobs ---
    def register_job(self, job: Job) -> None:
        self.jobs[job.name] = job
        self.refresh_nav()

    def job_running(self, name: str) -> bool:
        job = self.jobs.get(name)
        return job is not None and job.running

    def running_jobs(self) -> list[str]:
        return [n for n, j in self.jobs.items() if j.running]

    def stop_job(self, name: str) -> bool:
        job = self.jobs.get(name)
        if job is None or not job.running:
            return False
        job.stop.set()
        return True

    def refresh_nav(self) -> None:
        for bar in self.screen.query(NavBar):
            bar.refresh()

    # --- actions ---
    def action_help(self) -> None:
        from .screens.help import HelpScreen

        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(self.current_mode))

    def action_arena(self) -> None:
        from .widgets.dialogs import ArenaDialog
        from ..runlist import arena_defaults

        left, right = arena_defaults(self.run_dir)

        def opened(choice: Any) -> None:
            if choice:
                self.open_arena(*choice)

        self.push_screen(ArenaDialog(left, right), opened)

    def open_arena(self, left: str, right: str, blind: bool = False) -> None:
        try:
            from .screens.arena import ArenaScreen
        except ImportError as e:  # the arena is built separately; its absence must not break the other screens
            self.notify(f"the arena is not available: {e}", severity="error")
            return
        self.push_screen(ArenaScreen(left, right, run_dir=self.run_dir, blind=blind, host=self.host))

    async def action_quit(self) -> None:
        running = [j for j in self.jobs.values() if j.running]
        if not running or self._quitting:
            self.exit()
            return
        self._quitting = True
        for j in running:
            j.stop.set()
        names = ", ".join(j.name for j in running)
        self.notify(f"stopping {names} cleanly (training saves a checkpoint first); ctrl+q again quits now",
                    timeout=30)
        self.run_worker(self._exit_when_stopped(running), group="quit")

    async def _exit_when_stopped(self, running: list[Job]) -> None:
        await self.workers.wait_for_complete([j.worker for j in running])
        self.exit()

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        for key, mode, label in SCREENS:
            yield SystemCommand(label, f"go to the {label} screen (key {key})",
                                lambda m=mode: self.switch_mode(m))
        yield SystemCommand("Arena", "two models side by side: same prompt, vote A/B (votes become DPO pairs)",
                            self.action_arena)
        yield SystemCommand("Help", "keys and the flow recipe -> train -> export -> push", self.action_help)
        yield from screen_commands(screen)
        yield from super().get_system_commands(screen)

    def on_mount(self) -> None:
        if self.start_arena is not None:
            self.call_after_refresh(self.open_arena, *self.start_arena)

    # --- start-up timing (bench/startup.py) ---
    def on_ready(self) -> None:
        out = os.environ.get(FIRST_FRAME_ENV)
        if out:
            t0 = float(os.environ.get(T0_ENV) or 0)
            Path(out).write_text(f"{time.time() - t0:.3f}\n" if t0 else "0\n")
            self.exit()


def screen_commands(screen: Screen) -> Iterable[SystemCommand]:
    """The current screen's own palette entries (each screen lists them in COMMANDS_LIST)."""
    for title, help_, action in getattr(screen, "PALETTE", []):
        yield SystemCommand(title, help_, lambda a=action: screen.run_action(a))
