"""Backend-specific code: all of keras_norms' lives in this package.

Here, the cross-replica reductions; beside them, the fused kernels a
benchmark proved worth it, reached only from the functional ops of
`keras_norms.ops`, each answering `None` where it does not apply so the op
runs its one `keras.ops` implementation: `native.py` (torch's fused
kernels; TensorFlow's fused batch norm through `tf_fused.py`). Nothing
here compiles or caches a program behind the caller.

`SyncBatchNormalization` asks two questions of the running backend:

- `num_replicas()`: over how many replicas, each holding one shard of the
  batch, the statistics must be combined *explicitly*. It is 1 outside any
  distribution, and also where the backend's compiler already sees the
  global batch (JAX under `keras.distribution`: one GSPMD program whose
  reductions over a sharded batch axis XLA turns into all-reduces itself).
- `all_gather_rows(row)`: every replica's 1-D `row` stacked into a
  `(num_replicas, len(row))` tensor, in replica order, through ONE
  differentiable collective of the backend's own distribution machinery
  (TensorFlow: the `tf.distribute` replica context; torch: an autograd-aware
  all-reduce over the default `torch.distributed` process group).

and, on JAX, `named_axes()`: the axis names of an enclosing `pmap` or
`shard_map`, where each device traces its own shard (`()` elsewhere); on
torch, `join_all_processes(what, timeout)`: a rendezvous of every process
of the `torch.distributed` group with a timeout, for host-side functions
(precise statistics) that must run on every rank or not at all.

Host-side statistics (precise BatchNormalization statistics, computed by
each process on its own shard of the data) are combined across processes
by three functions: `num_processes()` (how many processes hold a shard:
the torch.distributed world size, `jax.process_count()`, the workers of
the `tf.distribute` strategy in scope), `sum_over_processes(vector)` (a
float64 NumPy vector summed over them through ONE collective of the
backend's own, identical on every process) and
`process_local_scope(variables)` (where a forward pass on a process's own
data must not be taken for a global array: JAX under a multi-process
`keras.distribution`).

One capability question serves channels-first convolutions:
`channels_first_conv_supported()` says whether the backend runs an NCHW
convolution op by op. TensorFlow's CPU kernels refuse NCHW unless oneDNN is
active (TensorFlow turns oneDNN on by default only on CPUs with
AVX-512-class features, and `TF_ENABLE_ONEDNN_OPTS=0` turns it off); XLA
handles NCHW everywhere. It is answered by a probe (one tiny convolution),
never by CPU model. `call_for_inference(model, inputs)` runs
`model(inputs, training=False)`, through XLA where the model holds a
channels-first layer that this backend cannot run op by op.

Each backend module is imported lazily, so importing keras_norms never
imports a framework the user did not choose.
"""

import contextlib
import importlib

import keras
import numpy as np

from keras_norms import _compat

__all__ = [
    "num_replicas",
    "all_gather_rows",
    "named_axes",
    "join_all_processes",
    "num_processes",
    "sum_over_processes",
    "process_local_scope",
    "outside_distribution",
    "channels_first_conv_supported",
    "call_for_inference",
]


def _module():
    name = keras.backend.backend()
    if name not in ("tensorflow", "jax", "torch"):
        name = "_local"
    return importlib.import_module(f"keras_norms.backend.{name}")


def num_replicas():
    """Replicas whose batch shards must be combined explicitly (1: none)."""
    return _module().num_replicas()


def all_gather_rows(row):
    """Stack every replica's 1-D `row` into `(num_replicas, len(row))`.

    One collective forward (and one backward); differentiable, so input
    gradients flow to every replica that contributed.
    """
    return _module().all_gather_rows(row)


def named_axes():
    """Named mapped axes the current JAX trace runs under (`()`: none)."""
    return _module().named_axes()


def join_all_processes(what, timeout):
    """Wait (up to `timeout` s) until every process has called this too.

    torch.distributed with several processes only (a no-op elsewhere);
    raises `RuntimeError` naming `what` when the others do not come.
    """
    return _module().join_all_processes(what, timeout)


def num_processes(what):
    """Processes each holding a shard of the data, to be combined (>= 1).

    Raises `RuntimeError` naming `what` where several processes run but
    the backend has no way to combine their values (TensorFlow: a
    multi-worker `TF_CONFIG` without a multi-worker strategy in scope).
    """
    return _module().num_processes(what)


def sum_over_processes(vector):
    """The float64 1-D `vector` summed over every process, on every process.

    One collective; the identity with a single process.
    """
    vector = np.ascontiguousarray(vector, dtype=np.float64)
    if num_processes("sum_over_processes") < 2:
        return vector
    return np.asarray(_module().sum_over_processes(vector), np.float64)


def process_local_scope(variables):
    """A context where a forward pass runs on this process's data alone.

    JAX under a multi-process `keras.distribution`: the distribution is
    unset and `variables` are read from (and written to) process-local
    copies in a `keras.StatelessScope`, which is discarded afterwards
    (nothing is written to `variables`). Elsewhere: nothing changes.
    """
    scope = getattr(_module(), "process_local_scope", None)
    return contextlib.nullcontext() if scope is None else scope(variables)


def outside_distribution():
    """A context where data stays this process's own (JAX under a
    multi-process `keras.distribution`: the distribution unset, so that
    Keras' data adapters neither refuse arrays nor re-shard datasets)."""
    scope = getattr(_module(), "outside_distribution", None)
    return contextlib.nullcontext() if scope is None else scope()


def channels_first_conv_supported():
    """Whether an NCHW convolution runs op by op (outside XLA) here.

    False only on TensorFlow without a channels-first CPU kernel (oneDNN
    off); True on JAX and torch. Probed once per process.
    """
    probe = getattr(_module(), "channels_first_conv_supported", None)
    return True if probe is None else probe()


def call_for_inference(model, inputs):
    """`model(inputs, training=False)`, where this backend can run it.

    A model (or layer) with a channels-first layer on a TensorFlow that
    cannot run NCHW convolutions op by op runs as one XLA-compiled
    function, which can; everything else is called directly.
    """
    call_with_xla = getattr(_module(), "call_with_xla", None)
    if (
        call_with_xla is None
        or channels_first_conv_supported()
        or not _has_channels_first(model)
    ):
        return model(inputs, training=False)
    return call_with_xla(model, inputs)


def _has_channels_first(layer):
    layers = [layer]
    if isinstance(layer, keras.layers.Layer):
        layers = _compat.flatten_layers(layer)
    return any(
        getattr(sub, "data_format", None) == "channels_first" for sub in layers
    )
