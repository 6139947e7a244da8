"""The one error type the CLI and TUI turn into a single line (exit code 2).

Raise ``ForgeError`` for anything the user can fix: bad input, a missing file, an unsupported architecture. Its
message says what and where (``file:line: field: what is wrong``, or a recipe key); ``hint`` says what to do.
Anything else that escapes is a bug: the CLI still prints one line, and the traceback only with ``--debug``.
"""

from __future__ import annotations


class ForgeError(Exception):
    """A user-facing failure: one line of what went wrong and where, plus what to do about it."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.one_line()

    def one_line(self) -> str:
        text = " ".join(self.message.split("\n"))
        if self.hint:
            text += f" ({' '.join(self.hint.split())})" if not self.hint.startswith("—") else f" {self.hint}"
        return text


class NotBuiltYet(ForgeError):
    """A product subcommand whose issue has not landed yet."""
