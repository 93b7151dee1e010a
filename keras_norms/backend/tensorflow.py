"""TensorFlow: the `tf.distribute` replica context's own collectives.

Inside `strategy.run` (and so inside `model.fit` under a strategy) every
replica runs the layer in a replica context. Each replica writes its
statistics row into its own row of a zero `(num_replicas, len(row))`
matrix, and ONE `ReplicaContext.all_reduce(SUM)` of it gives every replica
every row: an all-gather built from an all-reduce.
`ReplicaContext.all_gather` would cost two collectives forward
(MirroredStrategy first gathers the per-replica shapes, then the values)
and one backward; the all-reduce costs one forward and one backward (its
gradient is the all-reduce of the upstream gradients), and makes input
gradients those of the global batch. In cross-replica context
(`strategy.scope()` while building), under the default strategy, or with a
single replica, nothing is combined.

Beside them, the channels-first probe (`channels_first_conv_supported`):
TensorFlow's CPU convolution kernels run NCHW only when oneDNN is active,
and `call_with_xla`, which runs a model where they are not.
"""

import functools

import tensorflow as tf


def _replica_context():
    if not tf.distribute.has_strategy():
        return None
    if tf.distribute.in_cross_replica_context():
        return None
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync < 2:
        return None
    return context


def num_replicas():
    context = _replica_context()
    return 1 if context is None else context.num_replicas_in_sync


def all_gather_rows(row):
    context = _replica_context()
    placement = tf.one_hot(
        context.replica_id_in_sync_group,
        context.num_replicas_in_sync,
        dtype=row.dtype,
    )
    return context.all_reduce(
        tf.distribute.ReduceOp.SUM, placement[:, None] * row[None]
    )


def named_axes():
    return ()


def join_all_processes(what, timeout):
    return None


@functools.cache
def channels_first_conv_supported():
    """Whether `tf.nn.conv2d` runs NCHW op by op (one 1x1 probe, eager).

    TensorFlow's own CPU kernels support only NHWC; its oneDNN kernels
    (on by default where the CPU has AVX-512-class features, off with
    `TF_ENABLE_ONEDNN_OPTS=0`) and its GPU kernels support NCHW too.
    """
    with tf.init_scope():
        try:
            tf.nn.conv2d(
                tf.zeros([1, 1, 2, 2]),
                tf.zeros([1, 1, 1, 1]),
                strides=1,
                padding="VALID",
                data_format="NCHW",
            )
        except (tf.errors.UnimplementedError, tf.errors.InvalidArgumentError):
            return False
    return True


def call_with_xla(model, inputs):
    """`model(inputs, training=False)` as one XLA-compiled function."""
    if not tf.executing_eagerly():  # already inside the caller's graph
        return model(inputs, training=False)
    return tf.function(
        lambda x: model(x, training=False), jit_compile=True, autograph=False
    )(inputs)
