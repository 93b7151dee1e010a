"""MkDocs hook: render the formulas to MathML at build time (no MathJax, no CDN).

`pymdownx.arithmatex` (generic mode) protects `$...$` and `$$...$$` from
Markdown and wraps them as `<span class="arithmatex">\\(...\\)</span>` and
`<div class="arithmatex">\\[...\\]</div>`; this hook, listed under `hooks:`
in mkdocs.yml, replaces each with the MathML that `latex2mathml` (pure
Python, pinned in constraints.txt) makes of it. Browsers render MathML
natively, so the built site needs no script and works offline. A formula
latex2mathml cannot convert fails the build, naming the page.
"""

import html
import re

from latex2mathml.converter import convert

_MATH = re.compile(
    r'<(span|div) class="arithmatex">\s*\\([(\[])(.*?)\\[)\]]\s*</\1>', re.S
)


def _render(match, page):
    tag, opener, tex = match.groups()
    tex = html.unescape(tex).strip()
    display = "block" if opener == "[" else "inline"
    try:
        mathml = convert(tex, display=display)
    except Exception as e:  # noqa: BLE001 (any converter error fails the build)
        raise ValueError(
            f"{page.file.src_path}: cannot render the formula {tex!r} as "
            f"MathML: {type(e).__name__}: {e}"
        ) from e
    return f'<{tag} class="arithmatex">{mathml}</{tag}>'


def on_page_content(html_text, page, **kwargs):
    return _MATH.sub(lambda m: _render(m, page), html_text)
