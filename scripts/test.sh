#!/usr/bin/env bash
# Set everything up (idempotent), then run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PYTHONUNBUFFERED=1
# Tiny model fixtures are cached across runs here, keyed by their definition.
export FORGE_FIXTURE_CACHE=${FORGE_FIXTURE_CACHE:-$PWD/.cache/fixtures}
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ $rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi
exit $rc
