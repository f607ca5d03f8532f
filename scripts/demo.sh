#!/usr/bin/env bash
# Set up (idempotent), then run the demo: fingerprint a model and verify intact and tampered copies.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/veriprint demo "$@"
