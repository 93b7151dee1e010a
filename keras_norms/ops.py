"""The one statistics kernel every keras_norms layer is built on.

Every normalization here is the same three steps:

1. pick the reduction axes (the layers do this);
2. compute the moments over them: `moments()`;
3. apply one scale and shift, `y = x * a + b` with
   `a = gamma * rsqrt(variance + epsilon)` and `b = beta - mean * a`:
   `scale_and_shift()` computes `a` and `b` from the (small) statistics and
   `normalize()` applies them to the (large) input.

Where the statistics and the affine parameters vary along different axes
(LayerNormalization: statistics per row, `gamma` per feature), `a` and `b`
would be as large as the input; `normalize_moments()` then applies the
per-row normalization and the per-feature affine one after the other.

The functions are written in `keras.ops`, so one implementation serves the
TensorFlow, JAX and PyTorch backends.

On top of these, one function per normalization (`batch_normalization`,
`batch_renormalization`, `layer_normalization`, `rms_normalization`,
`group_normalization`, `instance_normalization`,
`filter_response_normalization`, `adaptive_instance_normalization`,
`evo_norm_s0`, `evo_norm_b0`, `local_response_normalization`) takes a
tensor, its axes, weights and epsilon and returns the normalized tensor:
what each layer's `call` runs,
and what a user can call without a layer. Inside these functions, and only
there, a backend's fused kernel is chosen where a benchmark proved it pays
(torch's `F.batch_norm`, `F.layer_norm`, `F.group_norm`, `F.rms_norm`;
TensorFlow's fused batch norm and LRN kernel outside XLA; see
`keras_norms/backend/native.py`), as `keras.ops.layer_normalization` picks
`F.layer_norm` on torch; everywhere else they run the `keras.ops`
implementation built from the three steps. Both give the same result (the
tests compare them). Nothing is compiled or cached behind the caller: the
result depends on the arguments only.
"""

import collections
import math

from keras import backend
from keras import config
from keras import ops

from keras_norms import _validation
from keras_norms import backend as kn_backend
from keras_norms.backend import native

__all__ = [
    "statistics_dtype",
    "reduction_size",
    "has_values",
    "moments",
    "mean_square",
    "cross_replica_moments",
    "batch_moments",
    "pooled_moments",
    "scale_and_shift",
    "normalize",
    "normalize_moments",
    "broadcast_weight",
    "BatchNormResult",
    "batch_normalization",
    "batch_renormalization",
    "layer_normalization",
    "rms_normalization",
    "group_normalization",
    "instance_normalization",
    "filter_response_normalization",
    "adaptive_instance_normalization",
    "evo_norm_s0",
    "evo_norm_b0",
    "local_response_normalization",
    "conv",
]


def statistics_dtype(dtype):
    """The dtype statistics are accumulated in for inputs of `dtype`.

    `float16` and `bfloat16` inputs are promoted to `float32`; `float32` and
    `float64` stay as they are.
    """
    return backend.result_type(dtype, "float32")


def reduction_size(x, axes):
    """How many values of `x` each reduction over `axes` covers.

    A Python int where the sizes along `axes` are static (always on torch
    and under `jax.jit`), else a scalar integer tensor (a TensorFlow graph
    traced with an unknown batch size).
    """
    static = [x.shape[a] for a in axes]
    if all(s is not None for s in static):
        return math.prod(static)
    runtime = ops.shape(x)
    size = 1
    for a, s in zip(axes, static):
        size = size * (runtime[a] if s is None else s)
    return size


def has_values(x, axes):
    """Whether the reductions over `axes` cover at least one value.

    `True`/`False` where the sizes are static, else a scalar boolean
    tensor: an empty batch (detection heads with no region, the tail of a
    filtered dataset) has no statistics, and a layer keeps its state.
    """
    size = reduction_size(x, axes)
    if isinstance(size, int):
        return size > 0
    return ops.greater(size, 0)


def _zero_where_empty(values, nonempty):
    """`values` (statistics of a reduction) with 0 where it covered nothing.

    The mean of no values is NaN; an empty reduction's statistics are 0
    instead (as the masked path gives where the mask is set nowhere), so
    no NaN reaches the output, the gradients or the state. `nonempty` is
    `has_values(...)`: a Python bool costs nothing.
    """
    if nonempty is True:
        return values
    if nonempty is False:
        return tuple(ops.zeros_like(v) for v in values)
    return tuple(
        ops.where(nonempty, v, ops.zeros_like(v)) for v in values
    )


