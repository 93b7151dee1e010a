"""The one door to private Keras, TensorFlow, JAX and torch APIs.

Keras 3 keeps a few things the package needs outside its public API (the
data adapters `fit` and `predict` read their input with, the input signature
its own exporter derives, the class of functional models, the stateless
scope a JAX train step runs in, the graph of a functional model, the nested
layers of a layer, the causal padding of a `Conv1D` and the layout of an
adapted `keras.layers.Normalization`), and TensorFlow, JAX (the names of
the mapped axes a trace runs under) and torch keep a few more.
Every use of such a private name in keras_norms goes through a function
here, so that:

- `import keras_norms` imports none of them: each import happens inside
  the function, the first time it is called (`tests/test_imports.py`
  checks that importing the package adds no `keras.src` module, nor a
  TensorFlow, JAX or torch module, to what `import keras` loads);
- a release that moves one breaks one function, which says what is
  missing (a `keras_norms` error naming the private API and the installed
  version) or falls back to a public equivalent where one exists (noted at
  each function);
- this file is the list of what to re-check when Keras, TensorFlow, JAX or
  torch is upgraded. Each function was checked against the versions of
  constraints.txt (Keras 3.15.1, TensorFlow 2.21, JAX 0.10.2, torch 2.13);
  `tests/test_compat.py` asserts that every private name used here exists
  in the installed versions, so an upgrade that drops one fails the suite
  instead of a fallback silently taking over.

The backend modules (`keras_norms/backend/`) call `torch_default_store`,
`torch_functional_collectives`, `tf_in_xla_context`, `jax_axis_names` and
`flatten_layers`; `keras_norms.layers.weight_normalization` calls
`causal_padding`.
"""

import importlib


