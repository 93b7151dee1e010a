"""The `Examples:` of every public docstring run as doctests, on this backend.

Every object of `keras_norms.__all__` (classes with their methods, and
functions) and every function of `keras_norms.ops.__all__` that has a
`>>>` example is run with the standard library's `doctest`, one test per
object, on the current Keras backend (the suite runs once per backend).
Examples see `keras`, `np` (NumPy) and `kn` (`keras_norms`) already
imported, as Keras' own docstring examples see `keras`, `np` and `ops`, and
print only what every backend prints alike: shapes as tuples, values
through `np.round(keras.ops.convert_to_numpy(y), 3)`, weight names.

Every public class and tool of the package must have one (the API pages
would otherwise show none); the few exceptions are listed with the reason.
The functional ops in `keras_norms.ops` are run when they have one.
"""

import doctest
import inspect
import re

import keras
import numpy as np
import pytest

import keras_norms
from keras_norms import ops as kn_ops

OPTIONFLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
_EXAMPLES_HEADING = re.compile(r"^\s*Examples:\s*$", re.MULTILINE)

# Public objects of `keras_norms.__all__` that have no doctest, and why.
WITHOUT_EXAMPLE = {
    "export_saved_model": "writes a SavedModel, through a TensorFlow child "
    "process on torch: seconds, not a doctest (docs/guide/export.md runs it)",
    "export": "writes an artifact and runs it in a fresh process with its "
    "runtime: seconds, not a doctest (tests/test_deploy.py runs it)",
    "ops": "a module: its public functions are collected one by one",
}


def _public_objects():
    """`(qualified name, object)` of each public object, in `__all__` order."""
    objects = [
        (f"keras_norms.{name}", getattr(keras_norms, name))
        for name in keras_norms.__all__
    ]
    objects += [
        (f"keras_norms.ops.{name}", getattr(kn_ops, name))
        for name in kn_ops.__all__
    ]
    return objects


def _doctests(name, obj):
    """The doctests in `obj`'s docstring and, for a class, its methods'."""
    if inspect.ismodule(obj):
        return []
    finder = doctest.DocTestFinder(exclude_empty=True)
    globs = {"keras": keras, "np": np, "kn": keras_norms}
    tests = finder.find(obj, name, globs=globs)
    return [test for test in tests if test.examples]


PUBLIC = _public_objects()
WITH_EXAMPLES = [(name, obj) for name, obj in PUBLIC if _doctests(name, obj)]


def test_every_public_object_has_an_example():
    missing = [
        name
        for name, obj in PUBLIC
        if name.startswith("keras_norms.")
        and not name.startswith("keras_norms.ops.")
        and name.removeprefix("keras_norms.") not in WITHOUT_EXAMPLE
        and not _doctests(name, obj)
    ]
    assert not missing, (
        "these public objects have no `>>>` example in their docstring "
        f"(add an `Examples:` section): {missing}"
    )
    stale = sorted(set(WITHOUT_EXAMPLE) - set(keras_norms.__all__))
    assert not stale, f"WITHOUT_EXAMPLE names objects that are gone: {stale}"


@pytest.mark.parametrize(
    "name, obj", WITH_EXAMPLES, ids=[name for name, _ in WITH_EXAMPLES]
)
def test_docstring_example(name, obj):
    tests = _doctests(name, obj)
    for test in tests:
        # griffe (the API pages) renders `>>>` lines as code only inside a
        # section titled `Examples:`; anywhere else they become nested
        # Markdown block quotes.
        assert _EXAMPLES_HEADING.search(test.docstring), (
            f"{test.name}: put the `>>>` example under an `Examples:` "
            "heading (the only title griffe renders as code)"
        )
    keras.utils.set_random_seed(0)
    report = []
    runner = doctest.DocTestRunner(optionflags=OPTIONFLAGS)
    for test in tests:
        runner.run(test, out=report.append)
    result = runner.summarize(verbose=False)
    assert result.attempted > 0
    assert result.failed == 0, "".join(report)