def _centre(mean):
    """The mean, stop-gradiented, for the variance's `x - mean`.

    Exact, not an approximation: the derivative of `sum(w * (x - m)**2)`
    with respect to `m` is `-2 * sum(w * (x - m))`, zero at the (weighted)
    mean. Cutting that path (as `tf.nn.moments` does) spares the backward
    pass a reduction over the input: measured 1.2-1.4x faster gradients
    under XLA in `benchmarks/bench_norms.py`.
    """
    return ops.stop_gradient(mean)


def moments(x, axes, keepdims=True, mask=None, synchronized=False):
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
        mask: Optional boolean or 0/1 tensor broadcastable to `x`: the
            statistics cover the positions where it is true only (a position
            set nowhere gives mean 0 and variance 0, as Keras does). Masked
            positions are left out with `where`, not multiplied by 0, so a
            NaN or inf there does not reach the statistics (as in Keras).
            Without a mask, a reduction over no values (an empty batch)
            gives mean 0 and variance 0 too, not NaN; one value gives its
            value and variance 0.
        synchronized: If `True` and the backend's distribution machinery
            runs several replicas that each hold a shard of the batch, the
            moments cover every replica's shard (see
            `cross_replica_moments`); otherwise ignored.

    Returns:
        A `(mean, variance)` tuple in `statistics_dtype(x.dtype)`.
    """
    axes = tuple(axes)
    x = ops.cast(x, statistics_dtype(x.dtype))
    if synchronized and kn_backend.num_replicas() > 1:
        mean, variance, _ = _cross_replica_moments(x, axes, mask)
    elif mask is None:
        # (torch.var_mean was measured 3x slower than these two passes on
        # torch for the spatial reductions of BIN/SN: not used.)
        mean = ops.mean(x, axis=axes, keepdims=True)
        variance = ops.mean(
            ops.square(x - _centre(mean)), axis=axes, keepdims=True
        )
        mean, variance = _zero_where_empty(
            (mean, variance), has_values(x, axes)
        )
    else:
        mask = _broadcast_mask(mask, x)
        count = ops.sum(ops.cast(mask, x.dtype), axis=axes, keepdims=True)
        count = ops.maximum(count, ops.cast(1, x.dtype))
        mean = ops.sum(ops.where(mask, x, 0), axis=axes, keepdims=True) / count
        variance = (
            ops.sum(
                ops.where(mask, ops.square(x - _centre(mean)), 0),
                axis=axes,
                keepdims=True,
            )
            / count
        )
    if not keepdims:
        mean = ops.squeeze(mean, axis=axes)
        variance = ops.squeeze(variance, axis=axes)
    return mean, variance


def _broadcast_mask(mask, x):
    """`mask` as a boolean tensor of `x`'s shape."""
    return ops.broadcast_to(ops.cast(mask, "bool"), ops.shape(x))


def mean_square(x, axes, keepdims=True):
    """`mean(x**2)` over `axes`, accumulated in float32 or wider.

    The second moment about zero: the statistic of RMSNormalization and of
    FilterResponseNormalization (`nu^2`). Half-precision inputs are
    accumulated in `statistics_dtype(x.dtype)`.

    Args:
        x: Input tensor.
        axes: Axes to reduce over (a list or tuple of ints).
        keepdims: Whether to keep the reduced axes with length 1.
    """
    x = ops.cast(x, statistics_dtype(x.dtype))
    return ops.mean(ops.square(x), axis=tuple(axes), keepdims=keepdims)


