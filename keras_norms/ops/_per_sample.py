"""Normalizations with per-sample statistics: layer, RMS, group,
instance, filter response, EvoNorm-S0, local response and adaptive
instance normalization."""

from keras import backend
from keras import ops

from keras_norms import _validation
from keras_norms.backend import native
from keras_norms.ops._batch import batch_normalization
from keras_norms.ops._common import _as_tensor
from keras_norms.ops._common import _channel_axis
from keras_norms.ops._common import _output_dtype
from keras_norms.ops._common import _spatial_axes
from keras_norms.ops._statistics import broadcast_weight
from keras_norms.ops._statistics import mean_square
from keras_norms.ops._statistics import moments
from keras_norms.ops._statistics import normalize
from keras_norms.ops._statistics import normalize_moments
from keras_norms.ops._statistics import pooled_moments
from keras_norms.ops._statistics import scale_and_shift
from keras_norms.ops._statistics import statistics_dtype


def layer_normalization(
    x,
    axis=-1,
    gamma=None,
    beta=None,
    epsilon=1e-3,
    rms_scaling=False,
    dtype=None,
):
    """Layer normalization of `x` over `axis` (an int or a list of ints).

    `y = gamma * (x - mean) / sqrt(variance + epsilon) + beta` with one
    mean and variance per row (over `axis`) and `gamma`, `beta` per
    position along `axis`: applied one after the other
    (`normalize_moments`), never folded into an input-sized scale.

    Kernel: torch's `F.layer_norm` where the dtypes allow it (axes not
    trailing are moved last for it); else the `keras.ops` implementation.

    Args:
        x: Input tensor.
        axis: Integer or list of integers, the axes to normalize over.
        gamma, beta: Optional weights of shape `x.shape` along the sorted
            `axis` (or already broadcastable against `x`).
        epsilon: Small float added to the variance.
        rms_scaling: Keras' deprecated option: `x * rsqrt(variance +
            epsilon) * gamma`, no centering (not RMS normalization).
        dtype: Output dtype; defaults to the dtype of `x`.

    Examples:

    >>> x = np.array([[1.0, 2.0, 3.0]], "float32")
    >>> y = kn.ops.layer_normalization(x, epsilon=0.0)
    >>> np.round(keras.ops.convert_to_numpy(y), 3)
    array([[-1.225,  0.   ,  1.225]], dtype=float32)
    """
    x = _as_tensor(x)
    ndim = len(x.shape)
    axes = _validation.canonical_axes(axis, ndim)
    dtype = _output_dtype(x, dtype)
    if not rms_scaling:
        outputs = native.layer_norm(x, axes, gamma, beta, epsilon, dtype)
        if outputs is not None:
            return outputs
    mean, variance = moments(x, axes)
    stats_dtype = variance.dtype
    return normalize_moments(
        x,
        None if rms_scaling else mean,
        variance,
        broadcast_weight(gamma, ndim, axes, stats_dtype),
        broadcast_weight(beta, ndim, axes, stats_dtype),
        epsilon,
        dtype,
    )


def rms_normalization(x, axis=-1, scale=None, epsilon=1e-6, dtype=None):
    """Root mean square normalization of `x` over `axis`.

    `y = x / sqrt(mean(x**2) + epsilon) * scale` (Zhang & Sennrich, 2019),
    the per-row factor applied first and the per-feature scale second.

    Kernel: torch's `F.rms_norm` where the normalized axes are trailing and
    the dtypes allow it; else the `keras.ops` implementation.

    Args:
        x: Input tensor.
        axis: Integer or list of integers, the axes to normalize over.
        scale: Optional weight of shape `x.shape` along the sorted `axis`.
        epsilon: Small float added to the mean square.
        dtype: Output dtype; defaults to the dtype of `x`.

    Examples:

    >>> x = np.array([[3.0, 4.0]], "float32")
    >>> y = kn.ops.rms_normalization(x, epsilon=0.0)
    >>> np.round(keras.ops.convert_to_numpy(y), 3)
    array([[0.849, 1.131]], dtype=float32)
    """
    x = _as_tensor(x)
    ndim = len(x.shape)
    axes = _validation.canonical_axes(axis, ndim)
    dtype = _output_dtype(x, dtype)
    outputs = native.rms_norm(x, axes, scale, epsilon, dtype)
    if outputs is not None:
        return outputs
    mean_sq = mean_square(x, axes)
    return normalize_moments(
        x,
        None,
        mean_sq,
        broadcast_weight(scale, ndim, axes, mean_sq.dtype),
        None,
        epsilon,
        dtype,
    )


