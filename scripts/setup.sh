#!/usr/bin/env bash
# One-shot, idempotent set-up: .venv with pinned dependencies, llama-cpp-python built once and reused,
# Go (reference renderer for Ollama templates) when apt is available.
# A second run does nothing but verify (a few seconds).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python3}
VENV=${FORGE_VENV:-$ROOT/.venv}
CACHE=${FORGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ollama-forge}
LLAMA_VERSION=0.3.36
t0=$(date +%s)
log() { printf '[setup] %s\n' "$*" >&2; }

# Constraints: this machine kind (Linux x86-64, no GPU) gets the CPU torch that lies on disk.
CONSTRAINTS=()
if [ "$(uname -s)" = Linux ] && ! command -v nvidia-smi >/dev/null 2>&1; then
  CONSTRAINTS=(-c "$ROOT/constraints/linux-cpu.txt")
fi

if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV"
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
PIP=("$VPY" -m pip install --disable-pip-version-check -q)

# llama-cpp-python compiles llama.cpp with -march=native (~10 min on 2 cores). The built wheel is cached under a
# key made of the CPU's feature flags, so a wheel is never reused on a CPU lacking an instruction it was built with.
cpu_key=$( (grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || sysctl -n machdep.cpu.features 2>/dev/null || uname -m) \
  | tr ' ' '\n' | sort | tr -d '\n' | sha256sum | cut -c1-16)
WHEELDIR="$CACHE/wheels/llama-cpp-python-$LLAMA_VERSION-$(uname -m)-$cpu_key"
if ! "$VPY" -c "import llama_cpp" >/dev/null 2>&1; then
  if ! ls "$WHEELDIR"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    log "building llama-cpp-python $LLAMA_VERSION once (about 10 min on 2 cores) into $WHEELDIR"
    mkdir -p "$WHEELDIR.tmp"
    CMAKE_BUILD_PARALLEL_LEVEL=$(nproc 2>/dev/null || echo 2) \
      "$VPY" -m pip wheel --disable-pip-version-check -q --no-deps -w "$WHEELDIR.tmp" "llama-cpp-python==$LLAMA_VERSION"
    rm -rf "$WHEELDIR" && mv "$WHEELDIR.tmp" "$WHEELDIR"
  else
    log "reusing cached llama-cpp-python wheel from $WHEELDIR"
  fi
  "${PIP[@]}" "${CONSTRAINTS[@]}" "$WHEELDIR"/llama_cpp_python-*.whl
fi

stamp="$VENV/.forge-installed"
want=$(cat pyproject.toml constraints/linux-cpu.txt | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  # torch first: installing trl/peft into an environment without torch resolves the newest (CUDA) build.
  if [ ${#CONSTRAINTS[@]} -gt 0 ]; then "${PIP[@]}" "${CONSTRAINTS[@]}" torch==2.13.0; fi
  log "installing ollama-forge and its dependencies"
  "${PIP[@]}" "${CONSTRAINTS[@]}" -e ".[dev]"
  echo "$want" > "$stamp"
fi

# Go renders Ollama TEMPLATEs in the parity tests (stdlib text/template only, compiles offline).
if ! command -v go >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    log "installing golang-go (apt)"
    (apt-get install -y -qq golang-go >/dev/null 2>&1 || (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq golang-go >/dev/null 2>&1)) \
      || log "could not install golang-go: template parity tests will fail"
  else
    log "Go not found: install Go to run the template parity tests"
  fi
fi
log "ready in $(( $(date +%s) - t0 )) s"
