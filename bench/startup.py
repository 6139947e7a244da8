"""Start-up time of `forge --help` beside `python -c pass` (goal: <= 0.3 s), and the time to the first frame of
`forge tui` (goal: <= 1.5 s), medians of fresh processes.

    .venv/bin/python bench/startup.py [--runs 7]

The TUI runs in a real pseudo-terminal (80x24) on an empty runs folder: its first frame is timed from just before
the process is spawned (FORGE_TUI_T0) to Textual's Ready event (FORGE_TUI_FIRST_FRAME names the file the app writes
the elapsed seconds to, then it exits).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def wall(cmd: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, cwd=REPO)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def tui_first_frame(runs: int, timeout: float = 30.0) -> float:
    """Median seconds from spawn to the TUI's first frame, in a pty sized 80x24."""
    import fcntl
    import pty
    import struct
    import termios

    times = []
    with tempfile.TemporaryDirectory(prefix="forge-tui-bench-") as tmp:
        for i in range(runs):
            out = Path(tmp) / f"frame-{i}"
            master, slave = pty.openpty()
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
            env = {**os.environ, "FORGE_TUI_FIRST_FRAME": str(out), "FORGE_TUI_T0": repr(time.time()),
                   "FORGE_DATA_DIR": tmp, "TERM": "xterm-256color", "OLLAMA_HOST": "127.0.0.1:9"}
            proc = subprocess.Popen([sys.executable, "-m", "ollama_forge", "tui", "--runs", str(Path(tmp) / "runs")],
                                    stdin=slave, stdout=slave, stderr=slave, cwd=tmp, env=env, close_fds=True)
            os.close(slave)

            def drain() -> None:  # the app blocks if nobody reads what it draws
                try:
                    while os.read(master, 65536):
                        pass
                except OSError:
                    pass

            threading.Thread(target=drain, daemon=True).start()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise SystemExit(f"forge tui did not show a frame within {timeout:.0f} s")
            finally:
                os.close(master)
            if not out.is_file():
                raise SystemExit(f"forge tui exited with {proc.returncode} before its first frame")
            times.append(float(out.read_text()))
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    base = wall([sys.executable, "-c", "pass"], args.runs)
    helpt = wall([sys.executable, "-m", "ollama_forge", "--help"], args.runs)
    tui = tui_first_frame(args.runs)
    print(f"python -c pass : {base:.3f} s (median of {args.runs})")
    print(f"forge --help   : {helpt:.3f} s (median of {args.runs}); goal <= 0.300 s")
    print(f"ratio          : {helpt / base:.2f}x python start-up; forge's own cost {helpt - base:.3f} s")
    print(f"forge tui      : {tui:.3f} s to the first frame (median of {args.runs}, 80x24 pty); goal <= 1.500 s")


if __name__ == "__main__":
    main()
