"""The statistics kernel: moments, one scale and shift, and the helpers
every normalization op shares (see `keras_norms.ops`)."""

import math

from keras import backend
from keras import ops

from keras_norms import backend as kn_backend


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
