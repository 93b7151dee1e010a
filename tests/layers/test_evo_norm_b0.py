"""EvoNormB0 and `kn.ops.evo_norm_b0`.

Reference: NumPy (float64) written from the paper's formula
(`x / max(sqrt(batch_var + eps), v * x + sqrt(instance_var + eps)) *
gamma + beta`, the epsilons as in timm's `EvoNorm2dB0`), with input and
weight gradients by central finite differences of it, in training (batch
variance) and inference (moving variance).
"""

import keras
import numpy as np
import pytest

import keras_norms as kn
from tests import helpers
from tests import layer_checks
from tests.helpers import to_numpy

EPS = 1e-5


def b0_reference(x, v, gamma, beta, axis=-1, variance=None, epsilon=EPS):
    """EvoNorm-B0 in float64, channels at `axis`; per-channel `(C,)`
    weights; `variance` (moving) replaces the batch variance if given."""
    x = np.moveaxis(np.asarray(x, "float64"), axis, -1)
    spatial = tuple(range(1, x.ndim - 1))
    if variance is None:
        variance = x.var(axis=(0,) + spatial)
    instance = x.var(axis=spatial, keepdims=True)
    denominator = np.maximum(
        np.sqrt(variance + epsilon), v * x + np.sqrt(instance + epsilon)
    )
    return np.moveaxis(x / denominator * gamma + beta, -1, axis)


def batch_variance(x, axis):
    x = np.moveaxis(np.asarray(x, "float64"), axis, -1)
    return x.reshape(-1, x.shape[-1]).var(axis=0)


def _input(shape, axis, seed=0):
    x = helpers.random_input(shape, seed=seed, loc=0.3, scale=2.0)
    return helpers.channels_at(x, axis)


def _weights(layer, seed):
    helpers.set_random_weights(layer, seed=seed)
    return {w.name: to_numpy(w).astype("float64") for w in layer.weights}


@pytest.mark.parametrize("shape", [(3, 5, 4), (2, 3, 4, 5), (2, 2, 3, 2, 3)])
@pytest.mark.parametrize("axis", [-1, 1])
@pytest.mark.parametrize("training", [True, False])
def test_matches_numpy_forward_and_gradients(shape, axis, training):
    x = _input(shape, axis)
    layer = kn.EvoNormB0(axis=axis)
    layer.build(x.shape)
    w = _weights(layer, seed=len(shape))
    upstream = helpers.random_input(x.shape, seed=5)
    y, dx, grads = helpers.forward_and_grads(layer, x, upstream, training)
    x64 = x.astype("float64")
    moving = None if training else w["moving_variance"]

    def ref():
        return b0_reference(
            x64, w["v"], w["gamma"], w["beta"], axis, variance=moving
        )

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


@pytest.mark.parametrize("axis", [-1, 1])
def test_moving_variance_updates_and_is_used_at_inference(axis):
    x = _input((4, 3, 3, 5), axis, seed=1)
    layer = kn.EvoNormB0(axis=axis, momentum=0.8)
    y = to_numpy(layer(x, training=True))
    ones = np.ones(5)
    np.testing.assert_allclose(
        y, b0_reference(x, ones, ones, 0.0, axis), rtol=1e-5, atol=1e-6
    )
    expected = 0.8 + 0.2 * batch_variance(x, axis)  # biased, Keras' way
    np.testing.assert_allclose(
        to_numpy(layer.moving_variance), expected, rtol=1e-5
    )
    # Inference: the moving variance, no update.
    x2 = _input((2, 3, 3, 5), axis, seed=2)
    y2 = to_numpy(layer(x2, training=False))
    np.testing.assert_allclose(
        y2,
        b0_reference(x2, ones, ones, 0.0, axis, variance=expected),
        rtol=1e-5,
        atol=1e-6,
    )
    np.testing.assert_allclose(
        to_numpy(layer.moving_variance), expected, rtol=1e-5
    )
    # use_global_stats and trainable=False: inference form while training.
    for frozen in (
        kn.EvoNormB0(axis=axis, use_global_stats=True),
        kn.EvoNormB0(axis=axis, trainable=False),
    ):
        y3 = to_numpy(frozen(x, training=True))
        np.testing.assert_allclose(
            y3,
            b0_reference(x, ones, ones, 0.0, axis, variance=ones),
            rtol=1e-5,
            atol=1e-6,
        )
        np.testing.assert_array_equal(to_numpy(frozen.moving_variance), ones)


def test_op_equals_layer_and_returns_the_batch_variance():
    x = _input((3, 4, 6), -1, seed=3)
    result = kn.ops.evo_norm_b0(x)
    assert result.mean is None
    np.testing.assert_allclose(
        to_numpy(result.variance), batch_variance(x, -1), rtol=1e-5
    )
    np.testing.assert_allclose(
        to_numpy(result.outputs),
        to_numpy(kn.EvoNormB0()(x, training=True)),
        rtol=1e-6,
        atol=1e-7,
    )
    moving = np.full((6,), 2.0, "float32")
    inference = kn.ops.evo_norm_b0(x, variance=moving)
    ones = np.ones(6)
    np.testing.assert_allclose(
        to_numpy(inference.outputs),
        b0_reference(x, ones, ones, 0.0, variance=moving),
        rtol=1e-5,
        atol=1e-6,
    )


