"""Every fenced ```python block of README.md and docs/**/*.md runs as written.

The blocks of one page run in order in one fresh namespace (like a
doctest), in a temporary working directory, on the current Keras backend.
A block may carry a directive: an HTML comment on the line right before its
opening fence (invisible on the rendered page),

    <!-- snippet: backend=jax -->                 only on these backends (a comma list)
    <!-- snippet: run=script backend=jax -->      a standalone script, run in a fresh
                                                  Python process (it configures devices
                                                  or a distribution before its backend
                                                  starts); not part of the page's namespace
    <!-- snippet: run=torchrun nproc=2 -->        a script launched as
                                                  `torchrun --standalone --nproc_per_node=2`
    <!-- snippet: ... stdout="text" -->           (scripts) the output must contain `text`
    <!-- snippet: backend=jax (why) -->           a trailing (reason) is a comment
    <!-- snippet: skip (reason) -->               not runnable (say why; keep these rare)
    <!-- snippet: xfail (reason) -->              known broken: must raise (a fixed block
                                                  then fails, so the marker gets removed)

and an unknown directive is an error at collection.
"""

import os
import re
import shlex
import subprocess
import sys
import traceback
from pathlib import Path

import keras
import pytest

ROOT = Path(__file__).resolve().parents[1]
BACKEND = keras.backend.backend()
BACKENDS = ("tensorflow", "jax", "torch")
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))

_FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")
_DIRECTIVE = re.compile(r"^\s*<!--\s*snippet:\s*(.*?)\s*-->\s*$")
_KEYS = {"backend", "run", "nproc", "stdout"}


class Block:
    def __init__(self, page, line, code, directive):
        self.page = page
        self.line = line  # 1-based line of the opening fence
        self.code = code
        self.backends = BACKENDS
        self.run = "page"
        self.nproc = 1
        self.stdout = []
        self.skip = self.xfail = None
        if directive is not None:
            self._parse(directive)

    @property
    def where(self):
        page = self.page
        if page.is_relative_to(ROOT):
            page = page.relative_to(ROOT)
        return f"{page}:{self.line}"

    def _parse(self, text):
        for word in ("skip", "xfail"):
            if text.split(" ", 1)[0] == word:
                reason = text[len(word) :].strip().strip("()").strip()
                if not reason:
                    raise ValueError(f"{self.where}: `{word}` needs a reason")
                setattr(self, word, reason)
                return
        text = re.sub(r"\s*\(.*\)\s*$", "", text)  # a trailing (reason)
        for token in shlex.split(text):
            key, sep, value = token.partition("=")
            if not sep or key not in _KEYS:
                raise ValueError(
                    f"{self.where}: unknown snippet directive {token!r} "
                    f"(expected one of {sorted(_KEYS)}, skip or xfail)"
                )
            if key == "backend":
                self.backends = tuple(value.split(","))
                if not set(self.backends) <= set(BACKENDS):
                    raise ValueError(
                        f"{self.where}: unknown backend in {token!r}"
                    )
            elif key == "run":
                if value not in ("page", "script", "torchrun"):
                    raise ValueError(
                        f"{self.where}: unknown run mode {value!r}"
                    )
                self.run = value
            elif key == "nproc":
                self.nproc = int(value)
            else:
                self.stdout.append(value)


