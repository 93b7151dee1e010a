#!/usr/bin/env bash
# Install everything, then run the test suite once per Keras backend.
# Usage: bash scripts/test.sh [pytest args]   (BACKENDS="jax torch" to pick)
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh || exit 1
VENV=${VENV:-.venv}
export TF_CPP_MIN_LOG_LEVEL=3
passed=0; failed=0; skipped=0; status=0
for backend in ${BACKENDS:-tensorflow jax torch}; do
  echo "=== KERAS_BACKEND=$backend"
  log=$(mktemp)
  KERAS_BACKEND=$backend "$VENV/bin/python" -m pytest -q -p no:cacheprovider \
    -W ignore::DeprecationWarning "$@" 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  [ "$rc" -eq 0 ] || { echo "!!! $backend: pytest exited $rc"; status=1; }
  summary=$(tail -n 1 "$log")
  count() { echo "$summary" | grep -oE "[0-9]+ $1" | grep -oE "[0-9]+" || echo 0; }
  passed=$((passed + $(count passed)))
  failed=$((failed + $(count failed) + $(count error)))
  skipped=$((skipped + $(count skipped)))
  rm -f "$log"
done
echo "all backends: $passed passed, $failed failed, $skipped skipped"
exit $status
