"""The Textual TUI (``forge tui``, or ``forge`` with no arguments in a terminal).

The TUI holds no business logic: screens lay out what ``ollama_forge.runlist`` computes and run library stages
(``ollama_forge.pipeline``, ``ollama``, ``evaluate``) in worker threads, rendering their events. Importing this
package loads nothing heavy; ``run_app`` imports textual.
"""

from __future__ import annotations

import os
from pathlib import Path


def run_app(runs_root: str | os.PathLike = "runs", *, host: str | None = None,
            recipe: str | os.PathLike | None = None, run_dir: str | os.PathLike | None = None,
            arena: tuple[str, str, bool] | None = None) -> int:
    """Run the app until it quits; ``arena`` (left, right, blind) opens the arena on top of Home at start."""
    from .app import ForgeApp

    app = ForgeApp(runs_root=Path(runs_root), host=host, recipe_path=Path(recipe) if recipe else None,
                   run_dir=Path(run_dir) if run_dir else None, arena=arena)
    app.run()
    return int(app.return_code or 0)
