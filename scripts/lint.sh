#!/usr/bin/env bash
# ruff (pinned in constraints.txt, installed with the test extra): the lint
# rules and the formatter configured in pyproject.toml, over everything.
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
[ -x "$VENV/bin/ruff" ] || bash scripts/install.sh || exit 1
status=0
"$VENV/bin/ruff" check . || status=1
"$VENV/bin/ruff" format --check . || status=1
exit $status
