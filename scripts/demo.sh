#!/usr/bin/env bash
# Set everything up (idempotent, timed separately), then run the offline demo of the chain on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)
bash scripts/setup.sh
echo "[demo] set-up took $(( $(date +%s) - t0 )) s" >&2
exec .venv/bin/forge demo "$@"
