#!/usr/bin/env bash
# Install everything, then run the end-to-end demo (examples/demo.py).
# Usage: bash scripts/demo.sh [demo args]   (KERAS_BACKEND picks the backend)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
VENV=${VENV:-.venv}
export TF_CPP_MIN_LOG_LEVEL=3
exec "$VENV/bin/python" examples/demo.py "$@"
