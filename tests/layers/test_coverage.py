"""Every public layer has its module here, and it runs the shared checks."""

import importlib
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
