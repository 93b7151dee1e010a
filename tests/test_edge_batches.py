"""An empty batch in a TensorFlow graph whose batch size is unknown when it
is traced (the shape check cannot be static there).

Every layer's module in tests/layers/ runs `check_empty_batch` (an empty
batch gives an empty output and leaves every state as it was, in training
and at inference, with zero, never NaN, gradients); this one adds the
traced graph of unknown batch size for a layer with moving statistics.
"""

import keras
import pytest

import keras_norms as kn
from tests import layer_checks

BACKEND = keras.backend.backend()


@pytest.mark.skipif(BACKEND != "tensorflow", reason="a graph of unknown batch")
def test_empty_batch_in_a_graph_of_unknown_batch_size_keeps_state():
    layer_checks.check_empty_batch_in_an_unknown_batch_graph(
        lambda: kn.EvoNormB0(momentum=0.5)
    )