def cross_replica_moments(x, axes, mask=None):
    """Moments over every replica's shard of the batch, with ONE collective.

    Each replica computes, in two passes, its count `n_i`, mean `m_i` and
    sum of squared deviations `M2_i` per channel, and packs them into one
    row; one collective (`keras_norms.backend.all_gather_rows`, the
    backend's own machinery) gives every replica every row, combined with
    Chan's parallel formula `mean = sum(n_i * m_i) / n`,
    `M2 = sum(M2_i + n_i * (m_i - mean)**2)`, `variance = M2 / n`.
    Numerically stable (no `E[x^2] - E[x]^2` on raw sums) and weighted by
    the counts, so unequal shards are fine and an empty shard contributes
    nothing (and gets no NaN). As BatchNormalization on the global batch:
    one value per channel over all replicas gives variance 0, none at all
    gives mean 0 and variance 0 (see `batch_moments` for the count).

    Returns keepdims `(mean, variance)`.
    """
    mean, variance, _ = _cross_replica_moments(x, axes, mask)
    return mean, variance


def _cross_replica_moments(x, axes, mask=None):
    """`cross_replica_moments` and whether any replica held a value."""
    dtype = x.dtype
    if mask is None:
        local_count = reduction_size(x, axes)
        count = ops.cast(ops.convert_to_tensor(local_count), dtype)
        weights = None
    else:
        weights = _broadcast_mask(mask, x)
        count = ops.sum(ops.cast(weights, dtype), axis=axes, keepdims=True)
    safe = ops.maximum(count, ops.cast(1, dtype))  # empty shard: no NaN
    weighted = x if weights is None else ops.where(weights, x, 0)
    mean = ops.sum(weighted, axis=axes, keepdims=True) / safe
    deviations = ops.square(x - _centre(mean))
    if weights is not None:
        deviations = ops.where(weights, deviations, 0)
    m2 = ops.sum(deviations, axis=axes, keepdims=True)

    # One collective: every replica's packed [n..., mean..., M2...] row.
    keep_shape = mean.shape
    channels = math.prod(keep_shape)
    counts_per_row = 1 if weights is None else channels
    row = ops.concatenate(
        [ops.reshape(v, (-1,)) for v in (count, mean, m2)], axis=0
    )
    rows = kn_backend.all_gather_rows(row)
    counts = rows[:, :counts_per_row]
    means = rows[:, counts_per_row : counts_per_row + channels]
    m2s = rows[:, counts_per_row + channels :]

    total = ops.sum(counts, axis=0)
    nonempty = ops.greater(ops.sum(counts), 0)
    total = ops.maximum(total, ops.cast(1, dtype))  # empty everywhere
    global_mean = ops.sum(counts * means, axis=0) / total
    global_m2 = ops.sum(
        m2s + counts * ops.square(means - global_mean[None]), axis=0
    )
    variance = ops.maximum(global_m2 / total, ops.cast(0, dtype))
    return (
        ops.reshape(global_mean, keep_shape),
        ops.reshape(variance, keep_shape),
        nonempty,
    )


def batch_moments(x, axes, mask=None, synchronized=False):
    """`moments(x, axes, mask=mask, synchronized=synchronized)` and whether
    they cover any value: `(mean, variance, has_values)`.

    `has_values` is `True`/`False` where that is known from the shapes,
    else a scalar boolean tensor (a graph with an unknown batch size, or
    the global count of a synchronized batch). Layers that keep moving
    statistics update them only where it holds: an empty batch (on every
    replica) leaves the state unchanged.
    """
    axes = tuple(axes)
    if synchronized and kn_backend.num_replicas() > 1:
        x = ops.cast(x, statistics_dtype(x.dtype))
        return _cross_replica_moments(x, axes, mask)
    mean, variance = moments(x, axes, mask=mask)
    return mean, variance, has_values(x, axes)


def pooled_moments(mean, variance, axes):
    """Moments of the union of equal-size groups from the groups' moments.

    With `mean` and `variance` the biased moments of groups holding the same
    number of values, the moments of all of them together are
    `mean(mean_i)` and `mean(variance_i + (mean_i - mean)**2)` over `axes`
    (the law of total variance). The second form, not
    `mean(variance_i + mean_i**2) - mean**2`, keeps its precision when the
    means are large against the spread.

    Args:
        mean: Per-group means, e.g. of shape `(N, 1, 1, C)`.
        variance: Per-group biased variances, same shape.
        axes: Axes of `mean` to pool over (kept with length 1).

    Returns:
        A `(mean, variance)` tuple that broadcasts against the inputs; zeros
        where there are no groups to pool (an empty batch).
    """
    axes = tuple(axes)
    pooled_mean = ops.mean(mean, axis=axes, keepdims=True)
    pooled_variance = ops.mean(
        variance + ops.square(mean - pooled_mean), axis=axes, keepdims=True
    )
    # No groups (an empty batch pooled over the batch axis): 0, not NaN.
    return _zero_where_empty(
        (pooled_mean, pooled_variance), has_values(mean, axes)
    )


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
    # `beta - mean * scale` equals `-mean * scale + beta` bit for bit, with
    # one small op fewer (eager backends dispatch each one; XLA recomputes
    # these per element inside the fused scale-and-shift).
    if beta is not None:
        shift = beta - mean * scale
    else:
        shift = -mean * scale
    return scale, shift


