"""SyncBatchNormalization: batch statistics over every replica's shard."""

import inspect

import keras

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
    replica. It is `BatchNormalization(synchronized=True)`, a class of its
    own so that `convert_sync_batchnorm`-style code and readers can tell
    it apart; the reduction is `keras_norms.ops.cross_replica_moments`.

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
      collective is issued. Inside an explicit `jax.pmap`, `jax.shard_map`
      or `jax.vmap(axis_name=...)`, where each device traces its own shard
      and nothing would combine them, training is refused with a
      `ValueError` naming the axis names (per-device statistics there
      would be silently wrong and the moving statistics would drift apart
      between devices): use `keras.distribution`, or
      `BatchNormalization` for per-device statistics.

    As with every synchronized batch norm, all replicas must call the layer
    in training mode the same number of times, in the same order.

    As BatchNormalization on the global batch (and Keras): a single value
    per channel over all replicas normalizes to `beta` (variance 0) and
    moves the moving variance towards 0; no value at all (every shard
    empty) gives empty outputs and leaves the moving statistics unchanged.

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
        mask: Optional boolean tensor of the input's shape without its
            last axis, expanded at the last axis whatever `axis` is, as in
            `BatchNormalization` (and Keras): the global statistics cover
            the unmasked positions of every replica only.

    Reference:
        - [Ioffe & Szegedy, 2015](https://arxiv.org/abs/1502.03167).
        - [Peng et al., 2018, MegDet](https://arxiv.org/abs/1711.07240)
          (cross-GPU batch normalization).
        - [Chan, Golub & LeVeque, 1979](
          https://doi.org/10.1007/978-3-642-51461-6_3) (pairwise variance).

    Examples:
        On one device it computes what `BatchNormalization` computes:

        >>> layer = kn.SyncBatchNormalization()
        >>> x = np.array([[0.0, 10.0], [4.0, 30.0]], dtype="float32")
        >>> y = layer(x, training=True)
        >>> print(np.round(keras.ops.convert_to_numpy(y), 3))
        [[-1. -1.]
         [ 1.  1.]]
        >>> layer.synchronized
        True
    """

    def __init__(self, *args, **kwargs):
        # Always synchronized; a config carrying the key is accepted.
        kwargs["synchronized"] = True
        super().__init__(*args, **kwargs)

    # Same arguments as BatchNormalization, for introspection and docs.
    __init__.__signature__ = inspect.signature(
        batch_normalization.BatchNormalization.__init__
    )
