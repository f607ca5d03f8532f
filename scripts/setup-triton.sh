#!/usr/bin/env bash
# Idempotent: a separate virtual environment, .venv-triton, holding NVIDIA Triton through
# PyTriton (nvidia-pytriton bundles the server) and onnxruntime, for the Triton tests and
# benchmark (testkit/servers/triton.py serves ONNX files with testkit/servers/triton_app.py).
# Override the location with VERIPRINT_TRITON_VENV.
#
# It is made with Debian's /usr/bin/python3.11, whatever python3.11 is first on PATH:
# Triton's Python-backend stub links against the system's libpython3.11.so.1.0 (Debian's
# 3.11.2) and imports the environment's standard library, so an environment of another
# 3.11 build (pyenv's 3.11.7) loads no model ("'_thread.RLock' object has no attribute
# '_recursion_count'"). Debian's python3.11-venv and libpython3.11 are installed by
# scripts/setup.sh; VERIPRINT_TRITON_PYTHON overrides the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VERIPRINT_TRITON_VENV:-.venv-triton}
PY=${VERIPRINT_TRITON_PYTHON:-/usr/bin/python3.11}
REQS=(nvidia-pytriton==0.7.0 onnxruntime==1.32.0 numpy==1.26.4)

if [ ! -x "$PY" ]; then
  echo "error: $PY is missing: install Debian's python3.11 and python3.11-venv (scripts/setup.sh does it)" >&2
  exit 1
fi
if [ -x "$VENV/bin/python" ] && [ "$("$VENV/bin/python" -c 'import sys; print(sys._base_executable)')" != "$PY" ] \
   && [ "$(readlink -f "$VENV/bin/python")" != "$(readlink -f "$PY")" ]; then
  echo "note: $VENV was made with another Python than $PY; making it again" >&2
  rm -rf "$VENV"
fi
if [ ! -x "$VENV/bin/python" ]; then
  if ! "$PY" -m venv "$VENV"; then
    echo "error: $PY cannot make a virtual environment: install Debian's python3.11-venv" >&2
    rm -rf "$VENV"
    exit 1
  fi
fi
# keep the environment out of git without touching the repository's .gitignore
[ -f "$VENV/.gitignore" ] || echo '*' > "$VENV/.gitignore"
stamp="$VENV/.veriprint-triton"
want="${REQS[*]}"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  rm -f "$stamp"
  log="$VENV/install.log"
  if ! { "$VENV/bin/python" -m pip install -q --upgrade pip \
         && "$VENV/bin/python" -m pip install -q "${REQS[@]}"; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "error: could not install ${want} into $VENV" >&2
    exit 1
  fi
  echo "$want" > "$stamp"
fi
"$VENV/bin/python" -c "import onnxruntime, pytriton.triton" \
  || { echo "error: $VENV cannot import pytriton and onnxruntime: remove it and run this again" >&2; exit 1; }
