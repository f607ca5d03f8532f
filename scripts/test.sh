#!/usr/bin/env bash
# Set up (idempotent), then lint, type-check and run the whole test suite (slow tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check src tests benchmarks testkit
.venv/bin/mypy src
exec .venv/bin/pytest -q "$@"
