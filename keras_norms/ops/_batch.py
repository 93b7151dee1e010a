"""Normalizations with batch statistics: batch normalization (ghost
batches included), batch renormalization, EvoNorm-B0."""

import collections

from keras import ops

from keras_norms import _validation
from keras_norms import backend as kn_backend
from keras_norms.backend import native
from keras_norms.ops._common import _as_tensor
from keras_norms.ops._common import _channel_axis
from keras_norms.ops._common import _is_variable
from keras_norms.ops._common import _output_dtype
from keras_norms.ops._common import _spatial_axes
from keras_norms.ops._statistics import _broadcast_mask
from keras_norms.ops._statistics import _zero_where_empty
from keras_norms.ops._statistics import batch_moments
from keras_norms.ops._statistics import broadcast_weight
from keras_norms.ops._statistics import has_values
from keras_norms.ops._statistics import moments
from keras_norms.ops._statistics import normalize
from keras_norms.ops._statistics import scale_and_shift
from keras_norms.ops._statistics import statistics_dtype

BatchNormResult = collections.namedtuple(
    "BatchNormResult", ["outputs", "mean", "variance", "has_values"]
)
BatchNormResult.__doc__ = """What `batch_normalization` returns.

Fields:
    outputs: The normalized tensor.
    mean, variance: The per-channel statistics it was normalized with,
        shape `(channels,)`: the (biased) batch moments in training,
        else the statistics passed in.
    has_values: Whether the batch held any value (`True`/`False`, or a
        scalar boolean tensor where that is known only at run time): a
        layer updates its moving statistics only where it holds.
"""


def batch_normalization(
    x,
    axis=-1,
    gamma=None,
    beta=None,
    mean=None,
    variance=None,
    epsilon=1e-3,
    mask=None,
    synchronized=False,
    dtype=None,
    virtual_batch_size=None,
):
    """Batch normalization of `x` along its channel `axis`.

    `y = gamma * (x - mean) / sqrt(variance + epsilon) + beta`, per channel,
    with the statistics over every other axis (the batch and spatial
    axes). Without `mean` and `variance` (training), the statistics are
    the biased moments of this batch, and come back in the result for a
    moving average. With them (inference: the moving statistics), `x` is
    normalized with those.

    Kernel: torch's `F.batch_norm`, or TensorFlow's fused batch norm
    outside XLA, where the dtype and layout allow it (float32/float64 on
    torch; inference only where `mean` and `variance` are variables, which
    the fused kernels do not differentiate); else the `keras.ops`
    implementation (two-pass moments, one scale and shift). A `mask` or
    synchronized statistics always take the `keras.ops` path.

    Args:
        x: Input tensor of rank 2 or more.
        axis: Integer, the channel axis (`-1` channels-last, `1`
            channels-first).
        gamma: Optional per-channel scale, shape `(channels,)`.
        beta: Optional per-channel offset, shape `(channels,)`.
        mean, variance: Optional per-channel statistics to normalize with
            (both or neither), shape `(channels,)`.
        epsilon: Small float added to the variance.
        mask: Optional boolean tensor broadcastable to `x`: the batch
            statistics cover the positions where it is true only.
        synchronized: If `True`, the batch statistics cover every
            replica's shard of the batch (`cross_replica_moments`) where
            the backend's distribution machinery runs several replicas.
        dtype: Output dtype; defaults to the dtype of `x`.
        virtual_batch_size: Optional int `k` (ghost batch normalization,
            Hoffer et al., 2017): with batch statistics, the batch is split
            into `batch // k` ghost batches of `k` samples, each
            normalized with its own statistics (grouped as tf_keras
            groups them: ghost batch `j` holds samples `j`,
            `j + batch // k`, `j + 2 * (batch // k)`, ...), and the
            returned moments
            are the means over the groups of their means and of their
            biased variances. The batch must be a multiple of `k`. Ignored
            with given `mean` and `variance`. Not with `synchronized`.

    Returns:
        A `BatchNormResult(outputs, mean, variance, has_values)`.

    Examples:

    >>> x = np.array([[0.0, 0.0], [20.0, 200.0]], "float32")
    >>> result = kn.ops.batch_normalization(x)
    >>> np.round(keras.ops.convert_to_numpy(result.outputs), 3)
    array([[-1., -1.],
           [ 1.,  1.]], dtype=float32)
    >>> keras.ops.convert_to_numpy(result.mean)
    array([ 10., 100.], dtype=float32)
    """
    x = _as_tensor(x)
    ndim = len(x.shape)
    channel = _channel_axis(axis, ndim)
    axes = tuple(a for a in range(ndim) if a != channel)
    dtype = _output_dtype(x, dtype)
    if (mean is None) != (variance is None):
        raise ValueError(
            "Pass both `mean` and `variance` (inference) or neither "
            f"(batch statistics). Received: mean={mean is not None}, "
            f"variance={variance is not None}"
        )
    training = mean is None
    if training and virtual_batch_size is not None:
        return _ghost_batch_normalization(
            x,
            channel,
            gamma,
            beta,
            epsilon,
            mask,
            synchronized,
            dtype,
            virtual_batch_size,
        )
    combines = synchronized and kn_backend.num_replicas() > 1
    if training and synchronized:
        _refuse_named_axes()
    if mask is None and not combines:
        if training:
            fused = native.batch_norm(x, channel, gamma, beta, epsilon, dtype)
            if fused is not None:
                outputs, batch_mean, batch_variance = fused
                return BatchNormResult(
                    outputs, batch_mean, batch_variance, has_values(x, axes)
                )
        elif _is_variable(mean) and _is_variable(variance):
            outputs = native.batch_norm(
                x, channel, gamma, beta, epsilon, dtype, mean, variance
            )
            if outputs is not None:
                return BatchNormResult(outputs, mean, variance, True)
    stats_dtype = statistics_dtype(x.dtype)
    if training:
        mean, variance, nonempty = batch_moments(
            x, axes, mask=mask, synchronized=synchronized
        )
    else:
        nonempty = True
        mean = broadcast_weight(mean, ndim, (channel,), stats_dtype)
        variance = broadcast_weight(variance, ndim, (channel,), stats_dtype)
    scale, shift = scale_and_shift(
        mean,
        variance,
        broadcast_weight(gamma, ndim, (channel,), stats_dtype),
        broadcast_weight(beta, ndim, (channel,), stats_dtype),
        epsilon,
    )
    channels = (x.shape[channel],)
    return BatchNormResult(
        normalize(x, scale, shift, dtype),
        ops.reshape(mean, channels),
        ops.reshape(variance, channels),
        nonempty,
    )


