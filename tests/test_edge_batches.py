"""Empty batches for the layers whose modules in tests/layers/ do not run
the shared checks yet (tests/layers/test_coverage.py lists them); the
others get `check_empty_batch` from tests/layer_checks.py in their module.

An empty batch gives an empty output and leaves every state as it was, in
training and at inference, with zero (never NaN) gradients (issue 21,
item 4). AdaptiveInstance and Conditional normalization take two inputs:
their modules test it.
"""

import keras
import pytest

import keras_norms as kn
from tests import layer_checks

BACKEND = keras.backend.backend()

EMPTY_LAYERS = {
    "evo_s0": lambda: kn.EvoNormS0(groups=2),
    "evo_b0": lambda: kn.EvoNormB0(momentum=0.5),
    "evo_b0_cf": lambda: kn.EvoNormB0(axis=1, momentum=0.5),
    "lrn": lambda: kn.LocalResponseNormalization(depth_radius=1),
}


@pytest.mark.parametrize("name", sorted(EMPTY_LAYERS))
def test_empty_batch_gives_empty_output_and_keeps_state(name):
    layer_checks.check_empty_batch(EMPTY_LAYERS[name], (2, 3, 3, 4))


@pytest.mark.skipif(BACKEND != "tensorflow", reason="a graph of unknown batch")
def test_empty_batch_in_a_graph_of_unknown_batch_size_keeps_state():
    layer_checks.check_empty_batch_in_an_unknown_batch_graph(
        EMPTY_LAYERS["evo_b0"]
    )
