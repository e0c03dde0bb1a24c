#!/usr/bin/env bash
# Create (or refresh) the project's virtualenv in .venv with every runtime and
# dev dependency, the repository installed in editable mode.
# Needs only Python >= 3.11 and the package registry.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV="${RANGEKV_VENV:-.venv}"

if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
  echo "rangekv needs Python >= 3.11; $PYTHON is $("$PYTHON" --version 2>&1)" >&2
  exit 1
fi

stamp="$VENV/.rangekv-installed"
if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating virtualenv $VENV"
  "$PYTHON" -m venv "$VENV"
fi
# Reinstall when pyproject.toml changed since the last install.
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "==> installing rangekv and its dependencies into $VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[dev]'
  touch "$stamp"
fi
# buf reads the googleapis protos the contract imports from build/proto-deps.
"$VENV/bin/python" scripts/gen_protos.py --deps >/dev/null
echo "==> $VENV is ready ($("$VENV/bin/python" --version))"
