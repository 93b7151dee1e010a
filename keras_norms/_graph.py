"""The layer graph of a model, as the rewriting tools read and rebuild it.

Folding (`keras_norms.folding`), `optimize_for_inference`
(`keras_norms.inference`), conversion (`keras_norms.conversion`) and
precise statistics (`keras_norms.precise`) all walk a Sequential or
functional model, decide per layer, and rebuild a new model around fresh
copies whose weights are set once the new model is built. That shared
part lives here:

- which models have a readable graph (`is_graph_model`,
  `check_graph_model`) and how its layers are used (`usage`);
- the layer kinds a fixed per-channel scale and shift folds into
  (`FOLDABLE` after, `FORWARD` before) and the channel axis of a layer;
- which layers are BatchNormalizations at inference
  (`is_batch_normalization`) or hold moving statistics
  (`is_batch_norm_like`);
- rebuilding (`rebuild_model`, `new_sequential`) and copying
  (`copy_layer`), with weights assigned by position or by name
  (`WeightsByName`) once the copies are built (`apply`).

Keras' private graph attributes are read through `keras_norms._compat`.
"""

import collections

import keras

from keras_norms import _compat
from keras_norms.layers import batch_normalization as _kn_bn
from keras_norms.layers import instance_normalization as _kn_in
from keras_norms.layers.affine import float64_numpy

# Weights as float64 NumPy arrays: the folds compute in float64 and round
# once to the kernel dtype.
numpy64 = float64_numpy

# ----------------------------------------------------------------------
# Layer kinds
# ----------------------------------------------------------------------
BATCH_NORM_CLASSES = (
    keras.layers.BatchNormalization,
    _kn_bn.BatchNormalization,
)

# Layers a following per-channel scale and shift folds into, by kernel
# layout. None of these groups subclasses another.
TRANSPOSE = (
    keras.layers.Conv1DTranspose,
    keras.layers.Conv2DTranspose,
    keras.layers.Conv3DTranspose,
)  # kernel (..., out, in)
DEPTHWISE = (
    keras.layers.DepthwiseConv1D,
    keras.layers.DepthwiseConv2D,
)  # kernel (..., in, multiplier)
SEPARABLE = (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)
CONV = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
DENSE = (keras.layers.Dense,)
FOLDABLE = TRANSPOSE + DEPTHWISE + SEPARABLE + CONV + DENSE

# Layers a preceding per-channel scale and shift folds into: a kernel of
# layout (..., input channels, output channels).
FORWARD = DENSE + CONV


def is_batch_normalization(layer):
    """Whether `layer` is, at inference, a fixed map of moving statistics.

    A Keras or keras_norms BatchNormalization (or subclass), or an
    `InstanceNormalization` with `track_running_stats=True`.
    """
    return isinstance(layer, BATCH_NORM_CLASSES) or (
        isinstance(layer, _kn_in.InstanceNormalization)
        and layer.track_running_stats
    )


def is_batch_norm_like(layer):
    """Whether `layer` keeps moving batch statistics that training updates.

    A BatchNormalization (see `BATCH_NORM_CLASSES`), or any layer with
    `moving_variance` and `momentum` attributes, with or without a
    `moving_mean` (the batch part of BatchInstance and Switchable
    normalization; `EvoNormB0`, which keeps no mean). Only precise
    statistics (`keras_norms.precise`) use it; folding asks
    `is_batch_normalization`.
    """
    if isinstance(layer, BATCH_NORM_CLASSES):
        return True
    return hasattr(layer, "moving_variance") and hasattr(layer, "momentum")


def channel_axis(layer):
    """The channel axis of a Dense or convolution layer's output (-1 or 1)."""
    if isinstance(layer, DENSE):
        return -1
    return 1 if layer.data_format == "channels_first" else -1


def is_lora_or_quantized(layer):
    """Whether `layer`'s kernel is not a plain variable a fold can scale."""
    return bool(
        getattr(layer, "lora_enabled", False)
        or getattr(layer, "quantization_mode", None)
    )