def _ghost_batch_normalization(
    x, channel, gamma, beta, epsilon, mask, synchronized, dtype, size
):
    """Batch statistics per ghost batch of `size` samples, as tf_keras.

    tf_keras views the batch as `(size, batch // size, ...)` and reduces
    over the first axis, so ghost batch `j` holds samples `j`,
    `j + batch // size`, `j + 2 * (batch // size)`, ...; the same view
    here (no copy), the moments reduce over every axis but the ghost-batch
    axis and the channel axis, and the output is viewed back: one pass
    more than plain batch normalization, no transposes. Always the
    `keras.ops` implementation.
    """
    if synchronized:
        raise ValueError(
            "`virtual_batch_size` (ghost batch normalization) normalizes "
            "groups of samples of one replica's batch, which synchronized "
            "statistics would mix across replicas: use one or the other. "
            f"Received: virtual_batch_size={size}, synchronized=True"
        )
    if not _validation.is_integer(size):
        raise TypeError(
            "Argument `virtual_batch_size` must be an int. "
            f"Received: virtual_batch_size={size!r}"
        )
    batch = x.shape[0]
    if size <= 0 or (batch is not None and batch % size):
        raise ValueError(
            "In training, the batch size must be a multiple of "
            "`virtual_batch_size` (ghost batch normalization splits the "
            f"batch into groups of that many samples). Received: "
            f"virtual_batch_size={size}, batch size={batch}"
        )
    ndim = len(x.shape)
    rest = tuple(x.shape[1:])
    groups = batch // size if batch is not None else -1
    view = (size, groups) + tuple(-1 if d is None else d for d in rest)
    if sum(d == -1 for d in view) > 1:  # unknown batch and other sizes
        dynamic = ops.shape(x)
        view = (size, dynamic[0] // size) + tuple(dynamic[1:])
    grouped = ops.reshape(x, view)
    channel += 1  # the ghost-batch axis is the second
    axes = tuple(a for a in range(ndim + 1) if a not in (1, channel))
    if mask is not None:
        mask = ops.reshape(_broadcast_mask(mask, x), view)
    mean, variance = moments(grouped, axes, mask=mask)
    stats_dtype = mean.dtype
    scale, shift = scale_and_shift(
        mean,
        variance,
        broadcast_weight(gamma, ndim + 1, (channel,), stats_dtype),
        broadcast_weight(beta, ndim + 1, (channel,), stats_dtype),
        epsilon,
    )
    outputs = normalize(grouped, scale, shift, _output_dtype(x, dtype))
    outputs = ops.reshape(outputs, ops.shape(x))
    channels = (x.shape[channel - 1],)
    nonempty = has_values(grouped, (1,))
    mean, variance = (
        ops.reshape(ops.mean(m, axis=1), channels) for m in (mean, variance)
    )
    if nonempty is not True:  # no groups: zeros, not the NaN of a mean
        mean, variance = _zero_where_empty((mean, variance), nonempty)
    return BatchNormResult(outputs, mean, variance, nonempty)


def _refuse_named_axes():
    """Refuse synchronized statistics under a JAX `pmap`/`shard_map`.

    There each device traces its own shard and nothing combines them: the
    statistics would silently be per device and the moving statistics
    would drift apart.
    """
    names = kn_backend.named_axes()
    if names:
        raise ValueError(
            "Synchronized batch statistics cannot be computed inside a JAX "
            "`pmap`, `shard_map` or `vmap(axis_name=...)`: each device "
            "would use its own shard's statistics. Train under "
            "`keras.distribution.DataParallel` (one global program; the "
            "statistics are global), or use `BatchNormalization` for "
            f"per-device statistics. Received: axis_names={names}"
        )


def batch_renormalization(
    x,
    axis=-1,
    renorm_mean=None,
    renorm_stddev=None,
    gamma=None,
    beta=None,
    epsilon=1e-3,
    clipping=None,
    mask=None,
    synchronized=False,
    dtype=None,
):
    """Batch renormalization (Ioffe, 2017) of `x` in training.

    The batch-normalized values are corrected by
    `r = clip(sigma_batch / sigma_renorm)` and
    `d = clip((mean_batch - mean_renorm) / sigma_renorm)`, both
    stop-gradiented, as Keras computes them:
    `y = (x_hat * r + d) * gamma + beta`, folded into one scale and shift.
    Always the `keras.ops` implementation.

    Args:
        x: Input tensor of rank 2 or more.
        axis: Integer, the channel axis.
        renorm_mean, renorm_stddev: The per-channel moving mean and standard
            deviation the batch is corrected towards, shape `(channels,)`.
        gamma, beta: Optional per-channel scale and offset.
        epsilon: Small float added to the variance.
        clipping: Optional dict with keys among `"rmax"`, `"rmin"`,
            `"dmax"` bounding `r` and `d`.
        mask, synchronized, dtype: As in `batch_normalization`.

    Returns:
        A `BatchNormResult` with the (uncorrected) biased batch moments.
    """
    x = _as_tensor(x)
    ndim = len(x.shape)
    channel = _channel_axis(axis, ndim)
    axes = tuple(a for a in range(ndim) if a != channel)
    if synchronized:
        _refuse_named_axes()
    mean, variance, nonempty = batch_moments(
        x, axes, mask=mask, synchronized=synchronized
    )
    stats_dtype = mean.dtype
    stddev = ops.sqrt(variance + epsilon)
    renorm_mean = broadcast_weight(renorm_mean, ndim, (channel,), stats_dtype)
    renorm_stddev = ops.maximum(
        broadcast_weight(renorm_stddev, ndim, (channel,), stats_dtype),
        ops.sqrt(ops.cast(epsilon, stats_dtype)),
    )
    r = stddev / renorm_stddev
    d = (mean - renorm_mean) / renorm_stddev
    clipping = clipping or {}
    if clipping.get("rmin") is not None:
        r = ops.maximum(r, clipping["rmin"])
    if clipping.get("rmax") is not None:
        r = ops.minimum(r, clipping["rmax"])
    if clipping.get("dmax") is not None:
        d = ops.clip(d, -clipping["dmax"], clipping["dmax"])
    r = ops.stop_gradient(r)
    d = ops.stop_gradient(d)
    gamma = broadcast_weight(gamma, ndim, (channel,), stats_dtype)
    beta = broadcast_weight(beta, ndim, (channel,), stats_dtype)
    # (x_hat * r + d) * gamma + beta = x_hat * (r * gamma) + (d * gamma + beta)
    new_gamma = r if gamma is None else r * gamma
    new_beta = d if gamma is None else d * gamma
    if beta is not None:
        new_beta = new_beta + beta
    scale, shift = scale_and_shift(mean, variance, new_gamma, new_beta, epsilon)
    channels = (x.shape[channel],)
    return BatchNormResult(
        normalize(x, scale, shift, _output_dtype(x, dtype)),
        ops.reshape(mean, channels),
        ops.reshape(variance, channels),
        nonempty,
    )


def evo_norm_b0(
    x,
    axis=-1,
    v=None,
    gamma=None,
    beta=None,
    variance=None,
    epsilon=1e-5,
    dtype=None,
):
    """EvoNorm-B0 (Liu et al., 2020) of `x`: a batch-based norm-activation.

    `y = x / max(sqrt(batch_variance + epsilon),
    v * x + sqrt(instance_variance + epsilon)) * gamma + beta`

    with `batch_variance` per channel over the batch and spatial axes and
    `instance_variance` per sample and channel over the spatial axes (both
    biased, two-pass; no mean subtracted anywhere). The epsilon sits
    inside each square root, as in timm's `EvoNorm2dB0` and the TF model
    garden. With `variance` (a moving variance, shape `(channels,)`),
    that replaces the batch variance: the inference form. Computed in
    float32 for half-precision inputs; always the `keras.ops`
    implementation.

    Args:
        x: Input tensor with at least one spatial axis.
        axis: Integer, the channel axis.
        v: Optional per-channel weight, `(channels,)`; `None` means 1.
        gamma, beta: Optional per-channel scale and offset, `(channels,)`.
        variance: Optional per-channel variance used instead of the
            batch's.
        epsilon: Small float added to both variances.
        dtype: Output dtype; defaults to the dtype of `x`.

    Returns:
        A `BatchNormResult`: `outputs`; `mean` is `None` (no mean is
        subtracted); `variance` the per-channel batch variance, shape
        `(channels,)` (biased, what a layer blends into its moving
        variance), or the `variance` passed in; `has_values` whether the
        batch held any value.

    Examples:

    >>> x = np.array([[[1.0], [3.0]], [[-1.0], [-3.0]]], "float32")
    >>> result = kn.ops.evo_norm_b0(x, epsilon=0.0)  # batch variance 5
    >>> np.round(keras.ops.convert_to_numpy(result.outputs)[:, :, 0], 3)
    array([[ 0.447,  0.75 ],
           [-0.447, -1.342]], dtype=float32)
    >>> keras.ops.convert_to_numpy(result.variance)
    array([5.], dtype=float32)
    """
    x = _as_tensor(x)
    ndim = len(x.shape)
    channel = _channel_axis(axis, ndim)
    spatial = _spatial_axes(ndim, channel)
    channels = x.shape[channel]
    nonempty = True
    if variance is None:
        _, batch_variance, nonempty = batch_moments(x, (0,) + spatial)
        variance = ops.reshape(batch_variance, (channels,))
    else:
        batch_variance = broadcast_weight(
            variance, ndim, (channel,), statistics_dtype(x.dtype)
        )
    _, instance_variance = moments(x, spatial)
    stats_dtype = instance_variance.dtype
    xs = ops.cast(x, stats_dtype)
    v = broadcast_weight(v, ndim, (channel,), stats_dtype)
    denominator = ops.maximum(
        ops.sqrt(batch_variance + epsilon),
        (xs if v is None else xs * v) + ops.sqrt(instance_variance + epsilon),
    )
    y = xs / denominator
    if gamma is not None:
        y = y * broadcast_weight(gamma, ndim, (channel,), stats_dtype)
    if beta is not None:
        y = y + broadcast_weight(beta, ndim, (channel,), stats_dtype)
    return BatchNormResult(
        ops.cast(y, _output_dtype(x, dtype)), None, variance, nonempty
    )
