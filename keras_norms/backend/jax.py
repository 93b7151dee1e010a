"""JAX: no explicit collective; XLA's SPMD partitioner inserts them.

Under `keras.distribution` (`DataParallel`, or a `ModelParallel` layout
whose batch axis is sharded) Keras on JAX jits the whole train step as ONE
global (GSPMD) program: a layer sees the *global* batch shape, and a mean
over the batch axis is a mean over the global batch. XLA partitions it into
a per-device partial sum followed by an all-reduce. So the plain two-pass
moments of `BatchNormalization` already are synchronized batch statistics,
and the static "more than one value per channel" check already sees the
global batch. `tests/layers/test_sync_batch_normalization.py` checks this against
BatchNormalization on one device and counts the all-reduces in the
compiled HLO.

Code written with explicit `jax.pmap` / `jax.shard_map` (or
`jax.vmap(axis_name=...)`) is a different model: each device traces its
own shard, and only a collective over the named axis would combine them.
`named_axes()` reports those names, so SyncBatchNormalization refuses to
train there instead of silently using each device's own statistics.
"""

from keras_norms import _compat


def num_replicas():
    return 1


def all_gather_rows(row):  # pragma: no cover - never called with 1 replica
    return row[None]


def named_axes():
    """The named mapped axes (`pmap`, `shard_map`, `vmap(axis_name=...)`)
    the current trace runs under; `()` outside them (and under `jit` with
    `keras.distribution`, whose GSPMD program sees the global batch).

    Read through `keras_norms._compat.jax_axis_names`, which raises where
    a JAX lacks the private function rather than answer `()`: a silent
    `()` would switch off SyncBatchNormalization's refusal to train with
    per-device statistics.
    """
    return _compat.jax_axis_names()


def join_all_processes(what, timeout):
    return None
