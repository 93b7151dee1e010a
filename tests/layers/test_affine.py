"""Affine, the fixed per-channel scale and shift of a frozen
BatchNormalization: `from_batch_normalization` against the layers it
replaces, on every backend; plus the shared checks (tests/layer_checks.py).

Elsewhere: Affine against NumPy and as a product of folding in
tests/test_folding.py.
"""

import keras
import numpy as np
import pytest

import keras_norms as kn
from tests import helpers
from tests import layer_checks


class TestSharedChecks(layer_checks.LayerChecks):
    cases = {
        "channels_last": layer_checks.Case(lambda: kn.Affine(), (2, 3, 3, 4)),
        "channels_first": layer_checks.Case(
            lambda: kn.Affine(axis=1), (4, 3, 5), fit=False
        ),
    }
    masking = layer_checks.Masking(kn.Affine, (4, 6, 3))
    test_weights_match_keras_twin = None  # keras.layers has no Affine


@pytest.mark.parametrize(
    "make",
    [
        lambda: keras.layers.BatchNormalization(axis=1, epsilon=1e-2),
        lambda: kn.BatchNormalization(),
        lambda: kn.SyncBatchNormalization(axis=-1, center=False),
    ],
)
def test_from_batch_normalization_equals_the_frozen_layer(make):
    bn = make()
    shape = (3, 4, 5, 4)
    bn.build(shape)
    helpers.set_random_weights(bn, seed=2)
    affine = kn.Affine.from_batch_normalization(bn, name="frozen")
    assert affine.name == "frozen" and affine.axis == bn.axis
    assert [w.name for w in affine.weights] == ["scale", "offset"]
    assert not affine.trainable_weights
    x = helpers.random_input(shape, loc=1.0, scale=2.0)
    expected = helpers.to_numpy(bn(x, training=False))
    for training in (True, False):  # `training` has no effect on Affine
        np.testing.assert_allclose(
            helpers.to_numpy(affine(x, training=training)),
            expected,
            rtol=1e-5,
            atol=1e-5,
        )


def test_bad_arguments_and_shapes_refused():
    with pytest.raises(TypeError, match="axis"):
        kn.Affine(axis="1")
    with pytest.raises(ValueError, match=r"known size.*Received: axis=-1"):
        kn.Affine().build((2, 3, None))
