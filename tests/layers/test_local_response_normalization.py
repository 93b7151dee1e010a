"""LocalResponseNormalization and `kn.ops.local_response_normalization`.

References: NumPy (float64) written from TensorFlow's documented formula,
with gradients by central finite differences of it; the peers
`tf.nn.local_response_normalization` and
`torch.nn.functional.local_response_norm` (after the documented argument
mapping), each where importable, fed NumPy arrays on every backend.
"""

import importlib.util

import keras
import numpy as np
import pytest

import keras_norms as kn
from keras_norms.backend import native
from tests import helpers
from tests import layer_checks
from tests.helpers import to_numpy

HAS_TF = importlib.util.find_spec("tensorflow") is not None
HAS_TORCH = importlib.util.find_spec("torch") is not None

# (depth_radius, bias, alpha, beta): TF's defaults, AlexNet's (k=2,
# alpha=1e-4, beta=0.75 on n=5), beta 1 (its reciprocal special case) and
# a window wider than the channels.
CASES = [
    (5, 1.0, 1.0, 0.5),
    (2, 2.0, 1e-4, 0.75),
    (1, 0.5, 0.3, 1.0),
    (0, 1.0, 2.0, 0.5),
    (9, 1.5, 0.2, 0.6),
]


def lrn_reference(x, depth_radius, bias, alpha, beta, axis=-1):
    """TF's formula, float64, by an explicit loop over the channels."""
    x = np.moveaxis(np.asarray(x, "float64"), axis, -1)
    channels = x.shape[-1]
    sqr_sum = np.zeros_like(x)
    for d in range(channels):
        lo, hi = max(0, d - depth_radius), min(channels, d + depth_radius + 1)
        sqr_sum[..., d] = np.sum(x[..., lo:hi] ** 2, axis=-1)
    return np.moveaxis(x / (bias + alpha * sqr_sum) ** beta, -1, axis)


def _input(shape, axis, seed=0):
    """A channels-last random input moved to channels at `axis`."""
    return helpers.channels_at(
        helpers.random_input(shape, seed=seed, scale=1.5), axis
    )


@pytest.mark.parametrize("shape", [(2, 5, 7), (2, 3, 4, 6), (2, 2, 3, 2, 5)])
@pytest.mark.parametrize("axis", [-1, 1])
def test_matches_numpy_forward_and_gradients(shape, axis):
    for depth_radius, bias, alpha, beta in CASES[:3]:
        x = _input(shape, axis)
        layer = kn.LocalResponseNormalization(
            depth_radius, bias, alpha, beta, axis=axis
        )
        upstream = helpers.random_input(x.shape, seed=5)
        y, dx, grads = helpers.forward_and_grads(layer, x, upstream)
        assert grads == {}
        x64 = x.astype("float64")
        args = (depth_radius, bias, alpha, beta, axis)
        np.testing.assert_allclose(
            y, lrn_reference(x64, *args), rtol=2e-5, atol=1e-6
        )

        def loss(x64=x64, args=args, upstream=upstream):
            return np.sum(lrn_reference(x64, *args) * upstream)

        (ref_dx,) = helpers.numeric_gradients(loss, [x64])
        np.testing.assert_allclose(dx, ref_dx, rtol=1e-4, atol=1e-5)


def test_every_case_and_the_keras_ops_path_agree():
    """The op's fused kernel (TF eager NHWC float32) and its `keras.ops`
    path both equal the reference, channels-last and channels-first."""
    for case in CASES:
        for axis in (-1, 1):
            x = _input((3, 4, 5, 13), axis, seed=1)
            ref = lrn_reference(x, *case, axis=axis)
            y = to_numpy(
                kn.ops.local_response_normalization(x, *case, axis=axis)
            )
            np.testing.assert_allclose(y, ref, rtol=2e-5, atol=1e-6)
            with native.disabled():
                y_ops = to_numpy(
                    kn.ops.local_response_normalization(x, *case, axis=axis)
                )
            np.testing.assert_allclose(y_ops, ref, rtol=2e-5, atol=1e-6)


