#!/usr/bin/env bash
# Build the documentation (MkDocs Material + mkdocstrings) in strict mode
# into site/: any warning (broken link, unknown cross-reference, docstring
# griffe cannot parse) fails the build. Installs the pinned `docs` extra
# into .venv (or $VENV) first, like scripts/install.sh.
# Usage: bash scripts/build_docs.sh [extra mkdocs build args]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check \
  -c constraints.txt -e ".[docs]"
# Redraw the axes figure only if it is missing (it is committed).
if [ ! -f docs/figures/normalization_axes.png ]; then
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
    -c constraints.txt matplotlib
  "$VENV/bin/python" examples/plot_normalization_axes.py --out docs/figures
fi
NO_MKDOCS_2_WARNING=1 "$VENV/bin/python" -m mkdocs build --strict \
  --site-dir site "$@"
echo "docs built into site/index.html"
