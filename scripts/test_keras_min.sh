#!/usr/bin/env bash
# The lower end of the supported Keras range: a separate venv with the
# oldest Keras we support (constraints-keras-min.txt; everything else as
# pinned in constraints.txt) runs the layer and conversion tests on torch.
# Left out: the comparisons with behaviour newer Keras added (renorm in
# keras.layers.BatchNormalization, its mask on any axis, LayerNormalization's
# rms_scaling warning), which Keras 3.10 does not have.
# The upper end is the main suite (constraints.txt's keras).
# Usage: bash scripts/test_keras_min.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV_KERAS_MIN:-.venv-keras-min}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
# pip refuses two constraints on one package: drop constraints.txt's keras.
grep -v '^keras==' constraints.txt > "$VENV/constraints-without-keras.txt"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check \
  -c "$VENV/constraints-without-keras.txt" -c constraints-keras-min.txt \
  -e ".[torch,test]"
export KERAS_BACKEND=torch
echo "=== lowest Keras: $("$VENV/bin/python" -c 'import keras; print(keras.__version__)') (KERAS_BACKEND=torch)"
"$VENV/bin/python" -m pytest -q -p no:cacheprovider \
  -W ignore::DeprecationWarning tests/layers/test_batch_normalization.py \
  tests/layers/test_layer_normalization.py \
  tests/layers/test_instance_normalization.py \
  tests/layers/test_group_normalization.py \
  tests/test_conversion.py \
  -k "not renorm_equals_keras and not keras_twin[renorm] and not mask_on_any_axis and not rms_scaling_matches_keras" \
  "$@"
