#!/usr/bin/env bash
# Remake the shipped language models: train the byte-level BPE tokenizer and the small
# Llama on Debian's fortunes-min (installed by scripts/setup.sh), and write the model
# folder, its sibling checkpoint, the seed prompts and a manifest (SHA-256 of every file,
# the command and the machine) to src/veriprint/assets/lm. Training runs on this
# machine's CPU, so the files can differ from one machine to another: commit them only
# on purpose (every LM fingerprint made against the old files then needs remaking).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
if [ ! -f /usr/share/games/fortunes/literature ]; then
  echo "error: the corpus is missing: apt-get install fortunes-min" >&2
  exit 2
fi
out=src/veriprint/assets/lm
rm -rf "$out/fortunes-lm" "$out/fortunes-lm-sibling"
HF_HUB_OFFLINE=1 PYTHONPATH=src "$PYTHON" -m veriprint.lm.train --out "$out"
