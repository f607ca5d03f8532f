#!/usr/bin/env bash
# Idempotent: a separate virtual environment, .venv-serving, holding Seldon MLServer and
# onnxruntime for the tests and benchmarks that verify a model behind a real server.
# Its pins (pydantic, fastapi, uvloop, protobuf, ...) stay out of the main .venv.
# Override the location with VERIPRINT_SERVING_VENV.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VERIPRINT_SERVING_VENV:-.venv-serving}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
REQS=(mlserver==1.7.1 onnxruntime==1.32.0)

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
# keep the environment out of git without touching the repository's .gitignore
[ -f "$VENV/.gitignore" ] || echo '*' > "$VENV/.gitignore"
stamp="$VENV/.veriprint-serving"
want="${REQS[*]}"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  log="$VENV/install.log"
  if ! { "$VENV/bin/python" -m pip install -q --upgrade pip \
         && "$VENV/bin/python" -m pip install -q "${REQS[@]}"; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "error: could not install ${want} into $VENV" >&2
    exit 1
  fi
  echo "$want" > "$stamp"
fi
"$VENV/bin/mlserver" --version >/dev/null