def normalize(x, scale, shift, dtype=None):
    """Apply `x * scale + shift` in the statistics dtype, return in `dtype`.

    Args:
        x: Input tensor.
        scale: Tensor broadcastable to `x` (from `scale_and_shift`).
        shift: Tensor broadcastable to `x` (from `scale_and_shift`).
        dtype: Output dtype; defaults to the dtype of `x`.
    """
    out_dtype = backend.standardize_dtype(dtype or x.dtype)
    if backend.standardize_dtype(x.dtype) != backend.standardize_dtype(
        scale.dtype
    ):
        x = ops.cast(x, scale.dtype)
    y = x * scale + shift
    if backend.standardize_dtype(y.dtype) != out_dtype:
        y = ops.cast(y, out_dtype)
    return y


def normalize_moments(
    x, mean, variance, gamma=None, beta=None, epsilon=1e-3, dtype=None
):
    """`gamma * (x - mean) / sqrt(variance + epsilon) + beta`, unfolded.

    For statistics that vary along axes the affine parameters do not
    (LayerNormalization and RMSNormalization: one mean and variance per
    row, `gamma` and `beta` per feature), folding them into one scale and
    shift as `scale_and_shift()` does builds two input-sized tensors: more
    passes for eager backends, and on XLA's CPU backend a fusion that
    materializes the broadcast statistics (measured 3x slower than this
    order in `benchmarks/bench_norms.py`). Here the row statistics are
    applied first and the per-feature affine second, with no full-size
    intermediate beyond the output. Subtracting the mean before scaling is
    also the more accurate order for inputs of large mean.

    Args:
        x: Input tensor.
        mean: Mean broadcastable to `x`, or `None` for none subtracted (RMS
            normalization divides by the root mean square only).
        variance: Variance (or mean square) broadcastable to `x`.
        gamma: Optional scale broadcastable to `x`; `None` means 1.
        beta: Optional offset broadcastable to `x`; `None` means 0.
        epsilon: Small float added to the variance.
        dtype: Output dtype; defaults to the dtype of `x`.
    """
    out_dtype = backend.standardize_dtype(dtype or x.dtype)
    if backend.standardize_dtype(x.dtype) != backend.standardize_dtype(
        variance.dtype
    ):
        x = ops.cast(x, variance.dtype)
    if mean is not None:
        x = x - mean
    y = x * ops.rsqrt(variance + epsilon)
    if gamma is not None:
        y = y * gamma
    if beta is not None:
        y = y + beta
    if backend.standardize_dtype(y.dtype) != out_dtype:
        y = ops.cast(y, out_dtype)
    return y


