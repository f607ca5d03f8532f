#!/usr/bin/env bash
# Remake the demo's shipped artefacts: train the reference CNN from scratch (empty cache),
# fingerprint it, and write weights, fingerprint and manifest (SHA-256, command, machine)
# to src/veriprint/assets/demo, then rewrite the README's demo table. Training and
# generation run on this machine's CPU, so the files differ from one machine to another:
# commit them only on purpose.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
cache=$(mktemp -d)
trap 'rm -rf "$cache"' EXIT
VERIPRINT_CACHE=$cache "$PYTHON" -m veriprint.cli.main demo --train --export src/veriprint/assets/demo --quiet
"$PYTHON" -m veriprint.cli.main demo --write-readme README.md --quiet
