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

Across processes (`keras.distribution.initialize`, `jax.process_count()
> 1`), host-side sums are combined by `sum_over_processes` with
`jax.experimental.multihost_utils.process_allgather`, and
`process_local_scope` runs a forward pass on a process's own data.
"""

import contextlib

import jax
import keras
import numpy as np

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


def num_processes(what):
    return jax.process_count()


def sum_over_processes(vector):
    """One `process_allgather` of the vector, summed on every process.

    The float64 values travel as their bytes (a `uint32` view), so that
    JAX's default 32-bit mode cannot round them; each process then adds the
    gathered rows in the same order, so every process holds the same sum.
    """
    from jax.experimental import multihost_utils

    rows = multihost_utils.process_allgather(vector.view(np.uint32))
    rows = np.ascontiguousarray(np.asarray(rows)).view(np.float64)
    return rows.reshape(jax.process_count(), -1).sum(axis=0)


def _local_value(variable):
    """A process-local (single-device) copy of a variable's global value."""
    value = variable.value
    if not isinstance(value, jax.Array) or value.is_fully_addressable:
        return value
    if value.is_fully_replicated:
        return value.addressable_data(0)
    from jax.experimental import multihost_utils

    return jax.numpy.asarray(
        multihost_utils.process_allgather(value, tiled=True)
    )


@contextlib.contextmanager
def outside_distribution():
    """The multi-process `keras.distribution` unset for a while, so that
    data read meanwhile stays this process's own (not re-sharded)."""
    distribution = keras.distribution.distribution()
    if jax.process_count() < 2 or distribution is None:
        yield
        return
    keras.distribution.set_distribution(None)
    try:
        yield
    finally:
        keras.distribution.set_distribution(distribution)


@contextlib.contextmanager
def process_local_scope(variables):
    """Run on this process's data alone, under a multi-process distribution.

    A multi-process `keras.distribution` makes every array a global one:
    a forward pass on this process's own data would be taken for global
    data, and assigning its (process-dependent) statistics to a variable
    fails in `jax.device_put` ("not the same on each process"). Here the
    distribution is unset and the variables are read from, and written
    to, process-local copies in a `keras.StatelessScope` that is then
    discarded, so the forward runs on this process's devices only.
    """
    if jax.process_count() < 2:
        yield
        return
    mapping = [(v, _local_value(v)) for v in variables]
    with outside_distribution(), keras.StatelessScope(state_mapping=mapping):
        yield
