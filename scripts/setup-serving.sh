#!/usr/bin/env bash
# Idempotent: a separate virtual environment, .venv-serving, holding the real model servers
# that the tests and benchmarks verify models behind: Seldon MLServer (with onnxruntime) and
# TorchServe (its Python workers import torch, so the CPU wheel is installed here too).
# Their pins (pydantic, fastapi, uvloop, protobuf, ...) stay out of the main .venv.
# Override the location with VERIPRINT_SERVING_VENV.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VERIPRINT_SERVING_VENV:-.venv-serving}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
REQS=(mlserver==1.7.1 onnxruntime==1.32.0 torchserve==0.12.0 torch-model-archiver==0.12.0 pyyaml torch==2.13.0)

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
[ -x "$VENV/bin/torchserve" ] && [ -x "$VENV/bin/torch-model-archiver" ]
