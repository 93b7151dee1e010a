"""The one statistics kernel every keras_norms layer is built on.

Every normalization here is the same three steps:

1. pick the reduction axes (the layers do this);
2. compute the moments over them: `moments()`;
3. apply one scale and shift, `y = x * a + b` with
   `a = gamma * rsqrt(variance + epsilon)` and `b = beta - mean * a`:
   `scale_and_shift()` computes `a` and `b` from the (small) statistics and
   `normalize()` applies them to the (large) input.

The functions are written in `keras.ops`, so one implementation serves the
TensorFlow, JAX and PyTorch backends.
"""

from keras import backend
from keras import ops

__all__ = [
    "statistics_dtype",
    "moments",
    "scale_and_shift",
    "normalize",
]


def statistics_dtype(dtype):
    """The dtype statistics are accumulated in for inputs of `dtype`.

    `float16` and `bfloat16` inputs are promoted to `float32`; `float32` and
    `float64` stay as they are.
    """
    return backend.result_type(dtype, "float32")


def moments(x, axes, keepdims=True):
    """Biased mean and variance of `x` over `axes`, in float32 or wider.

    The variance is computed in two passes, `mean((x - mean(x))**2)`, so rows
    with a large mean against their spread keep their precision (the one-pass
    `E[x^2] - E[x]^2` loses it all in float32 for a mean of 1e4 and a standard
    deviation of 1). Half-precision inputs are accumulated in float32.

    Args:
        x: Input tensor.
        axes: Axes to reduce over (a list or tuple of ints).
        keepdims: Whether to keep the reduced axes with length 1, so the
            results broadcast against `x`.

    Returns:
        A `(mean, variance)` tuple in `statistics_dtype(x.dtype)`.
    """
    axes = tuple(axes)
    x = ops.cast(x, statistics_dtype(x.dtype))
    mean = ops.mean(x, axis=axes, keepdims=True)
    variance = ops.mean(ops.square(x - mean), axis=axes, keepdims=True)
    if not keepdims:
        mean = ops.squeeze(mean, axis=axes)
        variance = ops.squeeze(variance, axis=axes)
    return mean, variance


def scale_and_shift(mean, variance, gamma=None, beta=None, epsilon=1e-3):
    """Fold statistics and affine parameters into one scale and one shift.

    Returns `(a, b)` such that `normalize(x, a, b) = x * a + b` equals
    `gamma * (x - mean) / sqrt(variance + epsilon) + beta`. All arguments
    are small (per channel, or per sample and channel) and must broadcast
    against each other.

    Args:
        mean: Mean of the input over the reduction axes.
        variance: Biased variance of the input over the reduction axes.
        gamma: Optional scale; `None` means 1.
        beta: Optional offset; `None` means 0.
        epsilon: Small float added to the variance.

    Returns:
        A `(scale, shift)` tuple.
    """
    scale = ops.rsqrt(variance + epsilon)
    if gamma is not None:
        scale = scale * gamma
    shift = -mean * scale
    if beta is not None:
        shift = shift + beta
    return scale, shift


def normalize(x, scale, shift, dtype=None):
    """Apply `x * scale + shift` in the statistics dtype, return in `dtype`.

    Args:
        x: Input tensor.
        scale: Tensor broadcastable to `x` (from `scale_and_shift`).
        shift: Tensor broadcastable to `x` (from `scale_and_shift`).
        dtype: Output dtype; defaults to the dtype of `x`.
    """
    out_dtype = dtype or x.dtype
    x = ops.cast(x, scale.dtype)
    return ops.cast(x * scale + shift, out_dtype)
