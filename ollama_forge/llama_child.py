"""Run llama.cpp work (quantizing, loading a GGUF) in a child process, so a crash there is one clear line.

llama.cpp aborts the whole process on an internal assertion (GGML_ABORT), and reports most failures only in its C
log. Here the work runs in ``python -m ollama_forge.llama_child``: the child's stdout and stderr (where llama.cpp
logs, and where an abort prints) go to a log file kept in the run directory, and the parent turns every outcome into
either the function's JSON result or a ``ForgeError`` quoting the log's last lines and naming the file.

Use: ``run_in_child("ollama_forge.quantize:_child_quantize", {"inp": ..., ...}, log_path=..., what="quantize")``.
The target must be a function in the ``ollama_forge`` package taking JSON-able keyword arguments and returning a
JSON-able value.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from ollama_forge.errors import ForgeError
from ollama_forge.testhooks import kill_point

TAIL_LINES = 4  # log lines quoted in the error: llama.cpp's reason is usually the last one or two
TELLING = re.compile(r"\b(error|failed|abort(ed)?|assert(ion)?|exception|unknown|invalid|cannot|could not|"
                     r"not supported|traceback)\b", re.IGNORECASE)


def log_tail(path: Path, n: int = TAIL_LINES, max_chars: int = 400, reasons_only: bool = False) -> str:
    """The log's last lines that give a reason (error, failed, assert...), else its last ``n`` lines (nothing
    with ``reasons_only``), joined into one line."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 16384))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    lines = [" ".join(line.split()) for line in text.splitlines()]
    lines = [line for line in lines if line]
    # llama.cpp logs pages of loader chatter before the reason: quote the lines that give one when there are any.
    telling = [line for line in lines[-40:] if TELLING.search(line)]
    picked = telling[-2:] if telling else ([] if reasons_only else lines[-n:])
    tail = " | ".join(picked)
    return tail if len(tail) <= max_chars else "..." + tail[-max_chars:]


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL me when the parent dies, so a killed forge leaves no orphan quantizer
    writing into a temporary file (Linux prctl PR_SET_PDEATHSIG; elsewhere the orphan finishes and its partial
    file is removed by the next run)."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except OSError:
        pass


def run_in_child(target: str, kwargs: dict[str, Any], *, log_path: str | os.PathLike, what: str,
                 timeout: float | None = None) -> Any:
    """Call ``target`` ("package.module:function") with ``kwargs`` in a fresh Python process; return its result.

    The child's output is appended to ``log_path``. Raises ForgeError when the function raised, when llama.cpp
    killed the process (abort, segfault) or when ``timeout`` seconds pass.
    """
    module, _, func = target.partition(":")
    if not module.startswith("ollama_forge.") or not func:
        raise ValueError(f"run_in_child: target must be 'ollama_forge.<module>:<function>', not {target!r}")
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="forge-child-") as tmp:
        args_file, result_file = Path(tmp) / "args.json", Path(tmp) / "result.json"
        args_file.write_text(json.dumps(kwargs), encoding="utf-8")
        cmd = [sys.executable, "-m", "ollama_forge.llama_child", target, str(args_file), str(result_file)]
        with open(log_path, "ab") as log:
            log.write(f"==> {what}: {target}\n".encode())
            log.flush()
            try:
                proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                        preexec_fn=_die_with_parent if sys.platform == "linux" else None)
                kill_point("child")  # crash tests: the parent dies while llama.cpp works
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                    raise
            except subprocess.TimeoutExpired:
                raise ForgeError(f"{what}: no result after {timeout:.0f}s; stopped it",
                                 f"log: {log_path}") from None
        result = None
        if result_file.is_file():
            try:
                result = json.loads(result_file.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                result = None
    if proc.returncode < 0:
        tail = log_tail(log_path)
        raise ForgeError(f"{what}: llama.cpp crashed ({_signal_name(proc.returncode)})"
                         + (f": {tail}" if tail else ""), f"full log: {log_path}")
    if result is None:
        tail = log_tail(log_path)
        raise ForgeError(f"{what}: the worker process exited with code {proc.returncode} and no result"
                         + (f": {tail}" if tail else ""), f"full log: {log_path}")
    if not result.get("ok"):
        reason = log_tail(log_path, reasons_only=True)
        message = result.get("error") or "failed"
        if reason:
            message += f" (log: {reason})"
        hint = f"{result['hint']}; full log: {log_path}" if result.get("hint") else f"full log: {log_path}"
        raise ForgeError(f"{what}: {message}", hint)
    return result.get("result")


def model_info(path: str) -> dict[str, Any]:
    """Child-side: load a GGUF with llama.cpp (weights memory-mapped, no context) and describe it.

    ``run_in_child("ollama_forge.llama_child:model_info", {"path": p}, log_path=..., what=f"load {p}")`` is the
    cheap "does llama.cpp load this file" check; a file llama.cpp rejects becomes a ForgeError with its reason.
    """
    import ctypes

    import llama_cpp

    llama_cpp.llama_backend_init()
    model = llama_cpp.llama_model_load_from_file(path.encode(), llama_cpp.llama_model_default_params())
    if not model:
        raise ForgeError(f"{path}: llama.cpp could not load it", "is it a GGUF written by forge convert?")
    try:
        buf = ctypes.create_string_buffer(256)
        llama_cpp.llama_model_desc(model, buf, len(buf))
        template = llama_cpp.llama_model_chat_template(model, None)
        return {"description": buf.value.decode("utf-8", "replace"),
                "n_params": int(llama_cpp.llama_model_n_params(model)),
                "size_bytes": int(llama_cpp.llama_model_size(model)),
                "n_vocab": int(llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(model))),
                "n_ctx_train": int(llama_cpp.llama_model_n_ctx_train(model)),
                "has_chat_template": bool(template)}
    finally:
        llama_cpp.llama_model_free(model)


def self_check(mode: str = "ok") -> str:
    """A child-side probe for tests and diagnostics: "ok" answers, "abort" dies as a GGML_ABORT does (SIGABRT),
    "raise" raises."""
    if mode == "abort":
        print("self_check: simulated GGML_ABORT", file=sys.stderr, flush=True)
        os.abort()
    if mode == "raise":
        raise RuntimeError("self-check failure")
    return "ok"


def _child_main(argv: list[str]) -> int:
    target, args_file, result_file = argv
    module, _, func = target.partition(":")
    out: dict[str, Any]
    try:
        import importlib

        fn = getattr(importlib.import_module(module), func)
        kwargs = json.loads(Path(args_file).read_text(encoding="utf-8"))
        out = {"ok": True, "result": fn(**kwargs)}
    except ForgeError as e:
        out = {"ok": False, "type": "ForgeError", "error": e.message, "hint": e.hint}
    except Exception as e:  # reported to the parent as one line; the traceback goes to the log
        import traceback

        traceback.print_exc()
        out = {"ok": False, "type": type(e).__name__, "error": f"{type(e).__name__}: {' '.join(str(e).split())}"}
    sys.stdout.flush()
    sys.stderr.flush()
    Path(result_file).write_text(json.dumps(out), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