def group_normalization(
    x, groups, axis=-1, gamma=None, beta=None, epsilon=1e-3, dtype=None
):
    """Group normalization (Wu & He, 2018) of `x`.

    The channels along `axis` are split into `groups` groups of
    consecutive channels; each (sample, group) is normalized with the
    moments over its channels and every spatial axis, then scaled and
    shifted per channel. `groups=1` is layer normalization over channels
    and spatial axes; `groups=channels` is instance normalization.

    Kernel: torch's `F.group_norm` where the dtypes and layout allow it;
    else the `keras.ops` implementation: the moments of each channel over
    the spatial axes (two-pass), pooled into groups (`pooled_moments`),
    the input never reshaped or transposed (XLA's CPU reduction over a
    split channel axis measured 3-4x slower).

    Args:
        x: Input tensor of rank 2 or more.
        groups: Number of groups; divides the number of channels.
        axis: Integer, the channel axis.
        gamma, beta: Optional per-channel scale and offset, `(channels,)`.
        epsilon: Small float added to the variance.
        dtype: Output dtype; defaults to the dtype of `x`.

    Examples:

    >>> x = np.array([[1.0, 3.0, 10.0, 30.0]], "float32")
    >>> y = kn.ops.group_normalization(x, groups=2, epsilon=0.0)
    >>> np.round(keras.ops.convert_to_numpy(y), 3)
    array([[-1.,  1., -1.,  1.]], dtype=float32)
    """
    x = _as_tensor(x)
    ndim = len(x.shape)
    channel = _channel_axis(axis, ndim)
    _check_group_count(groups, x.shape[channel], axis)
    dtype = _output_dtype(x, dtype)
    outputs = native.group_norm(x, groups, channel, gamma, beta, epsilon, dtype)
    if outputs is not None:
        return outputs
    mean, variance = _group_moments(x, groups, channel)
    per_group = x.shape[channel] // groups

    def by_group(weight):  # a (C,) weight as (1, G, C / G)
        if weight is None:
            return None
        return ops.reshape(ops.cast(weight, mean.dtype), (1, groups, per_group))

    scale, shift = scale_and_shift(
        mean, variance, by_group(gamma), by_group(beta), epsilon
    )
    return normalize(
        x,
        _group_to_channels(scale, x, groups, channel),
        _group_to_channels(shift, x, groups, channel),
        dtype,
    )


def _check_group_count(groups, channels, axis):
    """Refuse a `groups` that is not a positive divisor of `channels`."""
    if not _validation.is_integer(groups):
        raise TypeError(
            f"Argument `groups` must be an int. Received: groups={groups!r}"
        )
    if groups <= 0 or groups > channels or channels % groups:
        raise ValueError(
            f"Argument `groups` must divide the number of channels "
            f"({channels}, along axis {axis}). Received: groups={groups}"
        )


