#!/usr/bin/env bash
# Create .venv (or $VENV) and install keras_norms with the pinned versions
# of every backend (constraints.txt): TensorFlow, JAX and torch (CPU), and
# the deploy runtimes (ONNX Runtime, LiteRT, OpenVINO) kn.export checks in.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check \
  -c constraints.txt -e ".[all,test,examples,deploy]"
