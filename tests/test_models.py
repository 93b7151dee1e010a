"""Several keras_norms layers in one Keras model (each layer's own tests
are in its module under tests/layers/)."""

import keras
import numpy as np

import keras_norms as kn
from tests import helpers


def test_functional_model_with_unknown_spatial_size_in_compiled_predict():
    inputs = keras.Input((None, None, 4))
    h = kn.GroupNormalization(groups=2)(inputs)
    h = kn.InstanceNormalization()(h)
    h = kn.BatchNormalization()(h)
    outputs = kn.LayerNormalization()(h)
    model = keras.Model(inputs, outputs)
    for size in (5, 7):
        x = helpers.random_input((3, size, size, 4), loc=1.0)
        y = model.predict(x, verbose=0)
        assert y.shape == x.shape
        np.testing.assert_allclose(y, helpers.to_numpy(model(x)), atol=1e-5)
