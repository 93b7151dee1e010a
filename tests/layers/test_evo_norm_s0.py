"""EvoNormS0 and `kn.ops.evo_norm_s0`.

Reference: NumPy (float64) written from the paper's formula
(`x * sigmoid(v * x) / group_std(x) * gamma + beta`, epsilon inside the
square root as in timm and the TF model garden), with input and weight
gradients by central finite differences of it.
"""

import keras
import numpy as np
import pytest

import keras_norms as kn
from tests import helpers
from tests import layer_checks
from tests.helpers import to_numpy

EPS = 1e-5


def s0_reference(x, groups, v, gamma, beta, axis=-1, epsilon=EPS):
    """EvoNorm-S0 in float64 on channels at `axis`, by reshaping to
    (N, ..., groups, C / groups) channels-last (the paper's code);
    `v`, `gamma`, `beta` per channel, shape `(C,)` (or scalars)."""
    x = np.moveaxis(np.asarray(x, "float64"), axis, -1)
    shape = x.shape
    grouped = x.reshape(shape[0], -1, groups, shape[-1] // groups)
    variance = grouped.var(axis=(1, 3), keepdims=True)
    std = np.broadcast_to(np.sqrt(variance + epsilon), grouped.shape)
    std = std.reshape(shape)
    gate = 1.0 / (1.0 + np.exp(-v * x))
    y = x * gate / std * gamma + beta
    return np.moveaxis(y, -1, axis)


def _input(shape, axis, seed=0):
    x = helpers.random_input(shape, seed=seed, loc=0.5, scale=2.0)
    return helpers.channels_at(x, axis)


def _weights(layer, seed):
    """Random `gamma`, `beta`, `v` set on the layer, as float64 arrays."""
    helpers.set_random_weights(layer, seed=seed)
    return {w.name: to_numpy(w).astype("float64") for w in layer.weights}


@pytest.mark.parametrize(
    "shape,groups",
    [((3, 4), 2), ((2, 5, 6), 3), ((2, 3, 4, 8), 4), ((2, 2, 3, 2, 4), -1)],
)
@pytest.mark.parametrize("axis", [-1, 1])
def test_matches_numpy_forward_and_gradients(shape, groups, axis):
    x = _input(shape, axis)
    layer = kn.EvoNormS0(groups=groups, axis=axis)
    layer.build(x.shape)
    w = _weights(layer, seed=len(shape))
    upstream = helpers.random_input(x.shape, seed=5)
    y, dx, grads = helpers.forward_and_grads(layer, x, upstream)
    x64 = x.astype("float64")
    count = groups if groups > 0 else shape[-1]

    def ref():
        return s0_reference(x64, count, w["v"], w["gamma"], w["beta"], axis)

    np.testing.assert_allclose(y, ref(), rtol=1e-4, atol=1e-5)
    ref_grads = helpers.numeric_gradients(
        lambda: np.sum(ref() * upstream),
        [x64, w["gamma"], w["beta"], w["v"]],
    )
    np.testing.assert_allclose(dx, ref_grads[0], rtol=1e-3, atol=1e-4)
    for name, ref_grad in zip(("gamma", "beta", "v"), ref_grads[1:]):
        np.testing.assert_allclose(
            grads[name], ref_grad, rtol=1e-3, atol=1e-4, err_msg=name
        )


def test_defaults_and_training_independence():
    """Ones, ones, zeros at init; training and inference the same; the op
    equals the layer."""
    x = _input((2, 4, 4, 64), -1, seed=1)
    layer = kn.EvoNormS0()
    y_train = to_numpy(layer(x, training=True))
    y_infer = to_numpy(layer(x, training=False))
    np.testing.assert_array_equal(y_train, y_infer)
    assert [w.name for w in layer.weights] == ["gamma", "beta", "v"]
    for w, value in zip(layer.weights, (1.0, 0.0, 1.0)):
        np.testing.assert_array_equal(to_numpy(w), np.full((64,), value))
    ones = np.ones(64)
    np.testing.assert_allclose(
        y_train, s0_reference(x, 32, ones, ones, 0.0), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        to_numpy(kn.ops.evo_norm_s0(x, 32)), y_train, rtol=1e-6, atol=1e-7
    )
    assert layer.non_trainable_weights == []


def test_large_mean_keeps_precision():
    """Two-pass group statistics: a mean of 1e4 with std 1 stays exact."""
    x = helpers.random_input((2, 3, 3, 4), seed=2, loc=1e4)
    y = to_numpy(kn.ops.evo_norm_s0(x, 2, epsilon=1e-3))
    ones = np.ones(4)
    np.testing.assert_allclose(
        y, s0_reference(x, 2, ones, ones, 0.0, epsilon=1e-3), rtol=1e-4
    )


def test_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    for axis in (-1, 1):
        x = _input((2, 4, 4, 8), axis, seed=3)
        layer = kn.EvoNormS0(groups=4, axis=axis)
        y = layer(x)
        assert keras.backend.standardize_dtype(y.dtype) == "float16"
        for w in layer.weights:
            assert keras.backend.standardize_dtype(w.dtype) == "float32"
        ones = np.ones(8)
        np.testing.assert_allclose(
            to_numpy(y).astype("float64"),
            s0_reference(x.astype("float16"), 4, ones, ones, 0.0, axis),
            rtol=5e-3,
            atol=5e-3,
        )


def test_config_fit_and_saves_and_loads(tmp_path):
    layer = kn.EvoNormS0(
        groups=-1,
        axis=1,
        epsilon=1e-3,
        center=False,
        v_initializer="zeros",
        v_regularizer="l2",
    )
    clone = helpers.assert_config_round_trip(layer)
    assert (clone.groups, clone.axis, clone.epsilon) == (-1, 1, 1e-3)
    model = keras.Sequential(
        [
            keras.Input((6, 6, 3)),
            keras.layers.Conv2D(8, 3),
            kn.EvoNormS0(groups=4, name="evo"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(2),
        ]
    )
    model.compile(keras.optimizers.SGD(0.1), "mse")
    x = helpers.random_input((16, 6, 6, 3), seed=4)
    y = helpers.random_input((16, 2), seed=5)
    before = {w.name: to_numpy(w) for w in model.get_layer("evo").weights}
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    for w in model.get_layer("evo").weights:
        assert np.abs(to_numpy(w) - before[w.name]).max() > 1e-6, w.name
    helpers.assert_saves_and_loads(model, x, tmp_path)


def test_bad_arguments_raise_clearly():
    with pytest.raises(ValueError, match="Received: groups=0"):
        kn.EvoNormS0(groups=0)
    with pytest.raises(ValueError, match="Received: groups=3"):
        kn.EvoNormS0(groups=3)(np.ones((2, 2, 2, 8), "float32"))
    with pytest.raises(ValueError, match="Received: epsilon=0"):
        kn.EvoNormS0(epsilon=0.0)
    with pytest.raises(TypeError, match="Received: axis="):
        kn.EvoNormS0(axis="channels")
    with pytest.raises(ValueError, match="Received: axis=4"):
        kn.EvoNormS0(groups=1, axis=4)(np.ones((2, 3, 3, 2), "float32"))
    with pytest.raises(ValueError, match="Received: groups=3"):
        kn.ops.evo_norm_s0(np.ones((2, 8), "float32"), 3)
    with pytest.raises(TypeError, match="Received: groups=2.0"):
        kn.ops.evo_norm_s0(np.ones((2, 8), "float32"), 2.0)


class TestSharedChecks(layer_checks.LayerChecks):
    cases = {
        "channels_last": layer_checks.Case(
            lambda: kn.EvoNormS0(groups=2), (2, 3, 3, 4), state=()
        ),
        "channels_first": layer_checks.Case(
            lambda: kn.EvoNormS0(groups=3, axis=1),
            (2, 3, 3, 4),
            state=(),
            fit=False,
        ),
    }
    masking = layer_checks.Masking(lambda: kn.EvoNormS0(groups=3), (4, 6, 3))
    test_weights_match_keras_twin = None
