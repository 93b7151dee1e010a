"""Argument helpers of the normalization ops."""


from keras import backend
from keras import ops

from keras_norms import _validation


def _channel_axis(axis, ndim):
    """The canonical channel axis of a one-axis normalization."""
    if not _validation.is_integer(axis):
        raise TypeError(
            f"Argument `axis` must be an int (the channel axis). "
            f"Received: axis={axis!r}"
        )
    (axis,) = _validation.canonical_axes(axis, ndim)
    return axis


def _spatial_axes(ndim, channel_axis):
    """Every axis but the batch axis 0 and the channel axis."""
    axes = tuple(a for a in range(1, ndim) if a != channel_axis)
    if not axes:
        raise ValueError(
            "Instance statistics reduce over the axes besides the batch "
            "and channel axes, and this input has none. Received: "
            f"ndim={ndim}, channel axis={channel_axis}"
        )
    return axes


def _as_tensor(x):
    """`x` as a backend tensor (the ops take NumPy arrays too)."""
    return x if ops.is_tensor(x) else ops.convert_to_tensor(x)


def _output_dtype(x, dtype):
    return backend.standardize_dtype(dtype or x.dtype)


def _is_variable(value):
    from keras import Variable

    return isinstance(value, Variable)
