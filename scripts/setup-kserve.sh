#!/usr/bin/env bash
# Idempotent: a separate virtual environment, .venv-kserve, holding KServe's Python model
# server (kserve.ModelServer) and onnxruntime, which the tests and benchmarks verify ONNX
# exports behind (testkit/servers/kserve.py). KServe's pins (fastapi, pydantic, grpcio,
# protobuf, ...) stay out of the main .venv and out of .venv-serving.
# Override the location with VERIPRINT_KSERVE_VENV.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VERIPRINT_KSERVE_VENV:-.venv-kserve}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
REQS=(kserve==0.21.0 onnxruntime==1.32.0)

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
# keep the environment out of git without touching the repository's .gitignore
[ -f "$VENV/.gitignore" ] || echo '*' > "$VENV/.gitignore"
stamp="$VENV/.veriprint-kserve"
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
"$VENV/bin/python" -c "import kserve, onnxruntime"
