"""The one error type the CLI and TUI turn into a single line (exit code 2).

Raise ``ForgeError`` for anything the user can fix: bad input, a missing file, an unsupported architecture. Its
message says what and where (``file:line: field: what is wrong``, or a recipe key); ``hint`` says what to do.
Anything else that escapes is a bug: the CLI still prints one line, and the traceback only with ``--debug``.
"""

from __future__ import annotations

import contextlib as _contextlib
import errno as _errno
import os as _os
import re as _re


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


class Stopped(ForgeError):
    """The user asked a running stage to stop (TUI stop key, Ctrl-C in a worker): it saved what resumes it."""

    exit_code = 130


# ---------------------------------------------------------------------------------------------------------------
# A full disk: one line that names the file and says what to do, whichever library reported it.

_NO_SPACE_ERRNOS = {_errno.ENOSPC, _errno.EDQUOT, _errno.EFBIG}
# How libraries that lose the errno say it: Python/Rust ("No space left on device (os error 28)"), numpy's tofile
# ("26624 requested and 11984 written": a short write), quotas.
_NO_SPACE_TEXT = _re.compile(r"no space left on device|os error 28|errno 28|disk quota exceeded|file too large|"
                             r"\d+ requested and \d+ written", _re.IGNORECASE)
LOW_SPACE_BYTES = 1 << 20  # a write that failed with less than this free on its filesystem failed for lack of space


def free_bytes(path: str | _os.PathLike) -> int | None:
    """Bytes free to an unprivileged writer on the filesystem holding ``path`` (or its nearest existing parent)."""
    p = _os.path.abspath(path)
    while p and not _os.path.exists(p):
        parent = _os.path.dirname(p)
        if parent == p:
            break
        p = parent
    try:
        st = _os.statvfs(p)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def is_out_of_space(exc: BaseException, path: str | _os.PathLike | None = None) -> bool:
    """Whether ``exc`` (or an exception it was raised from) is a write that failed because the disk is full.

    ``path``: where the write went; a failed write (torch's "file write failed") with almost nothing free there
    counts too, since some writers lose the errno."""
    seen = 0
    e: BaseException | None = exc
    while e is not None and seen < 8:
        if isinstance(e, OSError) and e.errno in _NO_SPACE_ERRNOS:
            return True
        if _NO_SPACE_TEXT.search(str(e)):
            return True
        if path is not None and "write" in str(e).lower():
            free = free_bytes(path)
            if free is not None and free < LOW_SPACE_BYTES:
                return True
        e = e.__cause__ or e.__context__
        seen += 1
    return False


def out_of_space_error(path: str | _os.PathLike | None, what: str, removed: bool = True) -> ForgeError:
    where = f"{path}: " if path is not None else ""
    return ForgeError(f"{where}no space left on the device while writing {what}",
                      "free some space (or write to another disk) and rerun"
                      + ("; the unfinished file was removed" if removed else ""))


@_contextlib.contextmanager
def disk_space(path: str | _os.PathLike, what: str):
    """Turn a full disk while writing ``path`` into one ForgeError line (the writer removes its partial file)."""
    try:
        yield
    except ForgeError:
        raise
    except Exception as e:
        if is_out_of_space(e, path):
            raise out_of_space_error(path, what) from None
        raise
