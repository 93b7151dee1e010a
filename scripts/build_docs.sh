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
start=$EPOCHREALTIME
NO_MKDOCS_2_WARNING=1 "$VENV/bin/python" -m mkdocs build --strict \
  --site-dir site "$@"
# The site must work offline: no page or stylesheet may load anything (a
# script, a stylesheet, a font, an image) from another host. (Material's
# own script bundle names two CDN URLs it loads only on demand: a
# ResizeObserver polyfill for browsers from before 2020 and Mermaid for
# pages with a diagram; we have neither, so .js files are not scanned.)
"$VENV/bin/python" - site <<'PY'
import pathlib, re, sys
load = re.compile(
    r"""<(?:script|img|iframe|source)\b[^>]*\bsrc=["']?(?:https?:)?//"""
    r"""|<link\b[^>]*\bhref=["']?(?:https?:)?//"""
    r"""|@import\s+(?:url\()?["']?(?:https?:)?//"""
    r"""|url\(["']?(?:https?:)?//""",
    re.I,
)
cdn = re.compile(r"unpkg\.com|jsdelivr|cdnjs|googleapis|gstatic|polyfill\.io", re.I)
bad = []
for path in sorted(pathlib.Path(sys.argv[1]).rglob("*")):
    if path.suffix in (".html", ".css") and path.is_file():
        text = path.read_text(encoding="utf-8", errors="replace")
        for m in list(load.finditer(text)) + list(cdn.finditer(text)):
            line = text.count("\n", 0, m.start()) + 1
            bad.append(f"{path}:{line}: {text[m.start():m.start() + 80]!r}")
if bad:
    sys.exit("the built site loads from other hosts (it must work offline):\n"
             + "\n".join(bad[:20]))
print("site/ loads nothing from another host (offline check passed)")
PY
seconds=$("$VENV/bin/python" -c "print(f'{$EPOCHREALTIME - $start:.1f}')")
echo "docs built into site/index.html in $seconds s (mkdocs build and offline check)"
