#!/usr/bin/env bash
# Set up, then run the main job on the shipped reference model: export FP32, quantize INT8,
# compare both with PyTorch FP32 on the held-out split, benchmark both on this machine.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
set -x
mmedge inspect recipes/reference.yaml
mmedge export recipes/reference.yaml --target onnxruntime --precision fp32 -o runs/reference/onnxruntime-fp32
mmedge quantize recipes/reference.yaml --target onnxruntime -o runs/reference/onnxruntime-int8
mmedge compare runs/reference/onnxruntime-fp32
mmedge compare runs/reference/onnxruntime-int8
mmedge bench runs/reference/onnxruntime-fp32
mmedge bench runs/reference/onnxruntime-int8
