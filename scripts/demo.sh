#!/usr/bin/env bash
# Set up (idempotent), then run the demo: verify the shipped model and tampered copies with its shipped fingerprint
# (--regenerate makes a new fingerprint here, --train a new model too).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/veriprint demo "$@"
