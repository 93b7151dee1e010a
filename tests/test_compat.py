"""Every private API `keras_norms._compat` reaches exists where pinned.

`_compat` is the one module allowed to touch private Keras, TensorFlow,
JAX and torch names. Some of its functions fall back to a public
equivalent where a name went missing; the tests here assert that each
private name is present in the installed (pinned, constraints.txt)
versions, so an upgrade that removes or renames one fails the suite
instead of a fallback silently taking over. Each `_compat` function is
listed here: a new one without a row fails `test_every_function_listed`.
"""

import importlib
import inspect

import keras
import numpy as np
import pytest

from keras_norms import _compat

# (the `_compat` function, the framework, the private module, the name in
# it, dotted) for the names that live on a module or a class.
_NAMES = [
    (
        "is_functional_model",
        "keras",
        "keras.src.models.functional",
        "Functional",
    ),
    ("flatten_layers", "keras", "keras.layers", "Layer._flatten_layers"),
    (
        "causal_padding",
        "keras",
        "keras.layers",
        "Conv1D._compute_causal_padding",
    ),
    (
        "input_signature",
        "keras",
        "keras.src.export.export_utils",
        "get_input_signature",
    ),
    (
        "data_adapter",
        "keras",
        "keras.src.trainers.data_adapters",
        "get_data_adapter",
    ),
    (
        "data_adapter",
        "keras",
        "keras.src.trainers.data_adapters",
        "data_adapter.DataAdapter",
    ),
    (
        "stateless_scope",
        "keras",
        "keras.src.backend.common.stateless_scope",
        "get_stateless_scope",
    ),
    ("jax_axis_names", "jax", "jax._src.core", "unsafe_get_axis_names"),
    (
        "torch_default_store",
        "torch",
        "torch.distributed.distributed_c10d",
        "_get_default_store",
    ),
    (
        "torch_functional_collectives",
        "torch",
        "torch.distributed._functional_collectives",
        "all_reduce_backward",
    ),
    (
        "tf_in_xla_context",
        "tensorflow",
        "tensorflow.python.ops.control_flow_util",
        "GraphOrParentsInXlaContext",
    ),
]

# The functions whose private names are attributes of instances (set when
# a layer is made, built or adapted): checked by calling them on one.
_INSTANCE_NAMES = {
    "is_functional_model": "test_functional_graph_attributes",
    "graph_nodes": "test_functional_graph_attributes",
    "producer": "test_functional_graph_attributes",
    "tracked_sublayers": "test_tracked_sublayers",
    "normalization_layout": "test_normalization_layout",
}
# Functions of public APIs only.
_PUBLIC = {"unpack_inputs"}


def test_every_function_listed():
    functions = {
        name
        for name, value in vars(_compat).items()
        if inspect.isfunction(value) and not name.startswith("_")
    }
    listed = {row[0] for row in _NAMES} | set(_INSTANCE_NAMES) | _PUBLIC
    assert functions - listed == set(), (
        "List the private names these keras_norms._compat functions use "
        "in tests/test_compat.py"
    )
    assert listed - functions == set()
    for test in _INSTANCE_NAMES.values():
        assert callable(globals()[test])


@pytest.mark.parametrize(
    "function, package, module, name",
    _NAMES,
    ids=[f"{row[0]}:{row[2]}.{row[3]}" for row in _NAMES],
)
def test_private_name_present(function, package, module, name):
    installed = pytest.importorskip(package)
    value = importlib.import_module(module)
    for part in name.split("."):
        assert hasattr(value, part), (
            f"{package} {installed.__version__} has no `{module}.{name}`, "
            f"which keras_norms._compat.{function} uses: re-check it against "
            "this version"
        )
        value = getattr(value, part)


def test_functional_graph_attributes():
    inputs = keras.Input((3,))
    dense = keras.layers.Dense(2)
    hidden = dense(inputs)
    outputs = keras.layers.ReLU()(hidden)
    model = keras.Model(inputs, outputs)
    assert _compat.is_functional_model(model)
    assert not _compat.is_functional_model(keras.Sequential([dense]))
    operations = {id(n.operation) for n in _compat.graph_nodes(model)}
    assert operations == {id(layer) for layer in model.layers}
    assert _compat.producer(hidden) is dense


def test_tracked_sublayers():
    class Outer(keras.layers.Layer):
        def __init__(self):
            super().__init__()
            self.inner = keras.layers.Dense(2)

    outer = Outer()
    assert hasattr(keras.layers.Dense(1), "_layers")
    assert _compat.tracked_sublayers(outer) == [outer.inner]
    assert _compat.flatten_layers(outer) == [outer, outer.inner]
    assert _compat.flatten_layers(outer, include_self=False) == [outer.inner]


def test_normalization_layout():
    layer = keras.layers.Normalization(axis=-1)
    layer.adapt(np.arange(24, dtype="float32").reshape(2, 3, 4))
    assert _compat.normalization_layout(layer) == {
        "rank": 3,
        "keep_axes": (2,),
        "statistics_shape": (4,),
        "broadcast_shape": (1, 1, 4),
    }


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_causal_padding(data_format):
    layer = keras.layers.Conv1D(
        2, 3, dilation_rate=2, padding="causal", data_format=data_format
    )
    steps = [4, 0]  # dilation_rate * (kernel_size - 1) zeros before
    expected = (
        [[0, 0], steps, [0, 0]]
        if data_format == "channels_last"
        else [[0, 0], [0, 0], steps]
    )
    assert [list(p) for p in _compat.causal_padding(layer)] == expected


def test_missing_private_attribute_raises():
    # A Keras without the private method: a clear error, not a fallback.
    with pytest.raises(RuntimeError, match="_compute_causal_padding"):
        _compat.causal_padding(keras.layers.Dense(1))
    with pytest.raises(RuntimeError, match="_flatten_layers"):
        _compat.flatten_layers(object())


def test_jax_axis_names():
    jax = pytest.importorskip("jax")
    assert _compat.jax_axis_names() == ()
    seen = []

    def probe(x):
        seen.append(_compat.jax_axis_names())
        return x

    jax.vmap(probe, axis_name="rows")(np.zeros((2, 1), "float32"))
    assert seen == [("rows",)]


def test_missing_jax_axis_names_raises(monkeypatch):
    # Without the private function SyncBatchNormalization could not tell
    # it runs under a `pmap`: an error, never a silent `()`.
    pytest.importorskip("jax")
    core = importlib.import_module("jax._src.core")
    monkeypatch.delattr(core, "unsafe_get_axis_names")
    with pytest.raises(RuntimeError, match="unsafe_get_axis_names"):
        _compat.jax_axis_names()
