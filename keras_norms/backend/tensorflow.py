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

Across processes (workers of a `tf.distribute.MultiWorkerMirroredStrategy`
in scope), host-side sums are combined by `sum_over_processes` with the
strategy's own `reduce(SUM)`; a `TF_CONFIG` naming several workers without
such a strategy in scope is refused, since nothing could combine them.

Beside them, the channels-first probe (`channels_first_conv_supported`):
TensorFlow's CPU convolution kernels run NCHW only when oneDNN is active,
and `call_with_xla`, which runs a model where they are not.
"""

import functools
import json
import os

import numpy as np
import tensorflow as tf

_WORKER_JOBS = ("chief", "worker")


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


def _workers(cluster_spec):
    jobs = cluster_spec.as_dict() if cluster_spec else {}
    return sum(len(jobs.get(job, ())) for job in _WORKER_JOBS)


def _strategy_workers():
    """Workers of the strategy in scope (1: none, or a one-machine one)."""
    if not tf.distribute.has_strategy():
        return 1
    resolver = tf.distribute.get_strategy().cluster_resolver
    return max(1, _workers(resolver.cluster_spec() if resolver else None))


def _tf_config_workers():
    if not os.environ.get("TF_CONFIG"):
        return 1
    try:
        json.loads(os.environ["TF_CONFIG"])
    except ValueError:
        return 1  # not a cluster TensorFlow could join either
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    return max(1, _workers(resolver.cluster_spec()))


def num_processes(what):
    workers = _strategy_workers()
    if workers > 1:
        if not tf.distribute.in_cross_replica_context():
            raise RuntimeError(
                f"{what} must be called outside `strategy.run` (in the "
                "cross-replica context of the multi-worker strategy's "
                "`scope()`), on every worker with its own shard of the "
                "data: it combines the workers' statistics through the "
                "strategy. Received: a call in a replica context of "
                f"{tf.distribute.get_strategy().__class__.__name__}"
            )
        return workers
    configured = _tf_config_workers()
    if configured > 1:
        strategy = tf.distribute.get_strategy().__class__.__name__
        raise RuntimeError(
            f"{what} runs in a TensorFlow cluster of {configured} workers "
            "(TF_CONFIG) without a multi-worker strategy in scope, so each "
            "worker would get the statistics of its own data only. Call it "
            "on every worker inside the `scope()` of the "
            "`tf.distribute.MultiWorkerMirroredStrategy` that trains the "
            "model (`with strategy.scope(): ...`); it then combines every "
            f"worker's statistics. Received: strategy={strategy}, "
            f"TF_CONFIG workers={configured}"
        )
    return 1


def sum_over_processes(vector):
    """One `strategy.reduce(SUM)` of the float64 vector over all workers.

    The vector enters once per worker: on its first local replica, zeros
    on its other local replicas (a worker with several GPUs).
    """
    strategy = tf.distribute.get_strategy()
    local_ids = strategy.experimental_local_results(
        strategy.experimental_distribute_values_from_function(
            lambda context: context.replica_id_in_sync_group
        )
    )
    first = min(int(i) for i in local_ids)
    zeros = np.zeros_like(vector)

    def value(context):
        own = context.replica_id_in_sync_group == first
        return tf.constant(vector if own else zeros)

    total = strategy.reduce(
        tf.distribute.ReduceOp.SUM,
        strategy.experimental_distribute_values_from_function(value),
        axis=None,
    )
    return total.numpy()


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
