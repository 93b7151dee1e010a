"""The fold math (`keras_norms._fold_math`) against NumPy, no Keras.

Each fold is checked on the layer it is written for, computed directly in
NumPy: a Dense layer, a 2-D convolution, a depthwise convolution and a
transposed convolution (valid padding, stride 1, float64) followed by
inference-mode BatchNormalization, `gamma * (y - mean) / sqrt(var + eps) +
beta`, equal the same layer with the folded kernel and bias; a per-channel
scale and shift followed by a Dense layer or a convolution equals the
convolution with the forward-folded kernel and bias.
"""

import doctest

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from keras_norms import _fold_math

RNG = np.random.default_rng(0)
EPSILON = 1e-3


def _dense(x, kernel, bias):
    return x @ kernel + bias


def _conv2d(x, kernel, bias):
    """NHWC `x`, kernel `(kh, kw, in, out)`: valid, stride 1."""
    windows = sliding_window_view(x, kernel.shape[:2], axis=(1, 2))
    return np.einsum("nhwcij,ijco->nhwo", windows, kernel) + bias


def _depthwise2d(x, kernel, bias):
    """Kernel `(kh, kw, in, multiplier)`; output channel `c * m_total + m`."""
    windows = sliding_window_view(x, kernel.shape[:2], axis=(1, 2))
    out = np.einsum("nhwcij,ijcm->nhwcm", windows, kernel)
    return out.reshape(out.shape[:3] + (-1,)) + bias


def _conv2d_transpose(x, kernel, bias):
    """Kernel `(kh, kw, out, in)`: every input pixel scatters a patch."""
    kh, kw, outputs, _ = kernel.shape
    n, h, w, _ = x.shape
    out = np.zeros((n, h + kh - 1, w + kw - 1, outputs))
    for i in range(kh):
        for j in range(kw):
            out[:, i : i + h, j : j + w] += np.einsum(
                "nhwc,oc->nhwo", x, kernel[i, j]
            )
    return out + bias


def _batch_norm(y, mean, variance, gamma, beta):
    return gamma * (y - mean) / np.sqrt(variance + EPSILON) + beta


def _statistics(channels):
    return (
        RNG.normal(size=channels),
        RNG.uniform(0.5, 2.0, size=channels),
        RNG.normal(size=channels),
        RNG.normal(size=channels),
    )


# (layer, input shape, kernel shape, layout, output channels)
_LAYERS = {
    "dense": (_dense, (5, 4), (4, 3), "in_out", 3),
    "conv2d": (_conv2d, (2, 6, 5, 4), (3, 2, 4, 3), "in_out", 3),
    "depthwise2d": (
        _depthwise2d,
        (2, 6, 5, 3),
        (3, 2, 3, 2),
        "in_multiplier",
        6,
    ),
    "conv2d_transpose": (
        _conv2d_transpose,
        (2, 4, 3, 4),
        (3, 2, 5, 4),
        "out_in",
        5,
    ),
}


@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("kind", sorted(_LAYERS))
def test_fold_after_equals_layer_then_batch_norm(kind, use_bias):
    layer, input_shape, kernel_shape, layout, channels = _LAYERS[kind]
    x = RNG.normal(size=input_shape)
    kernel = RNG.normal(size=kernel_shape)
    bias = RNG.normal(size=channels) if use_bias else None
    mean, variance, gamma, beta = _statistics(channels)

    expected = _batch_norm(
        layer(x, kernel, 0.0 if bias is None else bias),
        mean,
        variance,
        gamma,
        beta,
    )
    a, b = _fold_math.batch_norm_scale_and_shift(
        mean, variance, EPSILON, gamma, beta
    )
    new_kernel, new_bias = _fold_math.fold_after(kernel, bias, a, b, layout)
    assert new_kernel.shape == kernel.shape
    assert new_kernel.dtype == new_bias.dtype == np.float64
    np.testing.assert_allclose(
        layer(x, new_kernel, new_bias), expected, rtol=1e-12, atol=1e-12
    )


def test_batch_norm_scale_and_shift_without_gamma_or_beta():
    mean, variance, _, _ = _statistics(3)
    y = RNG.normal(size=(4, 3))
    a, b = _fold_math.batch_norm_scale_and_shift(mean, variance, EPSILON)
    np.testing.assert_allclose(
        y * a + b, (y - mean) / np.sqrt(variance + EPSILON), rtol=1e-12
    )


@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("kind", ["dense", "conv2d"])
def test_fold_before_equals_scale_shift_then_layer(kind, use_bias):
    layer, input_shape, kernel_shape, _, channels = _LAYERS[kind]
    x = RNG.normal(size=input_shape)
    kernel = RNG.normal(size=kernel_shape)
    bias = RNG.normal(size=channels) if use_bias else None
    scale = RNG.normal(size=kernel_shape[-2])
    shift = RNG.normal(size=kernel_shape[-2])

    expected = layer(x * scale + shift, kernel, 0.0 if bias is None else bias)
    new_kernel, new_bias = _fold_math.fold_before(kernel, bias, scale, shift)
    np.testing.assert_allclose(
        layer(x, new_kernel, new_bias), expected, rtol=1e-12, atol=1e-12
    )


def test_bad_layout_and_channel_counts_raise():
    kernel = np.ones((3, 3, 4, 2))
    with pytest.raises(ValueError, match=r"Received: layout='in'"):
        _fold_math.fold_after(kernel, None, np.ones(2), np.zeros(2), "in")
    with pytest.raises(ValueError, match=r"Received: scale.shape=\(4,\)"):
        _fold_math.fold_after(kernel, None, np.ones(4), np.zeros(4))
    with pytest.raises(ValueError, match=r"Received: shift.shape=\(2,\)"):
        _fold_math.fold_before(kernel, None, np.ones(4), np.zeros(2))


def test_docstring_examples():
    result = doctest.testmod(_fold_math)
    assert result.attempted > 0 and result.failed == 0
