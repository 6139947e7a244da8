"""``forge``: a thin command line over the library. Every stage is a library function; this only parses and prints.

Importing this module must not load torch, transformers, trl, peft, bitsandbytes, datasets, llama_cpp, gguf or
textual (tests/test_cli.py checks it): each command module imports those inside its ``run``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from . import __version__
from .commands import COMMANDS
from .errors import ForgeError, NotBuiltYet

ISSUE_TITLES = {
    2: "foundation", 3: "chat formats and Modelfile", 4: "GGUF converter and quantization", 5: "training",
    6: "merge", 7: "push and chat", 8: "eval and fidelity gate", 9: "forge run and demo", 10: "the TUI",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="forge",
        description="ollama-forge: fine-tune a base model on your data and serve it in Ollama, "
        "with every hop of the chain proven faithful.",
    )
    parser.add_argument("--version", action="version", version=f"ollama-forge {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_, issue) in COMMANDS.items():
        if module is None:
            p = sub.add_parser(name, help=f"{help_} [comes with issue #{issue}]", add_help=False)
            p.add_argument("rest", nargs=argparse.REMAINDER)
            p.set_defaults(_issue=issue, _module=None)
            continue
        mod = importlib.import_module(module)
        p = sub.add_parser(name, help=help_, description=getattr(mod, "DESCRIPTION", help_))
        mod.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def _setup_logging(debug: bool, quiet: bool) -> None:
    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s" if not debug else "%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("ollama_forge")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    if not argv:
        if sys.stdin.isatty() and sys.stdout.isatty():
            argv = ["tui"]
        else:
            parser.print_help()
            return 0
    args = parser.parse_args(argv)
    _setup_logging(args.debug, args.quiet)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        if args._module is None:
            issue = args._issue
            raise NotBuiltYet(f"forge {args.command}: not built yet",
                              f"it comes with issue #{issue} ({ISSUE_TITLES.get(issue, '')})")
        mod = importlib.import_module(args._module)
        return int(mod.run(args) or 0)
    except ForgeError as e:
        if args.debug:
            raise
        print(f"forge {args.command}: error: {e.one_line()}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"forge {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `forge formats | head`: the reader left; say nothing more
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except Exception as e:  # a bug, or an error from a library we did not translate: still one line.
        if args.debug or os.environ.get("FORGE_DEBUG"):
            raise
        from .errors import is_out_of_space, out_of_space_error

        if is_out_of_space(e):  # a full disk is the user's to fix, wherever it struck
            err = out_of_space_error(getattr(e, "filename", None), "a file", removed=False)
            print(f"forge {args.command}: error: {err.one_line()}", file=sys.stderr)
            return err.exit_code
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"forge {args.command}: error: {type(e).__name__}: {msg} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 1


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
