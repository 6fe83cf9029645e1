#!/usr/bin/env bash
# Set up, then run lint, types and the whole test suite (CI runs exactly this).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
ruff check mmedge tests benchmarks
ruff format --check mmedge tests benchmarks
mypy
pytest "$@"
