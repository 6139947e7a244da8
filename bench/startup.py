"""Start-up time of `forge --help` beside `python -c pass` (goal: <= 0.3 s), medians of fresh processes.

    .venv/bin/python bench/startup.py [--runs 7]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    base = wall([sys.executable, "-c", "pass"], args.runs)
    helpt = wall([sys.executable, "-m", "ollama_forge", "--help"], args.runs)
    print(f"python -c pass : {base:.3f} s (median of {args.runs})")
    print(f"forge --help   : {helpt:.3f} s (median of {args.runs}); goal <= 0.300 s")
    print(f"ratio          : {helpt / base:.2f}x python start-up; forge's own cost {helpt - base:.3f} s")


if __name__ == "__main__":
    main()
