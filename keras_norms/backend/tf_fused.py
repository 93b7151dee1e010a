"""TensorFlow's fused batch normalization and LRN kernels, where they pay.

Eager TensorFlow, and `tf.function` graphs that XLA does not compile, run
each `keras.ops` call as its own kernel: the two-pass moments, the scale
and shift and their gradients make a dozen passes over the tensor.
`FusedBatchNormV3` does the training forward in two (a two-pass mean and
variance, then the normalization) and its backward in two more;
`benchmarks/bench_norms.py` measured the `keras.ops` path 2-4x slower than
it, eager, on 32x32x32x64. Under XLA (`tf.function(jit_compile=True)`,
which `model.fit` uses on TensorFlow by default) the compiler fuses the
`keras.ops` path itself, which measured as fast or faster than the
fused op there, so this path is skipped inside an XLA context.

Any rank is taken without a copy: rank 4 as it is (NHWC or NCHW), other
channels-last inputs viewed as `(rows, 1, 1, C)` NHWC, other
channels-first ones as `(N, C, rest, 1)` NCHW. The input may be float16, bfloat16 or float32 with float32 `gamma`,
`beta` and statistics (mixed precision), as the kernel allows. In training
mode the kernel returns the unbiased batch variance (as TF's moving
variance used it); it is rescaled to the biased one Keras and the papers
use. Large means are safe: the CPU kernel's variance is two-pass
(`tests/layers/test_batch_normalization.py`'s mean-1e4 rows pass
through it).
"""

import tensorflow as tf

from keras_norms import _compat

__all__ = ["batch_norm", "local_response_norm", "MIN_EPSILON"]

# cuDNN refuses a smaller epsilon; TF's own wrapper clamps to this value.
# A layer asking for less keeps the keras.ops path instead of a changed eps.
MIN_EPSILON = 1.001e-5
_INPUT_DTYPES = (tf.float16, tf.bfloat16, tf.float32)


def _as_float32(p, channels):
    """A per-channel `(C,)` float32 tensor from a variable or tensor;
    `False` for None (absent gamma/beta), `None` where it does not fit."""
    if p is None:
        return False
    p = getattr(p, "value", p)
    if p.dtype != tf.float32 or tuple(p.shape) != (channels,):
        return None
    return p


def batch_norm(
    x, channel_axis, gamma, beta, epsilon, dtype, mean=None, variance=None
):
    """`FusedBatchNormV3` over every axis but `channel_axis`, or `None`.

    Same contract as `keras_norms.backend.native.batch_norm`: with `mean`
    and `variance` (the moving statistics), the inference output; without,
    `(output, batch_mean, biased batch_variance)` in training mode.
    """
    if (
        not isinstance(x, tf.Tensor)
        or x.dtype not in _INPUT_DTYPES
        or x.dtype.name != dtype
        or epsilon < MIN_EPSILON
        or x.shape.rank is None
        or x.shape.rank < 2
        or _compat.tf_in_xla_context()
    ):
        return None
    ndim = x.shape.rank
    channel_axis %= ndim
    if channel_axis not in (1, ndim - 1):
        return None
    channels = x.shape[channel_axis]
    if channels is None:
        return None
    count = x.shape.num_elements()
    if mean is None and count is not None and count < 2 * channels:
        # Training on an empty batch or one value per channel: the
        # keras.ops path (the kernel's unbiased variance is undefined).
        return None
    scale = _as_float32(gamma, channels)
    offset = _as_float32(beta, channels)
    if scale is None or offset is None:
        return None
    if gamma is None:
        scale = tf.ones((channels,), tf.float32)
    if beta is None:
        offset = tf.zeros((channels,), tf.float32)
    # Every op counts eagerly (~15-25 us each): reshape only off rank 4.
    view, shape = x, None
    if ndim != 4:
        shape = tf.shape(x)
        if channel_axis == ndim - 1:
            view = tf.reshape(x, (-1, 1, 1, channels))
        else:
            view = tf.reshape(x, (shape[0], channels, -1, 1))
    data_format = "NHWC" if channel_axis == ndim - 1 else "NCHW"
    training = mean is None
    if training:  # batch statistics: the kernel computes them
        mean = variance = tf.constant([], tf.float32)
    else:
        mean = _as_float32(mean, channels)
        variance = _as_float32(variance, channels)
        if mean is None or variance is None:
            return None
    y, batch_mean, batch_variance = tf.raw_ops.FusedBatchNormV3(
        x=view,
        scale=scale,
        offset=offset,
        mean=mean,
        variance=variance,
        epsilon=epsilon,
        exponential_avg_factor=1.0,
        data_format=data_format,
        is_training=training,
    )[:3]
    y = y if shape is None else tf.reshape(y, shape)
    if not training:
        return y
    count = x.shape.num_elements()
    if count is not None:
        count //= channels
        bessel = (count - 1) / count
    else:
        count = tf.cast(tf.size(x) // channels, tf.float32)
        bessel = (count - 1.0) / tf.maximum(count, 1.0)
    # The kernel's variance output is unbiased (n / (n - 1)); Keras'
    # moving variance, like the papers', takes the biased one.
    return y, batch_mean, batch_variance * bessel


def local_response_norm(
    x, channel_axis, depth_radius, bias, alpha, beta, dtype
):
    """TensorFlow's `LRN` kernel for rank-4 float32 outside XLA, else
    `None`. Its CPU kernel takes channels-last only: a channels-first
    input is transposed to it and back (what a TensorFlow user would
    write; the `keras.ops` path measured 1.49x slower than that eagerly).
    Eager, forward and backward, it measured 4.2x faster than the
    `keras.ops` path on 16x32x32x64 channels-last; under XLA that path
    measured faster than it (its gradient, an average pool, 2x faster),
    so it is skipped there."""
    if (
        not isinstance(x, tf.Tensor)
        or x.dtype != tf.float32
        or dtype != "float32"
        or x.shape.rank != 4
        or channel_axis % 4 not in (1, 3)
        or _compat.tf_in_xla_context()
    ):
        return None
    if channel_axis % 4 == 3:
        return tf.nn.local_response_normalization(
            x, depth_radius, bias, alpha, beta
        )
    y = tf.nn.local_response_normalization(
        tf.transpose(x, (0, 2, 3, 1)), depth_radius, bias, alpha, beta
    )
    return tf.transpose(y, (0, 3, 1, 2))
