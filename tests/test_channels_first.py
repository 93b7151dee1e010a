"""Channels-first convolutions where the backend has no NCHW kernel.

TensorFlow's CPU convolution kernels run NCHW only with oneDNN on (the
default only on CPUs with AVX-512-class features; `TF_ENABLE_ONEDNN_OPTS=0`
turns it off). keras_norms probes for it; where it is missing,
WeightNormalization's own convolution runs on an NHWC view
(`keras_norms.ops.conv`) and model checks run through XLA
(`keras_norms.backend.call_for_inference`). CI runs the TensorFlow tests
with oneDNN off too; here the fallbacks are forced on every backend and
machine, and compared with `keras.ops.conv` on a channels-last copy.
"""

import keras
import numpy as np
import pytest

from keras_norms import backend as kn_backend
from keras_norms import ops as kn_ops
from keras_norms.layers.weight_normalization import WeightNormalization
from tests import helpers


@pytest.fixture
def no_channels_first_kernel(monkeypatch):
    """Pretend the backend cannot run an NCHW convolution op by op."""
    monkeypatch.setattr(
        kn_backend, "channels_first_conv_supported", lambda: False
    )


def test_probe_answers_a_bool_and_only_tensorflow_may_lack_it():
    supported = kn_backend.channels_first_conv_supported()
    assert isinstance(supported, bool)
    if helpers.BACKEND != "tensorflow":
        assert supported


@pytest.mark.parametrize(
    "shape, kernel_size, strides, padding, dilation",
    [
        ((2, 3, 9), (3,), 2, "valid", 1),
        ((2, 3, 7, 8), (3, 2), 1, "same", 2),
        ((1, 2, 4, 5, 6), (2, 2, 3), (1, 2, 1), "valid", 1),
    ],
)
def test_conv_on_a_channels_last_view_equals_keras_conv(
    no_channels_first_kernel, shape, kernel_size, strides, padding, dilation
):
    rank = len(shape)
    x = helpers.random_input(shape)
    kernel = helpers.random_input((*kernel_size, shape[1], 4), seed=1)
    got = helpers.to_numpy(
        kn_ops.conv(x, kernel, strides, padding, "channels_first", dilation)
    )
    x_last = np.moveaxis(x, 1, -1)
    expected = helpers.to_numpy(
        keras.ops.conv(
            x_last, kernel, strides, padding, "channels_last", dilation
        )
    )
    np.testing.assert_allclose(got, np.moveaxis(expected, -1, 1), atol=1e-5)
    assert got.shape[1] == 4 and got.ndim == rank


def test_weight_normalization_channels_first_without_nchw_kernel(
    no_channels_first_kernel,
):
    """WN's own convolution, forward and gradients, on the NHWC view."""
    x = helpers.random_input((2, 3, 6, 5))
    wn = WeightNormalization(
        keras.layers.Conv2D(4, 3, data_format="channels_first")
    )
    wn.build(x.shape)
    helpers.set_random_weights(wn)
    kernel, bias = (helpers.to_numpy(t) for t in wn.effective_kernel_and_bias())
    expected = (
        helpers.to_numpy(
            keras.ops.conv(np.moveaxis(x, 1, -1), kernel, 1, "valid")
        )
        + bias
    )
    expected = np.moveaxis(expected, -1, 1)
    up = helpers.random_input(expected.shape, seed=3)
    y, dx, grads = helpers.forward_and_grads(wn, x, up, training=False)
    np.testing.assert_allclose(y, expected, atol=1e-4)
    # d(sum(y * up))/dx of a convolution: the transposed convolution of up.
    assert dx.shape == x.shape and np.abs(dx).max() > 1e-3
    assert set(grads) >= {"g", "kernel", "bias"}
    np.testing.assert_allclose(
        grads["bias"], up.sum(axis=(0, 2, 3)), rtol=1e-4, atol=1e-4
    )


def test_call_for_inference_runs_a_channels_first_model(
    no_channels_first_kernel,
):
    """On TensorFlow this goes through XLA; elsewhere it is a plain call."""
    model = keras.Sequential(
        [
            keras.Input((3, 6, 6)),
            keras.layers.Conv2D(4, 3, data_format="channels_first"),
            keras.layers.BatchNormalization(axis=1),
        ]
    )
    x = helpers.random_input((2, 3, 6, 6))
    got = helpers.to_numpy(kn_backend.call_for_inference(model, x))
    kernel, bias = (helpers.to_numpy(w) for w in model.layers[0].weights)
    conv = (
        helpers.to_numpy(
            keras.ops.conv(np.moveaxis(x, 1, -1), kernel, 1, "valid")
        )
        + bias
    )
    expected = np.moveaxis(conv, -1, 1) / np.sqrt(1.0 + 1e-3)
    np.testing.assert_allclose(got, expected, atol=1e-4)