def broadcast_weight(weight, ndim, axes, dtype=None):
    """A per-channel weight shaped to broadcast against a rank-`ndim` input.

    The one helper every normalization uses for its `gamma`, `beta` and
    statistics: `weight` holds one value per position along `axes` (its
    shape is the input's sizes along the sorted `axes`, as a layer's
    weights are built), and comes back with ones on every other axis,
    cast to `dtype`. A weight already of rank `ndim` is only cast. A
    per-channel weight on the last axis already broadcasts, so it skips
    the reshape (and the cast where the dtype matches): fewer small ops
    for eager backends to dispatch.

    Args:
        weight: A tensor or variable, or `None` (returned as is).
        ndim: Rank of the input.
        axes: Canonical (non-negative, sorted) axes the weight runs along.
        dtype: Optional dtype to cast to.
    """
    if weight is None:
        return None
    if dtype is not None and backend.standardize_dtype(
        weight.dtype
    ) != backend.standardize_dtype(dtype):
        weight = ops.cast(weight, dtype)
    shape = tuple(weight.shape)
    if len(shape) == ndim:
        return ops.convert_to_tensor(weight)
    view = [1] * ndim
    for axis, size in zip(sorted(axes), shape):
        view[axis] = size
    if tuple(view[ndim - len(shape):]) == shape and all(
        s == 1 for s in view[: ndim - len(shape)]
    ):
        return ops.convert_to_tensor(weight)
    return ops.reshape(weight, view)


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
            into `batch // k` consecutive groups of `k` samples, each
            normalized with its own statistics, and the returned moments
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
            x, channel, gamma, beta, epsilon, mask, synchronized, dtype,
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
    """Batch statistics per group of `size` consecutive samples.

    `x` is viewed as `(batch // size, size, ...)` (no copy), the moments
    reduce over every axis but the group axis and the channel axis, and
    the output is viewed back: one pass more than plain batch
    normalization, no transposes. Always the `keras.ops` implementation.
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
    view = (groups, size) + tuple(-1 if d is None else d for d in rest)
    if sum(d == -1 for d in view) > 1:  # unknown batch and other sizes
        dynamic = ops.shape(x)
        view = (dynamic[0] // size, size) + tuple(dynamic[1:])
    grouped = ops.reshape(x, view)
    channel += 1  # the group axis comes first
    axes = tuple(a for a in range(1, ndim + 1) if a != channel)
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
    nonempty = has_values(grouped, (0,))
    mean, variance = (
        ops.reshape(ops.mean(m, axis=0), channels) for m in (mean, variance)
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


def layer_normalization(
    x, axis=-1, gamma=None, beta=None, epsilon=1e-3, rms_scaling=False,
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
        return ops.reshape(
            ops.cast(weight, mean.dtype), (1, groups, per_group)
        )

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
    x, axis=-1, gamma=None, beta=None, epsilon=1e-3, mean=None,
    variance=None, dtype=None,
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
    x, groups, axis=-1, v=None, gamma=None, beta=None, epsilon=1e-5,
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


def evo_norm_b0(
    x, axis=-1, v=None, gamma=None, beta=None, variance=None, epsilon=1e-5,
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
    kernel for rank-4 channels-last float32 (measured 4x faster eager);
    else the `keras.ops` implementation, the window sums as a 1-D average
    pool over the zero-padded channels (torch's `F.local_response_norm`
    does the same and measured no faster).

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
    # Static sizes where known, tensors in a TF graph of unknown batch.
    shape = ops.shape(values)
    before = after = 1
    for size in shape[:axis]:
        before = before * size
    for size in shape[axis + 1:]:
        after = after * size
    pooled = ops.average_pool(
        ops.reshape(padded, (before, shape[axis] + 2 * radius, after)),
        window,
        1,
        "valid",
        "channels_last",
    )
    return ops.reshape(pooled, shape) * float(window)


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


def conv(x, kernel, strides=1, padding="valid", data_format=None,
         dilation_rate=1):
    """`keras.ops.conv` that runs channels-first wherever the backend can.

    Identical to `keras.ops.conv`, except where the backend has no
    channels-first convolution outside XLA (TensorFlow's CPU kernels with
    oneDNN off: `UnimplementedError: The Conv2D op currently only supports
    the NHWC tensor format on the CPU`): there a channels-first input is
    transposed to channels-last, convolved, and transposed back. Under XLA
    the transposes cost nothing; op by op they cost two copies.

    Args:
        x: Input of rank 3 to 5.
        kernel: Kernel `(*spatial, in_channels, out_channels)`.
        strides, padding, data_format, dilation_rate: As in
            `keras.ops.conv`.
    """
    data_format = data_format or config.image_data_format()
    if (
        data_format == "channels_last"
        or kn_backend.channels_first_conv_supported()
    ):
        return ops.conv(
            x, kernel, strides, padding, data_format, dilation_rate
        )
    rank = len(x.shape)
    to_last = [0, *range(2, rank), 1]
    to_first = [0, rank - 1, *range(1, rank - 1)]
    y = ops.conv(
        ops.transpose(x, to_last),
        kernel,
        strides,
        padding,
        "channels_last",
        dilation_rate,
    )
    return ops.transpose(y, to_first)
