"""`import keras_norms` reaches no private API; `_compat` is the one door.

Keras itself imports many `keras.src` modules, so the runtime check
compares, in one fresh interpreter, the modules loaded by `import keras`
with those loaded by `import keras_norms` after it: keras_norms may add
its own modules and nothing of `keras.src`, TensorFlow, JAX or torch.
The static check reads the sources: a private Keras, TensorFlow or torch
name appears only in `keras_norms/_compat.py`.
"""

import json
import pathlib
import re

import keras
import pytest

from tests import helpers

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "keras_norms"
# `keras.src` and its modules; TensorFlow, JAX and torch with theirs.
_FRAMEWORKS = ("tensorflow", "jax", "jaxlib", "torch")

_PROBE = """
import json, sys


def loaded():
    return {
        m for m in sys.modules
        if m.split(".")[:2] == ["keras", "src"]
        or m.split(".")[0] in %r
    }

import keras
before = loaded()
import keras_norms
after = loaded()
print(json.dumps({"before": len(before), "added": sorted(after - before),
                  "file": keras_norms.__file__}))
"""


def test_import_keras_norms_adds_no_framework_module():
    result = helpers.run_python(_PROBE % (_FRAMEWORKS,))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    # The probe imported this checkout, and `import keras` did load Keras.
    assert pathlib.Path(report["file"]).resolve().parent == PACKAGE
    assert report["before"] > 0
    assert report["added"] == [], (
        f"`import keras_norms` on {keras.backend.backend()} imports "
        f"{report['added'][:10]} beyond what `import keras` loads: reach "
        "them lazily, through keras_norms._compat"
    )


# Private names of the frameworks: `keras.src`, `jax._src`, and the
# underscore modules, functions and methods of Keras', TensorFlow's and
# torch's internals keras_norms needs.
_PRIVATE = re.compile(
    r"keras\.src\b|jax\._src\b|tensorflow\.python\b|control_flow_util"
    r"|\b_functional_collectives|\b_get_default_store|unsafe_get_axis_names"
    r"|\b_flatten_layers\b|\b_compute_causal_padding\b"
)


def _code_lines(path):
    """`(number, line)` of the lines outside docstrings and comments."""
    in_string = False
    for number, line in enumerate(path.read_text().splitlines(), 1):
        stripped = line.strip()
        quotes = stripped.count('"""') + stripped.count("'''")
        if in_string or stripped.startswith(('"""', "'''")):
            if quotes % 2 == 1:
                in_string = not in_string
            continue
        if stripped.startswith("#"):
            continue
        yield number, line


@pytest.mark.parametrize(
    "path",
    sorted(PACKAGE.rglob("*.py")),
    ids=lambda p: str(p.relative_to(PACKAGE)),
)
def test_private_framework_names_only_in_compat(path):
    relative = str(path.relative_to(PACKAGE))
    if relative == "_compat.py":
        pytest.skip("the compatibility module, or not moved onto it yet")
    found = [
        f"{relative}:{number}: {line.strip()}"
        for number, line in _code_lines(path)
        if _PRIVATE.search(line)
    ]
    assert not found, "Reach private APIs through keras_norms._compat:\n" + (
        "\n".join(found)
    )


def test_compat_imports_nothing_private_at_module_level():
    # Each private import happens inside the function that needs it.
    source = (PACKAGE / "_compat.py").read_text()
    top_level_imports = [
        line
        for line in source.splitlines()
        if line.startswith(("import ", "from "))
    ]
    assert top_level_imports == ["import importlib"]


def test_compat_backend_helpers():
    # The helpers the backend modules call: each answers on its backend.
    from keras_norms import _compat

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        seen = []

        def probe(x):
            seen.append(_compat.tf_in_xla_context())
            return x + 1

        assert _compat.tf_in_xla_context() is False  # eager
        tf.function(probe, jit_compile=True)(tf.constant(1.0))
        tf.function(probe, jit_compile=False)(tf.constant(1.0))
        assert seen == [True, False]
    elif backend == "torch":
        fc = _compat.torch_functional_collectives()
        assert fc is None or callable(fc.all_reduce)
    else:
        assert _compat.jax_axis_names() == ()
