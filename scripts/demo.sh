#!/usr/bin/env bash
# Set up, then run the main job on the shipped reference model: `mmedge run`, one recipe through
# every target to one report (re-running it skips every step whose inputs did not change).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
set -x
mmedge doctor
# Prune + distil, ONNX Runtime and OpenVINO at FP32 and INT8, a TensorRT bundle; compare, bench
# and per-branch parity for each; report at runs/reference/run/report.html (.md, .json).
mmedge run recipes/reference.yaml -o runs/reference/run