def _private(module, what, package="keras"):
    """Import the private `module`, or say clearly what went missing."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        version = _version(package)
        raise ImportError(
            f"keras_norms needs {what} (the private module `{module}`), "
            f"which this {package} {version} does not have. Install a "
            f"{package} version keras_norms supports (see constraints.txt)."
        ) from error


def _private_attribute(owner, name, what, package="keras"):
    """`owner.name`, or a `RuntimeError` saying clearly what went missing."""
    try:
        return getattr(owner, name)
    except AttributeError as error:
        version = _version(package)
        where = getattr(owner, "__name__", None) or type(owner).__name__
        raise RuntimeError(
            f"keras_norms needs {what} (the private `{where}.{name}`), "
            f"which this {package} {version} does "
            f"not have. Install a {package} version keras_norms supports "
            "(see constraints.txt)."
        ) from error


def _version(package):
    try:
        return importlib.import_module(package).__version__
    except (ImportError, AttributeError):
        return "(unknown version)"


# ----------------------------------------------------------------------
# Keras
# ----------------------------------------------------------------------
def is_functional_model(model):
    """Whether `model` is a functional `keras.Model` (a readable graph).

    `keras.src.models.functional.Functional`, the class `keras.Model(inputs,
    outputs)` returns; without it (a Keras that moved it), any model that
    carries the graph attributes the graph tools read.
    """
    try:
        functional = importlib.import_module("keras.src.models.functional")
    except ImportError:
        return hasattr(model, "_nodes_by_depth") and hasattr(model, "inputs")
    return isinstance(model, functional.Functional)


def flatten_layers(layer, include_self=True):
    """`layer` (with `include_self`) and every layer nested in it, once.

    `Layer._flatten_layers(recursive=True)`: sublayers tracked as
    attributes, models' layers and wrapped layers, depth first. Checked
    with Keras 3.15.1; a `RuntimeError` where a Keras does not have it.
    """
    flatten = _private_attribute(
        layer, "_flatten_layers", "the nested layers of a layer"
    )
    return list(flatten(include_self=include_self, recursive=True))


def causal_padding(layer):
    """The `ops.pad` widths a `padding="causal"` `Conv1D` pads its input by.

    `Conv1D._compute_causal_padding()`: `dilation_rate * (kernel_size - 1)`
    zeros before the steps, along the steps axis of the layer's
    `data_format`. Checked with Keras 3.15.1; a `RuntimeError` where a
    Keras does not have it.
    """
    compute = _private_attribute(
        layer, "_compute_causal_padding", "the causal padding of a Conv1D"
    )
    return compute()


def tracked_sublayers(layer):
    """The layers `layer` tracks directly (`Layer._layers`), or `[]`."""
    return list(getattr(layer, "_layers", None) or [])


def graph_nodes(model):
    """Every node of a functional model's graph (`Functional._nodes_by_depth`).

    A node has `.operation`, `.arguments` (`.keras_tensors`, `.kwargs`)
    and `.outputs`.
    """
    return [n for depth in model._nodes_by_depth.values() for n in depth]


def producer(keras_tensor):
    """The operation whose node outputs `keras_tensor` (`_keras_history`)."""
    return keras_tensor._keras_history.operation


def normalization_layout(layer):
    """The layout of an adapted `keras.layers.Normalization`, as a dict.

    `rank`: the rank of the input it was built for; `keep_axes`: the axes
    with one statistic per index (`_keep_axis`); `statistics_shape`: the
    shape of its mean and variance (`_mean_and_var_shape`);
    `broadcast_shape`: the shape they broadcast to the input with
    (`_broadcast_shape`).
    """
    return {
        "rank": len(layer._build_input_shape),
        "keep_axes": tuple(layer._keep_axis),
        "statistics_shape": tuple(layer._mean_and_var_shape),
        "broadcast_shape": tuple(layer._broadcast_shape),
    }


def input_signature(model):
    """The input specs Keras' own exporter derives for `model`.

    `keras.src.export.export_utils.get_input_signature`: a (nested)
    structure of `keras.InputSpec`, also for subclassed models built by a
    call.
    """
    module = _private(
        "keras.src.export.export_utils", "the input signature of a model"
    )
    return module.get_input_signature(model)


def data_adapter(x, *, batch_size=None, steps=None):
    """The Keras `DataAdapter` that `predict` would read `x` with.

    `keras.src.trainers.data_adapters.get_data_adapter`; an adapter
    passed in is returned as it is. Arrays are not shuffled.
    """
    adapters = _private(
        "keras.src.trainers.data_adapters", "Keras' data adapters"
    )
    if isinstance(x, adapters.data_adapter.DataAdapter):
        return x
    return adapters.get_data_adapter(
        x, batch_size=batch_size, steps_per_epoch=steps, shuffle=False
    )


def unpack_inputs(data):
    """The `x` of a batch `x`, `(x,)`, `(x, y)` or `(x, y, sample_weight)`.

    `keras.utils.unpack_x_y_sample_weight`, public since Keras 3.0.
    """
    import keras

    return keras.utils.unpack_x_y_sample_weight(data)[0]


def stateless_scope():
    """The enclosing `keras.StatelessScope`, or `None` outside one.

    `keras.src.backend.common.stateless_scope.get_stateless_scope` (JAX's
    compiled train step runs the model in one).
    """
    module = _private(
        "keras.src.backend.common.stateless_scope",
        "the current Keras stateless scope",
    )
    return module.get_stateless_scope()


# ----------------------------------------------------------------------
# JAX
# ----------------------------------------------------------------------
def jax_axis_names():
    """The named mapped axes the current JAX trace runs under, as a tuple.

    `jax._src.core.unsafe_get_axis_names()`: the names bound by an
    enclosing `jax.pmap`, `shard_map` or `vmap(axis_name=...)`; `()`
    outside them. JAX has no public equivalent. Checked with JAX 0.10.2;
    an `ImportError` (a missing module) or `RuntimeError` (a missing
    function) where a JAX does not have it, never a silent `()`.
    """
    core = _private("jax._src.core", "the names of mapped axes", "jax")
    names = _private_attribute(
        core, "unsafe_get_axis_names", "the names of mapped axes", "jax"
    )
    return tuple(names())


# ----------------------------------------------------------------------
# torch
# ----------------------------------------------------------------------
def torch_default_store():
    """The key-value store of torch.distributed's default process group.

    `torch.distributed.distributed_c10d._get_default_store()`; a
    `RuntimeError` saying so where this torch does not have it.
    """
    import torch
    import torch.distributed as dist

    get_store = getattr(dist.distributed_c10d, "_get_default_store", None)
    if get_store is None:
        raise RuntimeError(
            "keras_norms needs the store of the default torch.distributed "
            "process group (`torch.distributed.distributed_c10d."
            f"_get_default_store`), which torch {torch.__version__} does not "
            "have. Install a torch version keras_norms supports (see "
            "constraints.txt)."
        )
    return get_store()


def torch_functional_collectives():
    """`torch.distributed._functional_collectives` with autograd, or `None`.

    `None` on a torch whose functional collectives are missing or do not
    register a backward (`all_reduce_backward`): the caller then uses the
    public `torch.distributed.nn.functional` collectives.
    """
    try:
        from torch.distributed import _functional_collectives as fc
    except ImportError:
        return None
    return fc if hasattr(fc, "all_reduce_backward") else None


# ----------------------------------------------------------------------
# TensorFlow
# ----------------------------------------------------------------------
def tf_in_xla_context():
    """Whether TensorFlow ops built now will be compiled by XLA.

    `False` when executing eagerly; in a graph,
    `tensorflow.python.ops.control_flow_util.GraphOrParentsInXlaContext`
    of the default graph. Without that private helper, `True`: the caller
    then takes the path it measured under XLA, correct in either case.
    """
    import tensorflow as tf

    if tf.executing_eagerly():
        return False
    try:
        from tensorflow.python.ops import control_flow_util
    except ImportError:
        return True
    return control_flow_util.GraphOrParentsInXlaContext(
        tf.compat.v1.get_default_graph()
    )
