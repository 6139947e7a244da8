"""`forge convert` (HF directory -> F16 GGUF) beside `cp` + fsync of the same bytes, on a Qwen2.5-0.5B-shaped random
model in bf16 safetensors (about 1 GB): wall time and peak RSS of each as a fresh process, medians of --runs, printed
as ratios (goals: forge's peak RSS <= 0.5x the safetensors bytes, its wall time <= 3x the copy's).

Both sides read from the page cache (the files are read once first) and both fsync their output (forge's atomic
rename fsyncs the file; the copy side calls fsync after cp), so the copy is the floor for moving these bytes.

    .venv/bin/python bench/convert.py [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CACHE, measure, qwen05b  # noqa: E402

COPY_AND_FSYNC = """
import os, subprocess, sys
*srcs, dst_dir = sys.argv[1:]
for src in srcs:
    dst = os.path.join(dst_dir, os.path.basename(src))
    subprocess.run(["cp", src, dst], check=True)
    fd = os.open(dst, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3, help="fresh processes per side; medians are printed")
    args = ap.parse_args()
    base = qwen05b("bfloat16")
    shards = sorted(base.glob("*.safetensors"))
    size = sum(f.stat().st_size for f in shards)
    for f in shards:  # warm the page cache: both sides then measure conversion/copy, not the first disk read
        with open(f, "rb") as fh:
            while fh.read(64 << 20):
                pass
    out = CACHE / "convert-bench-f16.gguf"
    copy_dir = CACHE / "convert-bench-copy"
    copy_dir.mkdir(parents=True, exist_ok=True)
    forge_runs, copy_runs = [], []
    for _ in range(args.runs):
        out.unlink(missing_ok=True)
        forge_runs.append(measure([sys.executable, "-m", "ollama_forge", "-q", "convert", str(base), "-o", str(out)]))
        gguf_size = out.stat().st_size
        out.unlink()
        for f in copy_dir.iterdir():
            f.unlink()
        copy_runs.append(measure([sys.executable, "-c", COPY_AND_FSYNC, *map(str, shards), str(copy_dir)]))
        for f in copy_dir.iterdir():
            f.unlink()
    f_wall = statistics.median(w for w, _ in forge_runs)
    f_rss = statistics.median(r for _, r in forge_runs)
    c_wall = statistics.median(w for w, _ in copy_runs)
    c_rss = statistics.median(r for _, r in copy_runs)
    print(f"model: Qwen2.5-0.5B-shaped, bf16, {size / 1e6:.0f} MB safetensors -> {gguf_size / 1e6:.0f} MB F16 GGUF "
          f"(medians of {args.runs} fresh processes)")
    print(f"forge convert : {f_wall:6.2f} s  peak RSS {f_rss:6.0f} MB")
    print(f"cp + fsync    : {c_wall:6.2f} s  peak RSS {c_rss:6.0f} MB")
    print(f"ratios        : wall {f_wall / c_wall:.2f}x the copy (goal <= 3x); "
          f"peak RSS {f_rss * 1e6 / size:.2f}x the safetensors bytes (goal <= 0.5x)")


if __name__ == "__main__":
    main()