def _group_moments(x, groups, channel):
    """Each (sample, group)'s mean and biased variance, `(N, groups, 1)`.

    The statistics of group normalization (and EvoNorm-S0's group
    standard deviation): the moments of each channel over the spatial
    axes (two-pass), pooled into groups of consecutive channels
    (`pooled_moments`). The input is never reshaped or transposed (XLA's
    CPU reduction over a split channel axis measured 3-4x slower).
    """
    ndim = len(x.shape)
    reduction = tuple(a for a in range(1, ndim) if a != channel)
    if reduction:
        mean, variance = moments(x, reduction)
    else:  # rank 2: each channel holds one value
        mean = ops.cast(x, statistics_dtype(x.dtype))
        variance = ops.zeros_like(mean)
    # The batch size, not -1: a reshape of an empty batch cannot infer it
    # (torch refuses "-1" for 0 elements).
    batch = x.shape[0] if x.shape[0] is not None else -1
    grouped = (batch, groups, x.shape[channel] // groups)
    return pooled_moments(
        ops.reshape(mean, grouped), ops.reshape(variance, grouped), (2,)
    )


def _group_to_channels(factor, x, groups, channel):
    """A `(N, groups, 1 or C / groups)` factor per channel of `x`.

    Repeated over each group's channels and shaped `(N, 1, .., C, .., 1)`
    to broadcast against `x` (channel at `channel`).
    """
    ndim = len(x.shape)
    channels = x.shape[channel]
    per_group = channels // groups
    if factor.shape[2] != per_group:
        factor = ops.repeat(factor, per_group, axis=2)
    shape = [1] * ndim
    shape[0] = x.shape[0] if x.shape[0] is not None else -1
    shape[channel] = channels
    return ops.reshape(factor, shape)


def instance_normalization(
    x,
    axis=-1,
    gamma=None,
    beta=None,
    epsilon=1e-3,
    mean=None,
    variance=None,
    dtype=None,
):
    """Instance normalization (Ulyanov et al., 2016) of `x`.

    Each (sample, channel) is normalized with the moments over the spatial
    axes (every axis but the batch axis 0 and the channel `axis`), then
    scaled and shifted per channel. With `mean` and `variance` (running
    statistics, shape `(channels,)`, as torch's `track_running_stats`),
    every sample is normalized with those instead.

    Kernel: torch's `F.group_norm` with one group per channel where the
    dtypes and layout allow it; else the `keras.ops` implementation.

    Args:
        x: Input tensor with at least one spatial axis.
        axis: Integer, the channel axis.
        gamma, beta: Optional per-channel scale and offset, `(channels,)`.
        epsilon: Small float added to the variance.
        mean, variance: Optional per-channel statistics (both or neither).
        dtype: Output dtype; defaults to the dtype of `x`.

    Examples:

    >>> x = np.array([[[1.0], [3.0]]], "float32")  # (batch, time, channels)
    >>> y = kn.ops.instance_normalization(x, epsilon=0.0)
    >>> np.round(keras.ops.convert_to_numpy(y)[0, :, 0], 3)
    array([-1.,  1.], dtype=float32)
    """
    x = _as_tensor(x)
    ndim = len(x.shape)
    channel = _channel_axis(axis, ndim)
    reduction = _spatial_axes(ndim, channel)
    if mean is not None or variance is not None:
        return batch_normalization(
            x, channel, gamma, beta, mean, variance, epsilon, dtype=dtype
        ).outputs
    dtype = _output_dtype(x, dtype)
    outputs = native.group_norm(
        x, x.shape[channel], channel, gamma, beta, epsilon, dtype
    )
    if outputs is not None:
        return outputs
    mean, variance = moments(x, reduction)
    scale, shift = scale_and_shift(
        mean,
        variance,
        broadcast_weight(gamma, ndim, (channel,), mean.dtype),
        broadcast_weight(beta, ndim, (channel,), mean.dtype),
        epsilon,
    )
    return normalize(x, scale, shift, dtype)


def filter_response_normalization(
    x, axis=-1, gamma=None, beta=None, tau=None, epsilon=1e-6, dtype=None
):
    """Filter response normalization with its TLU (Singh & Krishnan, 2020).

    `y = max(gamma * x / sqrt(nu2 + epsilon) + beta, tau)` with
    `nu2 = mean(x**2)` per (sample, channel) over the spatial axes: no mean
    subtracted, no batch dependence. `epsilon` may be a tensor (a learned
    epsilon). Always the `keras.ops` implementation.

    Args:
        x: Input tensor with at least one spatial axis.
        axis: Integer, the channel axis.
        gamma, beta, tau: Optional per-channel weights, `(channels,)`;
            without `tau`, no TLU.
        epsilon: Small float (or scalar tensor) added to `nu2`.
        dtype: Output dtype; defaults to the dtype of `x`.

    Examples:

    >>> x = np.array([[[3.0], [-4.0]]], "float32")
    >>> y = kn.ops.filter_response_normalization(x, epsilon=0.0)
    >>> np.round(keras.ops.convert_to_numpy(y)[0, :, 0], 3)
    array([ 0.849, -1.131], dtype=float32)
    """
    x = _as_tensor(x)
    ndim = len(x.shape)
    channel = _channel_axis(axis, ndim)
    nu2 = mean_square(x, _spatial_axes(ndim, channel))
    stats_dtype = nu2.dtype
    scale, shift = scale_and_shift(
        0.0,
        nu2,
        broadcast_weight(gamma, ndim, (channel,), stats_dtype),
        broadcast_weight(beta, ndim, (channel,), stats_dtype),
        epsilon,
    )
    outputs = normalize(x, scale, shift, stats_dtype)
    if tau is not None:
        outputs = ops.maximum(
            outputs, broadcast_weight(tau, ndim, (channel,), stats_dtype)
        )
    return ops.cast(outputs, _output_dtype(x, dtype))


def evo_norm_s0(
    x,
    groups,
    axis=-1,
    v=None,
    gamma=None,
    beta=None,
    epsilon=1e-5,
    dtype=None,
):
    """EvoNorm-S0 (Liu et al., 2020) of `x`: a sample-based norm-activation.

    `y = x * sigmoid(v * x) / sqrt(group_variance(x) + epsilon) * gamma +
    beta`, where the variance is per sample and group of `groups`
    consecutive channels, over the group's channels and every spatial
    axis: group normalization's statistics (the same pooled two-pass
    moments as `group_normalization`), with no mean subtracted and a
    SiLU-like gate `x * sigmoid(v * x)` in its place. The epsilon is
    inside the square root, as in timm's `EvoNorm2dS0` and the TF model
    garden. Computed in float32 for half-precision inputs. Always the
    `keras.ops` implementation (no backend has a fused kernel for it).

    Args:
        x: Input tensor of rank 2 or more.
        groups: Number of groups; divides the number of channels.
        axis: Integer, the channel axis.
        v: Optional per-channel gate weight, `(channels,)`; `None` means 1.
        gamma, beta: Optional per-channel scale and offset, `(channels,)`.
        epsilon: Small float added to the group variance.
        dtype: Output dtype; defaults to the dtype of `x`.

    Examples:

    >>> x = np.array([[0.0, 2.0, -1.0, 1.0]], "float32")  # (batch, channels)
    >>> y = kn.ops.evo_norm_s0(x, groups=2, epsilon=0.0)  # std 1 and 1
    >>> np.round(keras.ops.convert_to_numpy(y), 3)
    array([[ 0.   ,  1.762, -0.269,  0.731]], dtype=float32)
    """
    x = _as_tensor(x)
    ndim = len(x.shape)
    channel = _channel_axis(axis, ndim)
    _check_group_count(groups, x.shape[channel], axis)
    _, variance = _group_moments(x, groups, channel)
    stats_dtype = variance.dtype
    inverse_std = _group_to_channels(
        ops.rsqrt(variance + epsilon), x, groups, channel
    )
    xs = ops.cast(x, stats_dtype)
    v = broadcast_weight(v, ndim, (channel,), stats_dtype)
    scale = inverse_std * ops.sigmoid(xs if v is None else xs * v)
    gamma = broadcast_weight(gamma, ndim, (channel,), stats_dtype)
    if gamma is not None:
        scale = scale * gamma
    y = xs * scale
    if beta is not None:
        y = y + broadcast_weight(beta, ndim, (channel,), stats_dtype)
    return ops.cast(y, _output_dtype(x, dtype))


def local_response_normalization(
    x, depth_radius=5, bias=1.0, alpha=1.0, beta=0.5, axis=-1, dtype=None
):
    """Local response normalization (Krizhevsky et al., 2012) of `x`.

    TensorFlow's `tf.nn.local_response_normalization`, along any channel
    `axis`: each value is divided by a power of the sum of squares of its
    `2 * depth_radius + 1` neighbouring channels (those past the edges
    count as 0):

    `sqr_sum[..., d] = sum(x[..., d - depth_radius : d + depth_radius + 1] ** 2)`
    `y = x / (bias + alpha * sqr_sum) ** beta`

    The same as `torch.nn.functional.local_response_norm(x, size, alpha_t,
    beta, k)` with `size = 2 * depth_radius + 1`, `alpha_t = alpha * size`
    (torch divides the sum by `size`) and `k = bias`. Computed in float32
    for half-precision inputs. Kernel: outside XLA, TensorFlow's LRN
    kernel for rank-4 float32 (channels-first transposed to it; measured
    4x faster eager); on torch, `F.local_response_norm` for channels-last
    float32 inputs no gradient flows through (measured 1.75x faster
    there); else the `keras.ops` implementation, the window sums as a 1-D
    average pool over the zero-padded channels (which torch's kernel also
    runs: no faster channels-first or with a gradient).

    Args:
        x: Input tensor of rank 2 or more.
        depth_radius: Non-negative int, the half-width of the window.
        bias: Float added to the scaled sum (TensorFlow's `bias`, torch's
            `k`).
        alpha: Float, the scale of the sum of squares.
        beta: Float, the exponent.
        axis: Integer, the channel axis the window runs along.
        dtype: Output dtype; defaults to the dtype of `x`.

    Examples:

    >>> x = np.array([[1.0, 2.0, 2.0]], "float32")
    >>> y = kn.ops.local_response_normalization(x, depth_radius=1, bias=0.0)
    >>> np.round(keras.ops.convert_to_numpy(y), 3)  # x / sqrt(window sum)
    array([[0.447, 0.667, 0.707]], dtype=float32)
    """
    x = _as_tensor(x)
    ndim = len(x.shape)
    channel = _channel_axis(axis, ndim)
    depth_radius = _validation.check_non_negative_int(
        "depth_radius", depth_radius
    )
    bias = _validation.check_float("bias", bias)
    alpha = _validation.check_float("alpha", alpha)
    beta = _validation.check_float("beta", beta)
    dtype = _output_dtype(x, dtype)
    outputs = native.local_response_norm(
        x, channel, depth_radius, bias, alpha, beta, dtype
    )
    if outputs is not None:
        return outputs
    xs = ops.cast(x, statistics_dtype(x.dtype))
    base = bias + alpha * _window_sum(ops.square(xs), depth_radius, channel)
    # `base ** -beta` by the exact function for TF's special cases.
    if beta == 0.5:
        factor = ops.rsqrt(base)
    elif beta == 1:
        factor = 1.0 / base
    else:
        factor = ops.power(base, -beta)
    return ops.cast(xs * factor, dtype)


def _window_sum(values, radius, axis):
    """Sums of `2 * radius + 1` consecutive values along `axis`, centred,
    with zeros past the edges.

    A 1-D average pool over the zero-padded `axis` (viewed, without a
    copy, as the pooled axis of `(before, axis, after)`), times the window
    size: within an ulp of the plain sum. Not a sum of shifted slices,
    whose gradient (one padded copy a slice) measured 9x slower under XLA
    on 32x32x32x64 (the pool's gradient is another pool), nor a
    cumulative sum (differences of large running sums lose precision) or
    a convolution (TF32 on GPUs).
    """
    if radius == 0:
        return values
    window = 2 * radius + 1
    padding = [(0, 0)] * len(values.shape)
    padding[axis] = (radius, radius)
    padded = ops.pad(values, padding)
    # Static sizes where known, tensors in a TF graph of unknown batch;
    # the leading size inferred (-1), so that a symbolic batch (jax2onnx's
    # export) is never multiplied into a reshape's target.
    shape = ops.shape(values)
    after = 1
    for size in shape[axis + 1 :]:
        after = after * size
    pooled = ops.average_pool(
        ops.reshape(padded, (-1, shape[axis] + 2 * radius, after)),
        window,
        1,
        "valid",
        "channels_last",
    )
    return ops.reshape(pooled, (-1,) + tuple(shape[1:])) * float(window)


def _safe_sqrt(value):
    """`sqrt(value)` with gradient 0, not NaN, where `value` is 0.

    `sqrt` has an infinite derivative at 0, and a constant channel (a dead
    ReLU feature map of the style) has variance exactly 0: its backward
    pass would be `inf * 0 = NaN`. The double `where` gives the same value
    everywhere and the subgradient 0 there.
    """
    positive = ops.greater(value, 0)
    safe = ops.where(positive, value, ops.ones_like(value))
    return ops.where(positive, ops.sqrt(safe), ops.zeros_like(value))


def adaptive_instance_normalization(
    content, style, axis=-1, epsilon=1e-5, dtype=None
):
    """Adaptive instance normalization (Huang & Belongie, 2017).

    `AdaIN(x, y) = sigma(y) * (x - mu(x)) / sigma(x) + mu(y)`: each
    (sample, channel) of the content `x` is instance-normalized, then takes
    the mean and standard deviation of the same (sample, channel) of the
    style `y`. The statistics are the mean and biased variance over the
    spatial axes (every axis but the batch axis 0 and the channel `axis`),
    so the style may have another spatial size than the content.

    `epsilon` goes where the authors' reference code
    (`AdaptiveInstanceNormalization.lua`, an instance norm with the style's
    statistics as its affine) puts it: under the content's variance only,
    `sigma(x) = sqrt(var(x) + epsilon)`, while `sigma(y) = sqrt(var(y))`
    (biased). A constant style channel then gives `sigma(y) = 0`, the
    output its mean, and a zero (not NaN) gradient through `sigma(y)`.
    One scale and shift per (sample, channel), applied once
    (`scale_and_shift` and `normalize`).

    Args:
        content: The tensor to normalize, with at least one spatial axis.
        style: The tensor whose statistics it takes: the same rank, batch
            size and channels as `content`; any spatial sizes.
        axis: Integer, the channel axis of both.
        epsilon: Small float added to the content's variance.
        dtype: Output dtype; defaults to the dtype of `content`.

    Examples:

    >>> content = np.array([[[1.0], [3.0]]], "float32")  # (batch, time, C)
    >>> style = np.array([[[10.0], [20.0], [30.0]]], "float32")
    >>> y = kn.ops.adaptive_instance_normalization(content, style, epsilon=0.0)
    >>> np.round(keras.ops.convert_to_numpy(y)[0, :, 0], 3)
    array([11.835, 28.165], dtype=float32)
    """
    content = _as_tensor(content)
    style = _as_tensor(style)
    ndim = len(content.shape)
    if len(style.shape) != ndim:
        raise ValueError(
            "The style must have the rank of the content. Received: "
            f"content.shape={tuple(content.shape)}, "
            f"style.shape={tuple(style.shape)}"
        )
    channel = _channel_axis(axis, ndim)
    reduction = _spatial_axes(ndim, channel)
    content_mean, content_variance = moments(content, reduction)
    style_mean, style_variance = moments(style, reduction)
    stats_dtype = backend.result_type(content_mean.dtype, style_mean.dtype)
    scale, shift = scale_and_shift(
        ops.cast(content_mean, stats_dtype),
        ops.cast(content_variance, stats_dtype),
        _safe_sqrt(ops.cast(style_variance, stats_dtype)),
        ops.cast(style_mean, stats_dtype),
        epsilon,
    )
    return normalize(content, scale, shift, _output_dtype(content, dtype))
