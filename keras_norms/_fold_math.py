"""The fold math: a per-channel scale and shift moved into a kernel and bias.

One concern: pure NumPy functions on arrays (as torch's
`torch/nn/utils/fusion.py`), apart from the layers they are read from and
the graph rewriting that places the results (`keras_norms.folding`,
`keras_norms.inference`, `Affine.from_batch_normalization`). Everything is
computed in float64; the callers round once to the weights' dtype.

At inference a BatchNormalization is the per-channel map `y = x * a + b`
(`batch_norm_scale_and_shift`). After a linear layer `x = u @ W + c` it
folds into that layer (`fold_after`):

    W' = W * a          (along the kernel's output-channel axis)
    c' = c * a + b      (= (c - moving_mean) * a + beta)

Before a linear layer with valid padding, `(u * a + b) @ W + c` is one
layer too (`fold_before`):

    W' = W * a          (along the kernel's input-channel axis)
    c' = c + sum(W * b) (over every kernel axis but the output channels)
"""

import numpy as np

# Where a kernel keeps its output channels, by layer kind:
# - "in_out": `(..., in, out)`, Dense, Conv1D/2D/3D and the pointwise
#   kernel of SeparableConv1D/2D;
# - "out_in": `(..., out, in)`, Conv1D/2D/3DTranspose;
# - "in_multiplier": `(..., in, multiplier)`, DepthwiseConv1D/2D, whose
#   output channel `i * multiplier + m` comes from `kernel[..., i, m]`.
KERNEL_LAYOUTS = ("in_out", "out_in", "in_multiplier")


def _float64(value):
    return np.asarray(value, dtype=np.float64)


def batch_norm_scale_and_shift(mean, variance, epsilon, gamma=None, beta=None):
    """`(a, b)` in float64 with `batch_norm(x) == x * a + b`.

    `a = gamma / sqrt(variance + epsilon)`, `b = beta - mean * a`.

    Args:
        mean, variance: 1-D arrays, the moving statistics, one per channel.
        epsilon: The float added to the variance.
        gamma, beta: 1-D arrays, or `None` for a layer without `scale`
            (`gamma = 1`) or without `center` (`beta = 0`).

    Returns:
        A tuple of two float64 arrays of the shape of `mean`.

    Examples:
        >>> batch_norm_scale_and_shift([1.0], [4.0], 0.0, beta=[3.0])
        (array([0.5]), array([2.5]))
    """
    mean = _float64(mean)
    variance = _float64(variance)
    gamma = np.ones_like(mean) if gamma is None else _float64(gamma)
    beta = np.zeros_like(mean) if beta is None else _float64(beta)
    scale = gamma / np.sqrt(variance + float(epsilon))
    return scale, beta - mean * scale


def scale_output_channels(kernel, scale, layout="in_out"):
    """`kernel` with output channel `j` multiplied by `scale[j]` (float64).

    Args:
        kernel: The kernel array, of the given `layout`.
        scale: 1-D array, one value per output channel.
        layout: One of `KERNEL_LAYOUTS`: where the kernel keeps its
            output channels.

    Returns:
        The scaled kernel, a float64 array of the shape of `kernel`.

    Raises:
        ValueError: If `layout` is unknown, `kernel` has fewer than 2
            axes or `scale` does not have one value per output channel.
    """
    kernel = _float64(kernel)
    scale = _float64(scale)
    if layout not in KERNEL_LAYOUTS:
        raise ValueError(
            f"`layout` must be one of {KERNEL_LAYOUTS}. Received: "
            f"layout={layout!r}"
        )
    if kernel.ndim < 2:
        raise ValueError(
            "`kernel` must have at least 2 axes (input and output "
            f"channels). Received: kernel.shape={kernel.shape}"
        )
    outputs = {
        "in_out": kernel.shape[-1],
        "out_in": kernel.shape[-2],
        "in_multiplier": kernel.shape[-2] * kernel.shape[-1],
    }[layout]
    if scale.shape != (outputs,):
        raise ValueError(
            "`scale` must have one value per output channel of the kernel "
            f"({outputs} for a kernel of shape {kernel.shape} and layout "
            f"{layout!r}). Received: scale.shape={scale.shape}"
        )
    if layout == "out_in":
        return kernel * scale[:, None]
    if layout == "in_multiplier":
        return kernel * scale.reshape(kernel.shape[-2:])
    return kernel * scale


def fold_after(kernel, bias, scale, shift, layout="in_out"):
    """The kernel and bias of `layer` followed by `y = x * scale + shift`.

    Args:
        kernel: The layer's kernel, of the given `layout`.
        bias: The layer's 1-D bias, or `None` for a layer without one.
        scale, shift: 1-D arrays, one value per output channel (a
            BatchNormalization's from `batch_norm_scale_and_shift`).
        layout: One of `KERNEL_LAYOUTS`.

    Returns:
        `(kernel * scale, bias * scale + shift)` along the output channels,
        float64 arrays (`bias = 0` where `bias` is `None`).

    Raises:
        ValueError: As `scale_output_channels`.
    """
    new_kernel = scale_output_channels(kernel, scale, layout)
    scale = _float64(scale)
    bias = np.zeros_like(scale) if bias is None else _float64(bias)
    return new_kernel, bias * scale + _float64(shift)


def fold_before(kernel, bias, scale, shift):
    """The kernel and bias of `y = x * scale + shift` followed by `layer`.

    For a Dense layer or a convolution with `padding="valid"` (a padded
    border would see the shift's zeros unscaled), kernel `(..., in, out)`.

    Args:
        kernel: The layer's kernel, `(..., in, out)`.
        bias: The layer's 1-D bias, or `None` for a layer without one.
        scale, shift: 1-D arrays, one value per input channel.

    Returns:
        `(kernel * scale, bias + sum(kernel * shift))`, the scale along
        the input channels, the sum over every kernel axis but the
        output channels; float64 arrays (`bias = 0` where `bias` is
        `None`).

    Raises:
        ValueError: If `kernel` has fewer than 2 axes, or `scale` or
            `shift` does not have one value per input channel.
    """
    kernel = _float64(kernel)
    scale = _float64(scale)
    shift = _float64(shift)
    if kernel.ndim < 2:
        raise ValueError(
            "`kernel` must have at least 2 axes (input and output "
            f"channels). Received: kernel.shape={kernel.shape}"
        )
    inputs = kernel.shape[-2]
    for name, value in (("scale", scale), ("shift", shift)):
        if value.shape != (inputs,):
            raise ValueError(
                f"`{name}` must have one value per input channel of the "
                f"kernel ({inputs} for a kernel of shape {kernel.shape}). "
                f"Received: {name}.shape={value.shape}"
            )
    if bias is None:
        bias = np.zeros(kernel.shape[-1])
    new_bias = _float64(bias) + np.sum(
        kernel * shift[:, None], axis=tuple(range(kernel.ndim - 1))
    )
    return kernel * scale[:, None], new_bias
