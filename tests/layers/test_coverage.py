"""Every public layer has its module here, runs the shared checks, and
has its rows in the docs."""

import importlib
import pathlib
import re

import keras

import keras_norms as kn
from tests import layer_checks


def _public_layers():
    return {
        name: getattr(kn, name)
        for name in kn.__all__
        if isinstance(getattr(kn, name), type)
        and issubclass(getattr(kn, name), keras.layers.Layer)
    }


def test_every_public_layer_has_a_module_running_the_shared_checks():
    for name, cls in _public_layers().items():
        snake = re.sub(
            r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name
        )
        module = importlib.import_module(f"tests.layers.test_{snake.lower()}")
        checks = module.TestSharedChecks
        assert issubclass(checks, layer_checks.LayerChecks), module.__name__
        built = {type(case.make()) for case in checks.cases.values()}
        assert built == {cls}, (module.__name__, built)


ROOT = pathlib.Path(__file__).resolve().parents[2]
# Docs tables a normalization layer has a row in, by file; `Affine` (a
# fixed scale and shift, what folding leaves) is a tool, not a norm to
# choose, and has its row in the API index only.
_TABLES = {
    "README.md": {"Affine"},
    "docs/api/index.md": set(),
    "docs/guide/choosing.md": {"Affine"},
}


def test_every_public_layer_is_in_the_docs():
    api_pages = "".join(
        page.read_text() for page in (ROOT / "docs" / "api").glob("*.md")
    )
    missing = []
    for name in _public_layers():
        for path, exempt in _TABLES.items():
            text = (ROOT / path).read_text()
            # A table row naming the layer (first cell or a later link).
            row = re.search(rf"^\|.*`{name}`.*\|\s*$", text, re.MULTILINE)
            if name not in exempt and row is None:
                missing.append(f"{path}: a table row for {name}")
        entry = rf"^::: keras_norms\.layers\.\w+\.{name}$"
        if not re.search(entry, api_pages, re.MULTILINE):
            missing.append(
                f"docs/api/*.md: `::: keras_norms.layers.<module>.{name}`"
            )
    assert not missing, "\n".join(missing)