def test_empty_batch_keeps_the_moving_variance():
    layer = kn.EvoNormB0()
    y = layer(np.zeros((0, 3, 4), "float32"), training=True)
    assert tuple(y.shape) == (0, 3, 4)
    np.testing.assert_array_equal(to_numpy(layer.moving_variance), np.ones(4))


def test_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    for axis in (-1, 1):
        x = _input((4, 4, 4, 8), axis, seed=4)
        layer = kn.EvoNormB0(axis=axis, momentum=0.5)
        ones = np.ones(8)
        for training in (True, False):
            y = layer(x, training=training)
            assert keras.backend.standardize_dtype(y.dtype) == "float16"
        for w in layer.weights:
            assert keras.backend.standardize_dtype(w.dtype) == "float32"
        # Statistics in float32 (as the package's other layers, the
        # float32 input is not rounded to float16 first): the moving
        # variance is exact to float32.
        np.testing.assert_allclose(
            to_numpy(layer.moving_variance),
            0.5 + 0.5 * batch_variance(x, axis),
            rtol=1e-5,
        )
        y = to_numpy(layer(x, training=True)).astype("float64")
        np.testing.assert_allclose(
            y, b0_reference(x, ones, ones, 0.0, axis), rtol=5e-3, atol=5e-3
        )


def test_config_fit_saves_and_loads_and_optimize_for_inference(tmp_path):
    layer = kn.EvoNormB0(
        axis=1,
        momentum=0.9,
        epsilon=1e-3,
        use_global_stats=True,
        scale=False,
        moving_variance_initializer="zeros",
    )
    clone = helpers.assert_config_round_trip(layer)
    assert (clone.axis, clone.momentum, clone.epsilon) == (1, 0.9, 1e-3)
    assert clone.use_global_stats
    assert "moving_mean_initializer" not in layer.get_config()
    model = keras.Sequential(
        [
            keras.Input((6, 6, 3)),
            keras.layers.Conv2D(8, 3),
            kn.EvoNormB0(momentum=0.5, name="evo"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(2),
        ]
    )
    model.compile(keras.optimizers.SGD(0.1), "mse")
    x = helpers.random_input((16, 6, 6, 3), seed=6)
    y = helpers.random_input((16, 2), seed=7)
    evo = model.get_layer("evo")
    before = {w.name: to_numpy(w) for w in evo.weights}
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    for w in evo.weights:
        assert np.abs(to_numpy(w) - before[w.name]).max() > 1e-6, w.name
    loaded = helpers.assert_saves_and_loads(model, x, tmp_path)
    np.testing.assert_array_equal(
        to_numpy(loaded.get_layer("evo").moving_variance),
        to_numpy(evo.moving_variance),
    )
    # Not a per-channel map at inference: kept as is, same outputs.
    optimized = kn.optimize_for_inference(model, verbose=0)
    assert helpers.count_layers(optimized, kn.EvoNormB0) == 1
    np.testing.assert_allclose(
        helpers.infer(optimized, x),
        helpers.infer(model, x),
        rtol=1e-5,
        atol=1e-5,
    )


def test_bad_arguments_raise_clearly():
    with pytest.raises(ValueError, match="Received: momentum=2"):
        kn.EvoNormB0(momentum=2.0)
    with pytest.raises(ValueError, match="Received: epsilon=0"):
        kn.EvoNormB0(epsilon=0.0)
    with pytest.raises(TypeError, match="Received: use_global_stats=1"):
        kn.EvoNormB0(use_global_stats=1)
    with pytest.raises(ValueError, match="spatial axis"):
        kn.EvoNormB0()(np.ones((4, 3), "float32"))
    with pytest.raises(ValueError, match="Received: axis=4"):
        kn.EvoNormB0(axis=4)(np.ones((2, 3, 3, 2), "float32"))
    with pytest.raises(ValueError, match="ndim=2"):
        kn.ops.evo_norm_b0(np.ones((4, 3), "float32"))


class TestSharedChecks(layer_checks.LayerChecks):
    cases = {
        "channels_last": layer_checks.Case(
            lambda: kn.EvoNormB0(momentum=0.5),
            (4, 3, 3, 4),
            state=("moving_variance",),
        ),
        "channels_first": layer_checks.Case(
            lambda: kn.EvoNormB0(axis=1),
            (4, 3, 3, 4),
            state=("moving_variance",),
            fit=False,
        ),
    }
    masking = layer_checks.Masking(lambda: kn.EvoNormB0(), (4, 6, 3))
    test_weights_match_keras_twin = None
