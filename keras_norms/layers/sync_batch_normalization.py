"""SyncBatchNormalization: batch statistics over every replica's shard."""

import math

import keras
from keras import ops

from keras_norms import backend as kn_backend
from keras_norms import ops as kn_ops
from keras_norms.layers import batch_normalization


@keras.saving.register_keras_serializable(package="keras_norms")
class SyncBatchNormalization(batch_normalization.BatchNormalization):
    """Batch normalization with statistics over the global, sharded batch.

    Under data parallelism each replica holds a shard of `B` samples of the
    global batch of `N * B`. Plain BatchNormalization normalizes each shard
    with that shard's statistics; SyncBatchNormalization normalizes every
    shard with the statistics of the whole global batch, so `N` replicas
    give exactly (up to float rounding) the outputs, moving statistics and
    input gradients of BatchNormalization on one device with the `N * B`
    batch:

    `y = gamma * (x - mean) / sqrt(variance + epsilon) + beta`

    with `mean` and the biased `variance` taken over the batch (and every
    other non-channel axis) of all replicas. Outside any distribution it
    behaves exactly like BatchNormalization (same arguments, defaults,
    weights, outputs); at inference it uses the moving statistics, which
    are updated with the global statistics and so are identical on every
    replica.

    How the statistics are combined, backend by backend:

    - TensorFlow, inside a `tf.distribute` strategy in replica context
      (`strategy.run`, `model.fit` under `strategy.scope()`): each replica
      computes, in two passes, its count `n_i`, mean `m_i` and sum of
      squared deviations `M2_i`, and packs them into one row
      `[n_i, m_i..., M2_i...]`; ONE `ReplicaContext.all_reduce` (each
      replica fills its own row of a zero matrix, so the sum is an
      all-gather) gives every replica every row, combined with Chan's
      parallel formula
      `mean = sum(n_i * m_i) / n`,
      `M2 = sum(M2_i + n_i * (m_i - mean)**2)`, `variance = M2 / n`.
      Numerically stable (no `E[x^2] - E[x]^2` on raw sums), weighted by
      the counts, so unequal shards are fine and an empty shard
      contributes nothing (and gets no NaN). The backward pass is one more
      all-reduce. In cross-replica context or under the default strategy
      it is BatchNormalization.
    - torch, when `torch.distributed` is initialized with a world size
      above 1: the same packed row through ONE autograd-aware all-reduce
      over the default process group (each process fills its own row of a
      zero matrix), so input gradients are those of the global batch.
    - JAX, under `keras.distribution` (`DataParallel`, or any layout that
      shards the batch axis): the train step is one global (GSPMD) jit, the
      layer sees the global batch, and BatchNormalization's plain moments
      already are global; XLA inserts the all-reduces. No explicit
      collective is issued.

    As with every synchronized batch norm, all replicas must call the layer
    in training mode the same number of times, in the same order.

    Training on a single value per channel across all replicas is refused
    with a `ValueError` ("expected more than 1 value per channel when
    training"), as in torch; in a TensorFlow graph, where the global count
    is only known at run time, the same message comes as a
    `tf.errors.InvalidArgumentError`.

    Args:
        axis: Integer, the channel axis: `-1` for channels-last, `1` for
            channels-first.
        momentum: Momentum of the moving average, in [0, 1].
        epsilon: Small float added to the variance, `> 0`.
        center: If `True`, add the learned offset `beta`.
        scale: If `True`, multiply by the learned scale `gamma`.
        beta_initializer, gamma_initializer: Initializers of the weights.
        moving_mean_initializer, moving_variance_initializer: Initializers
            of the moving statistics.
        beta_regularizer, gamma_regularizer: Optional regularizers.
        beta_constraint, gamma_constraint: Optional constraints.
        use_global_stats: If `True`, normalize with the moving statistics
            even when training (no collective is issued then).
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: Input tensor of rank 2 to 5, this replica's shard of the
            batch (possibly empty).
        training: Python boolean, whether to use (global) batch statistics.

    Reference:
        - [Ioffe & Szegedy, 2015](https://arxiv.org/abs/1502.03167).
        - [Peng et al., 2018, MegDet](https://arxiv.org/abs/1711.07240)
          (cross-GPU batch normalization).
        - [Chan, Golub & LeVeque, 1979](
          https://doi.org/10.1007/978-3-642-51461-6_3) (pairwise variance).
    """

    def _check_reduction_size(self, input_shape, axes, what):
        # With several replicas one shard may hold a single value (or none)
        # legitimately; the count that matters is the global one, checked
        # in `_batch_moments` after the collective.
        if kn_backend.num_replicas() > 1:
            return
        super()._check_reduction_size(input_shape, axes, what)

    def _batch_moments(self, x):
        if kn_backend.num_replicas() <= 1:
            return super()._batch_moments(x)
        axes = self._reduction_axes
        dtype = kn_ops.statistics_dtype(x.dtype)
        x = ops.cast(x, dtype)

        # Local count, mean and sum of squared deviations, in two passes.
        static = [x.shape[a] for a in axes]
        if all(s is not None for s in static):
            local_count = math.prod(static)
        else:
            shape = ops.shape(x)
            local_count = 1
            for a in axes:
                local_count = local_count * shape[a]
        count = ops.cast(ops.convert_to_tensor(local_count), dtype)
        safe = ops.maximum(count, ops.cast(1, dtype))  # empty shard: no NaN
        mean = ops.sum(x, axis=axes, keepdims=True) / safe
        m2 = ops.sum(ops.square(x - mean), axis=axes, keepdims=True)

        # One collective: every replica's packed [n, mean..., M2...] row.
        row = ops.concatenate(
            [
                ops.reshape(count, (1,)),
                ops.reshape(mean, (-1,)),
                ops.reshape(m2, (-1,)),
            ],
            axis=0,
        )
        rows = kn_backend.all_gather_rows(row)
        channels = math.prod(self._param_shape_in_view)
        counts = rows[:, :1]
        means = rows[:, 1 : 1 + channels]
        m2s = rows[:, 1 + channels :]

        # Chan's parallel combination, weighted by the counts.
        total = ops.sum(counts)
        if not (isinstance(local_count, int) and local_count >= 2):
            total = kn_backend.check_at_least(
                total,
                2,
                f"{type(self).__name__}: Expected more than 1 value per "
                "channel when training, across all "
                f"{kn_backend.num_replicas()} replicas. Received: "
                f"input_shape={tuple(x.shape)} on this replica",
            )
        global_mean = ops.sum(counts * means, axis=0) / total
        global_m2 = ops.sum(
            m2s + counts * ops.square(means - global_mean[None]), axis=0
        )
        variance = ops.maximum(global_m2 / total, ops.cast(0, dtype))
        shape = self._param_shape_in_view
        return ops.reshape(global_mean, shape), ops.reshape(variance, shape)