def output_shape(layer):
    """The output shape of a layer called once, or `None`."""
    try:
        return tuple(layer.output.shape)
    except (AttributeError, ValueError):
        return None


def keras_bias_add_is_wrong(layer, shape):
    """Whether Keras' bias add of a channels-first `layer` may be wrong.

    On the TensorFlow backend, Keras 3 (3.15) convolutions add their bias
    with `ops.add(outputs, reshape(bias, (1, C, 1, ...)))`, and `ops.add`
    turns that into `tf.nn.bias_add(..., "NHWC")` whenever the last axis
    of the output (of shape `shape`, `None` if unknown) also has size C:
    the bias goes along the last spatial axis. The folds avoid giving such
    a layer a bias, so that the folded model is right on every backend
    (and in the SavedModel).
    """
    if isinstance(layer, DENSE) or layer.data_format != "channels_first":
        return False
    if shape is None or shape[-1] is None:
        return True
    return shape[-1] == shape[1]


# ----------------------------------------------------------------------
# Reading a model's graph
# ----------------------------------------------------------------------
def is_graph_model(model):
    """Whether `model` is a Sequential or functional model."""
    return isinstance(model, keras.Sequential) or _compat.is_functional_model(
        model
    )


def check_graph_model(model, action):
    """Raise unless `model` is a built Sequential or functional model.

    `action` completes the messages, as in "Cannot {action} the subclassed
    model ...".
    """
    if not isinstance(model, keras.Model):
        raise TypeError(
            "Argument `model` must be a keras.Model. Received: "
            f"model={model!r} of type {type(model).__name__}"
        )
    if not model.built:
        raise ValueError(
            f"Model '{model.name}' is not built: build it (call it on data, "
            f"or create it with an Input) before you {action} it. "
            f"Received: model={model.name}"
        )
    if not is_graph_model(model):
        raise ValueError(
            f"Cannot {action} the subclassed model '{model.name}' "
            f"({type(model).__name__}): its layer graph cannot be read. "
            "Rebuild it as a functional or Sequential model. "
            f"Received: model={model.name}"
        )


Usage = collections.namedtuple("Usage", "nodes calls consumers outputs")
Usage.__doc__ = """How the operations and tensors of a functional graph are
used.

`nodes`: every node; `calls[id(operation)]`: how many nodes call it;
`consumers[id(keras_tensor)]`: the nodes taking that tensor (absent: none);
`outputs`: the ids of the model's output tensors.
"""


def usage(model):
    """The `Usage` of a built functional model's graph."""
    nodes = _compat.graph_nodes(model)
    calls = collections.Counter(id(node.operation) for node in nodes)
    consumers = {}
    for node in nodes:
        for kt in node.arguments.keras_tensors:
            consumers.setdefault(id(kt), []).append(node)
    outputs = {id(kt) for kt in keras.tree.flatten(model.outputs)}
    return Usage(nodes, calls, consumers, outputs)


def producer(keras_tensor):
    """The operation (layer, `InputLayer` or `keras.ops` call) behind it."""
    return _compat.producer(keras_tensor)


# ----------------------------------------------------------------------
# Rebuilding
# ----------------------------------------------------------------------
class WeightsByName(dict):
    """Weights to assign by attribute name once the new layer is built."""


def set_weights(new, weights):
    """Assign `weights` (a list for `set_weights`, or `WeightsByName`)."""
    if isinstance(weights, WeightsByName):
        for name, value in weights.items():
            variable = getattr(new, name)
            variable.assign(value.astype(variable.dtype))
        return
    new.set_weights(weights)
    # Adapted preprocessing layers (keras.layers.Normalization,
    # Discretization, ...) compute from their state variables only in
    # `finalize_state()`, which Keras' loader calls after loading them but
    # `set_weights` does not: without it a copied Normalization would
    # normalize with mean 0 and variance 1.
    finalize = getattr(new, "finalize_state", None)
    if callable(finalize):
        finalize()


