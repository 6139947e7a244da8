"""``forge tui`` (and ``forge`` with no arguments in a terminal): the terminal UI over the same library stages."""

from __future__ import annotations

import argparse

HELP = "open the terminal UI"
DESCRIPTION = ("Open the terminal UI: runs and forge's Ollama models (Home), the recipe form, training with a live "
               "loss plot, export with the fidelity gate, push, eval and the side-by-side arena. Keys 1-6 switch "
               "screens, F1 shows every key, ctrl+p the command palette, ctrl+q quits (a running stage stops "
               "cleanly first).")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", nargs="?", help="a recipe YAML to open in the form (optional)")
    p.add_argument("--runs", default="runs", metavar="DIR", help="where run directories are listed from "
                   "(default: ./runs)")
    p.add_argument("--run", metavar="RUN_DIR", help="select this run directory at start")
    p.add_argument("--host", help="Ollama address (default: OLLAMA_HOST, else 127.0.0.1:11434)")
    p.add_argument("--arena", nargs=2, metavar=("LEFT", "RIGHT"), help="open straight on the arena with these two "
                   "models (GGUF path, Ollama name or run directory); votes go to --run's directory")
    p.add_argument("--blind", action="store_true", help="with --arena: hide which model is which")


def run(args: argparse.Namespace) -> int:
    import logging
    import os
    import sys

    from ..errors import ForgeError

    if args.recipe and not os.path.isfile(args.recipe):
        raise ForgeError(f"{args.recipe}: recipe not found", "check the path, or start without one")
    if not (sys.stdout.isatty() or os.environ.get("FORGE_TUI_FIRST_FRAME")):
        raise ForgeError("forge tui needs a terminal (stdout is not one)", "run it in a terminal")
    from ..tui import run_app

    # Library log lines and native libraries writing to stderr would scribble over the screen: while the app runs,
    # forge's logger is quiet (its events reach the screens) and fd 2 goes to a log file.
    log = logging.getLogger("ollama_forge")
    saved = log.handlers[:], log.propagate
    log.handlers[:] = [logging.NullHandler()]
    log.propagate = False
    with _stderr_to_file():
        try:
            return run_app(args.runs, host=args.host, recipe=args.recipe, run_dir=args.run,
                           arena=(*args.arena, args.blind) if args.arena else None)
        finally:
            log.handlers[:], log.propagate = saved


def _stderr_to_file():
    """Native writes to fd 2 (C libraries) go to a log file while the app runs; Textual draws on the terminal
    through a duplicate of the original fd 2, which it finds as ``sys.__stderr__``."""
    import contextlib
    import os
    import sys

    @contextlib.contextmanager
    def redirect():
        from ..ollama import data_dir

        path = data_dir() / "tui-stderr.log"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            log_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        except OSError:
            yield
            return
        sys.stderr.flush()
        term_fd = os.dup(2)
        term = open(term_fd, "w", encoding="utf-8", errors="backslashreplace", closefd=True)
        saved_dunder, saved_stderr = sys.__stderr__, sys.stderr
        os.dup2(log_fd, 2)
        os.close(log_fd)
        sys.__stderr__ = sys.stderr = term
        try:
            yield
        finally:
            sys.__stderr__, sys.stderr = saved_dunder, saved_stderr
            term.flush()
            os.dup2(term_fd, 2)
            term.close()

    return redirect()
