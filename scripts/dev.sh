#!/usr/bin/env bash
# Set everything up and run rangekv locally. Arguments go to `rangekv dev`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec "${RANGEKV_VENV:-.venv}/bin/rangekv" dev "$@"