def parse_page(path):
    """The fenced python blocks of a Markdown page, with their directives."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang = m.groups()
        start, i = i, i + 1
        body = []
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i][len(indent) :])
            i += 1
        i += 1
        previous = next(
            (lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), ""
        )
        d = _DIRECTIVE.match(previous)
        if lang in ("python", "py"):
            blocks.append(
                Block(path, start + 1, "\n".join(body) + "\n", d and d.group(1))
            )
        elif d:
            raise ValueError(
                f"{path}:{start + 1}: a snippet directive on a "
                f"{lang or 'plain'} block, not a python one"
            )
    return blocks


BLOCKS = {page: parse_page(page) for page in PAGES}
PAGE_CASES = [
    p for p, blocks in BLOCKS.items() if any(b.run == "page" for b in blocks)
]
SCRIPT_CASES = [
    b for blocks in BLOCKS.values() for b in blocks if b.run != "page"
]


def _skip_reason(block):
    if block.skip:
        return f"{block.where}: {block.skip}"
    if BACKEND not in block.backends:
        return f"{block.where}: for {', '.join(block.backends)} only"
    return None


def test_directives_are_few_and_every_page_is_collected():
    """The parser sees the blocks (a broken fence would hide them) and skips
    stay rare."""
    blocks = [b for bs in BLOCKS.values() for b in bs]
    assert len(blocks) >= 10, [b.where for b in blocks]
    skipped = [b.where for b in blocks if b.skip]
    assert len(skipped) <= 2, skipped


def test_parser_reads_directives_and_refuses_unknown_ones(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        'Text.\n\n<!-- snippet: run=torchrun nproc=2 backend=torch stdout="a b" -->\n'
        "```python\nprint('a b')\n```\n\n```bash\nls\n```\n\n"
        "<!-- snippet: skip (a shell session) -->\n```py\n$ ls\n```\n"
    )
    first, second = parse_page(page)
    assert (first.line, first.run, first.nproc) == (4, "torchrun", 2)
    assert (first.backends, first.stdout) == (("torch",), ["a b"])
    assert first.code == "print('a b')\n"
    assert second.skip == "a shell session" and second.run == "page"
    page.write_text("<!-- snippet: backends=jax -->\n```python\npass\n```\n")
    with pytest.raises(
        ValueError, match=r"page.md:2: unknown snippet directive"
    ):
        parse_page(page)
    page.write_text("<!-- snippet: skip -->\n```python\npass\n```\n")
    with pytest.raises(ValueError, match="needs a reason"):
        parse_page(page)


@pytest.mark.parametrize(
    "page", PAGE_CASES, ids=[str(p.relative_to(ROOT)) for p in PAGE_CASES]
)
def test_page_blocks_run_in_order(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__snippet__"}
    ran, skipped = 0, []
    for block in BLOCKS[page]:
        if block.run != "page":
            continue
        reason = _skip_reason(block)
        if reason:
            skipped.append(reason)
            continue
        code = compile(block.code, block.where, "exec")
        try:
            exec(code, namespace)
        except Exception as e:  # noqa: BLE001 (reported with the traceback)
            if block.xfail:
                ran += 1
                continue
            pytest.fail(
                f"{block.where} raised {type(e).__name__}: {e}\n"
                + "".join(traceback.format_exc(limit=-6))
            )
        if block.xfail:
            pytest.fail(
                f"{block.where} is marked xfail ({block.xfail}) but runs: "
                "remove the marker"
            )
        ran += 1
    if not ran:
        pytest.skip("; ".join(skipped))


@pytest.mark.parametrize(
    "block", SCRIPT_CASES, ids=[b.where for b in SCRIPT_CASES]
)
def test_script_blocks_run(block, tmp_path):
    reason = _skip_reason(block)
    if reason:
        pytest.skip(reason)
    script = tmp_path / f"snippet_{block.line}.py"
    script.write_text(block.code)
    if block.run == "torchrun":
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={block.nproc}",
            str(script),
        ]
    else:
        command = [sys.executable, str(script)]
    env = dict(os.environ, KERAS_BACKEND=BACKEND, TF_CPP_MIN_LOG_LEVEL="3")
    # The checkout's keras_norms, whatever is installed.
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p]
    )
    proc = subprocess.run(
        command,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{block.where}:\n{output[-6000:]}"
    for text in block.stdout:
        assert text in proc.stdout, (
            f"{block.where}: no {text!r} in\n{output[-4000:]}"
        )