def apply(assignments):
    """Set the weights of each `(new_layer, weights)` in `assignments`."""
    for new, weights in assignments:
        set_weights(new, weights)


def copy_layer(layer, assignments):
    """A fresh copy of `layer` (from its config); weights copied once built.

    A nested Sequential/functional model is copied with `rebuild_model`.
    """
    if isinstance(layer, keras.Model) and is_graph_model(layer):
        return rebuild_model(layer, copy_layer)
    config = layer.get_config()
    if isinstance(layer, keras.layers.Lambda):
        # Keras' safe mode refuses to deserialize a Python function read
        # from a file; this one is the user's own, serialized a moment
        # ago in this process from the model in memory.
        new = layer.__class__.from_config(config, safe_mode=False)
    else:
        try:
            new = layer.__class__.from_config(config)
        except ValueError as error:
            if "safe_mode" not in str(error):
                raise
            raise ValueError(
                f"Cannot copy layer '{layer.name}' "
                f"({type(layer).__name__}): keras_norms rewrites a model "
                "by copying each layer it keeps from its config, and this "
                "config loads only with Keras' unsafe deserialization. If "
                "you trust the model, call "
                "`keras.config.enable_unsafe_deserialization()` first. "
                f"Received: layer={layer.name!r}"
            ) from error
    assignments.append((new, layer.get_weights()))
    return new


def new_sequential(model, layers):
    """A `keras.Sequential` named as `model`, on fresh copies of its inputs."""
    inputs = [
        keras.Input(batch_shape=x.shape, dtype=x.dtype, name=x.name)
        for x in model.inputs
    ]
    return keras.Sequential(
        inputs + list(layers), name=model.name, trainable=model.trainable
    )


def rebuild_model(model, clone_function, *, skip=(), call_function=None):
    """A new model with the graph of `model` and the layers it is given.

    `keras.models.clone_model(recursive=False)` for functional models, a
    new `keras.Sequential` over the same inputs for Sequential ones.

    Args:
        model: A built Sequential or functional model.
        clone_function: `clone_function(layer, assignments)` returns the
            layer that takes `layer`'s place (called once per layer, so
            shared layers stay shared; never for the operations that are
            not layers, `keras.ops` calls recorded in a functional graph
            such as `Add` from `x + y`, which are stateless and kept as
            they are). It may append `(new_layer, weights)` to
            `assignments` (`weights` a list for `set_weights`, or a
            `WeightsByName`): they are set once the new model is built.
            Nested models are its business (see `copy_layer`).
        skip: Ids of single-input layers to remove: their consumers take
            their input instead.
        call_function: Functional models only, as in `clone_model`:
            `call_function(new_layer, *args, **kwargs)` builds the node of
            each layer that is not skipped.

    Returns:
        The new model, with the assigned weights set.
    """
    skip = frozenset(skip)
    assignments = []
    if isinstance(model, keras.Sequential):
        if call_function is not None:
            raise ValueError(
                "`call_function` needs a functional model. "
                f"Received: model={model.name} (Sequential)"
            )
        new_model = new_sequential(
            model,
            [
                clone_function(layer, assignments)
                for layer in model.layers
                if id(layer) not in skip
            ],
        )
    else:

        def clone(layer):
            if id(layer) in skip:
                return layer  # never called: `call` passes its input on
            if not isinstance(layer, keras.layers.Layer):
                # A `keras.ops` call recorded as a graph node (`Add` from
                # `x + y`, `Multiply`, `Transpose`, ...): an `Operation`
                # without weights or state, passed through unchanged.
                return layer
            return clone_function(layer, assignments)

        def call(layer, *args, **kwargs):
            if id(layer) in skip:
                return args[0]
            if call_function is not None:
                return call_function(layer, *args, **kwargs)
            return layer(*args, **kwargs)

        new_model = keras.models.clone_model(
            model, clone_function=clone, call_function=call, recursive=False
        )
    apply(assignments)
    return new_model