@pytest.mark.skipif(not HAS_TF, reason="TensorFlow is not installed")
@pytest.mark.parametrize("axis", [-1, 1])
def test_equals_tf_nn_local_response_normalization(axis):
    import tensorflow as tf

    for case in CASES:
        x_last = helpers.random_input((2, 6, 5, 16), seed=2, scale=2.0)
        expected = tf.nn.local_response_normalization(
            tf.constant(x_last), *case
        ).numpy()
        layer = kn.LocalResponseNormalization(*case, axis=axis)
        y = to_numpy(layer(helpers.channels_at(x_last, axis)))
        np.testing.assert_allclose(
            y, helpers.channels_at(expected, axis), rtol=2e-5, atol=1e-6
        )


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
@pytest.mark.parametrize("axis", [-1, 1])
def test_equals_torch_local_response_norm_after_mapping(axis):
    """`size = 2 * depth_radius + 1`, `alpha_torch = alpha * size`,
    `k = bias`: output and input gradient equal torch's (float64)."""
    import torch.nn.functional as F

    for depth_radius, bias, alpha, beta in CASES:
        size = 2 * depth_radius + 1
        x = _input((2, 3, 4, 12), axis, seed=3)
        upstream = helpers.random_input(x.shape, seed=4)

        def peer(t, size=size, alpha=alpha, beta=beta, bias=bias):
            return F.local_response_norm(t, size, alpha * size, beta, bias)

        ref_y, ref_dx, _ = helpers.torch_reference(
            peer, x, {}, upstream, axis % x.ndim
        )
        layer = kn.LocalResponseNormalization(
            depth_radius, bias, alpha, beta, axis=axis
        )
        y, dx, _ = helpers.forward_and_grads(layer, x, upstream)
        np.testing.assert_allclose(y, ref_y, rtol=2e-5, atol=1e-6)
        np.testing.assert_allclose(dx, ref_dx, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(
    helpers.BACKEND != "tensorflow", reason="TensorFlow's LRN kernel"
)
def test_tf_kernel_runs_where_it_applies_only(monkeypatch):
    """tf.nn.lrn for eager rank-4 float32 (channels-first transposed to
    it); not for float16, rank 3, or with the fast paths disabled."""
    import tensorflow as tf

    calls = []
    kernel = tf.nn.local_response_normalization

    def counting(*args, **kwargs):
        calls.append(1)
        return kernel(*args, **kwargs)

    monkeypatch.setattr(tf.nn, "local_response_normalization", counting)
    x = helpers.random_input((2, 3, 3, 8), seed=10)
    kn.ops.local_response_normalization(x)
    assert len(calls) == 1
    y = kn.ops.local_response_normalization(np.moveaxis(x, -1, 1), axis=1)
    assert len(calls) == 2
    np.testing.assert_allclose(
        helpers.to_numpy(y),
        np.moveaxis(helpers.to_numpy(kernel(x, 5, 1.0, 1.0, 0.5)), -1, 1),
        rtol=1e-6,
        atol=1e-6,
    )
    kn.ops.local_response_normalization(x.astype("float16"))
    kn.ops.local_response_normalization(x[:, 0])
    with native.disabled():
        kn.ops.local_response_normalization(x)
    assert len(calls) == 2


@pytest.mark.skipif(
    helpers.BACKEND != "tensorflow", reason="TensorFlow's XLA path"
)
def test_xla_path_equals_eager_kernel():
    """Under XLA the op runs its `keras.ops` path (tf.nn.lrn is the eager
    kernel): both the same."""
    import tensorflow as tf

    x = tf.constant(helpers.random_input((2, 4, 4, 9), seed=6))
    eager = kn.ops.local_response_normalization(x, 2, 1.0, 0.5, 0.75)
    compiled = tf.function(
        lambda t: kn.ops.local_response_normalization(t, 2, 1.0, 0.5, 0.75),
        jit_compile=True,
    )(x)
    np.testing.assert_allclose(
        compiled.numpy(), eager.numpy(), rtol=2e-6, atol=1e-7
    )


def test_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    for axis in (-1, 1):
        x = _input((2, 4, 4, 8), axis, seed=7)
        layer = kn.LocalResponseNormalization(2, 1.0, 0.5, 0.75, axis=axis)
        y = layer(x)
        assert keras.backend.standardize_dtype(y.dtype) == "float16"
        np.testing.assert_allclose(
            to_numpy(y).astype("float64"),
            lrn_reference(x.astype("float16"), 2, 1.0, 0.5, 0.75, axis),
            rtol=2e-3,
            atol=2e-3,
        )


def test_config_fit_and_saves_and_loads(tmp_path):
    layer = kn.LocalResponseNormalization(2, 2.0, 1e-4, 0.75, axis=1)
    clone = helpers.assert_config_round_trip(layer)
    assert (clone.depth_radius, clone.bias, clone.alpha, clone.beta) == (
        2,
        2.0,
        1e-4,
        0.75,
    )
    assert clone.axis == 1
    model = keras.Sequential(
        [
            keras.Input((6, 6, 3)),
            keras.layers.Conv2D(8, 3),
            kn.LocalResponseNormalization(2, name="lrn"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(2),
        ]
    )
    model.compile(keras.optimizers.SGD(0.1), "mse")
    x = helpers.random_input((16, 6, 6, 3), seed=8)
    y = helpers.random_input((16, 2), seed=9)
    kernel = to_numpy(model.layers[0].kernel)
    history = model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    # The gradient flows back through the LRN into the convolution.
    assert np.abs(to_numpy(model.layers[0].kernel) - kernel).max() > 1e-6
    assert model.get_layer("lrn").weights == []
    helpers.assert_saves_and_loads(model, x, tmp_path)


def test_bad_arguments_raise_clearly():
    with pytest.raises(ValueError, match="Received: depth_radius=-1"):
        kn.LocalResponseNormalization(depth_radius=-1)
    with pytest.raises(TypeError, match="Received: depth_radius=2.5"):
        kn.LocalResponseNormalization(depth_radius=2.5)
    with pytest.raises(TypeError, match="Received: alpha='big'"):
        kn.LocalResponseNormalization(alpha="big")
    with pytest.raises(ValueError, match="Received: beta=nan"):
        kn.LocalResponseNormalization(beta=float("nan"))
    with pytest.raises(TypeError, match="Received: axis="):
        kn.LocalResponseNormalization(axis="channels")
    with pytest.raises(ValueError, match="Received: axis=4"):
        kn.LocalResponseNormalization(axis=4)(np.ones((2, 3, 3, 2), "float32"))
    with pytest.raises(TypeError, match="Received: bias=None"):
        kn.ops.local_response_normalization(np.ones((2, 3)), bias=None)


class TestSharedChecks(layer_checks.LayerChecks):
    cases = {
        "channels_last": layer_checks.Case(
            lambda: kn.LocalResponseNormalization(depth_radius=1),
            (2, 3, 3, 4),
            state=(),
        ),
        "channels_first": layer_checks.Case(
            lambda: kn.LocalResponseNormalization(depth_radius=2, axis=1),
            (2, 3, 3, 4),
            state=(),
            fit=False,
        ),
    }
    masking = layer_checks.Masking(
        lambda: kn.LocalResponseNormalization(depth_radius=1), (4, 6, 3)
    )
    test_weights_match_keras_twin = None
