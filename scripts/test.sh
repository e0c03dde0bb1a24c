#!/usr/bin/env bash
# Set everything up and run every check: ruff, buf lint, stub freshness, mypy, pytest.
# Extra arguments go to pytest, e.g.: scripts/test.sh tests/consensus -x
# Long runs: RANGEKV_SIM_SEEDS=5000 scripts/test.sh tests/consensus
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
VENV="${RANGEKV_VENV:-.venv}"
export PATH="$PWD/$VENV/bin:$PATH"

echo "==> ruff"
ruff check .
ruff format --check .
echo "==> buf lint"
buf lint
echo "==> generated stubs are fresh"
python scripts/gen_protos.py --check
echo "==> mypy"
mypy
echo "==> pytest"
python -m pytest "$@"
