"""Fold inference-mode BatchNormalization into the layer that feeds it.

At inference a BatchNormalization is a fixed per-channel map,
`y = x * a + b` with `a = gamma / sqrt(moving_variance + epsilon)` and
`b = beta - moving_mean * a` (step 3 of every normalization in
`keras_norms.ops`, with frozen statistics). When `x` is the output of a
linear Conv/Dense layer, `x = W * u + c`, the two fold into one layer:

    W' = W * a          (along the kernel's output-channel axis)
    c' = (c - moving_mean) * a + beta

and the BatchNormalization disappears. A BatchNormalization that cannot be
folded becomes one fixed `keras_norms.layers.affine.Affine` layer.
"""

import keras
import numpy as np

from keras_norms import _validation
from keras_norms.layers import batch_normalization as _kn_bn

__all__ = ["FoldReport", "fold_batch_norms", "batch_norm_scale_and_shift"]

_BN_CLASSES = (keras.layers.BatchNormalization, _kn_bn.BatchNormalization)

# Layers a BatchNormalization folds into, by kernel layout. Order matters:
# none of these groups subclasses another, but keep the specific ones first.
_TRANSPOSE = (
    keras.layers.Conv1DTranspose,
    keras.layers.Conv2DTranspose,
    keras.layers.Conv3DTranspose,
)
_DEPTHWISE = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)
_SEPARABLE = (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)
_CONV = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
_DENSE = (keras.layers.Dense,)
_FOLDABLE = _TRANSPOSE + _DEPTHWISE + _SEPARABLE + _CONV + _DENSE


def is_batch_normalization(layer):
    """Whether `layer` is a Keras or keras_norms BatchNormalization, or an
    InstanceNormalization with `track_running_stats=True`: at inference
    the same fixed per-channel scale and shift of its moving statistics."""
    from keras_norms.layers import instance_normalization as _kn_in

    return isinstance(layer, _BN_CLASSES) or (
        isinstance(layer, _kn_in.InstanceNormalization)
        and layer.track_running_stats
    )


def batch_norm_scale_and_shift(layer):
    """`(a, b)` in float64 with `layer(x, training=False) == x * a + b`.

    `a = gamma / sqrt(moving_variance + epsilon)`,
    `b = beta - moving_mean * a`; `gamma = 1` without `scale`, `beta = 0`
    without `center`.
    """
    if not layer.built:
        raise ValueError(
            f"BatchNormalization layer '{layer.name}' is not built; build or "
            "call the model before folding it."
        )
    def numpy(w):
        return np.asarray(keras.ops.convert_to_numpy(w), dtype=np.float64)

    mean = numpy(layer.moving_mean)
    variance = numpy(layer.moving_variance)
    gamma = numpy(layer.gamma) if layer.scale else np.ones_like(mean)
    beta = numpy(layer.beta) if layer.center else np.zeros_like(mean)
    scale = gamma / np.sqrt(variance + float(layer.epsilon))
    return scale, beta - mean * scale


def batch_norm_input_rank(layer):
    """The rank of the input a built BatchNormalization was built for."""
    spec = getattr(layer, "input_spec", None)
    if spec is not None and getattr(spec, "ndim", None) is not None:
        return spec.ndim
    return len(layer.input.shape)


class FoldReport:
    """What `fold_batch_norms` did.

    Attributes:
        folded: List of `(batch_norm_name, layer_name)`: each
            BatchNormalization folded into the named Conv/Dense layer.
        affine: List of `(batch_norm_name, reason)`: each BatchNormalization
            replaced by an `Affine` layer of the same name, and why it could
            not be folded.
    Names of layers inside nested models are prefixed with
    `"outer_model_name/"`.

    Examples:
        >>> model = keras.Sequential([
        ...     keras.Input((4,)),
        ...     keras.layers.Dense(3, name="dense"),
        ...     keras.layers.BatchNormalization(name="bn"),
        ... ])
        >>> folded, report = kn.fold_batch_norms(
        ...     model, verbose=0, return_report=True
        ... )
        >>> report.folded, report.affine
        ([('bn', 'dense')], [])
    """

    def __init__(self):
        self.folded = []
        self.affine = []

    def _merge(self, other, prefix):
        self.folded += [(prefix + b, prefix + c) for b, c in other.folded]
        self.affine += [(prefix + b, why) for b, why in other.affine]

    def __str__(self):
        lines = [
            f"Folded {len(self.folded)} BatchNormalization layer(s); "
            f"{len(self.affine)} became fixed Affine layer(s)."
        ]
        lines += [f"  folded {b} -> {c}" for b, c in self.folded]
        lines += [f"  affine {b} ({why})" for b, why in self.affine]
        return "\n".join(lines)

    def __repr__(self):
        return (
            f"FoldReport(folded={self.folded!r}, affine={self.affine!r})"
        )


def fold_batch_norms(model, verbose="auto", return_report=False):
    """A new model with every BatchNormalization folded away.

    Each `keras.layers.BatchNormalization` and
    `keras_norms.layers.BatchNormalization` (or subclass) that directly
    follows a linear `Conv1D/2D/3D`, `Conv1D/2D/3DTranspose`,
    `DepthwiseConv1D/2D`, `SeparableConv1D/2D` or `Dense` layer is folded
    into it, with its inference-time (moving) statistics:

        W' = W * gamma / sqrt(moving_variance + epsilon)
        b' = (b - moving_mean) * gamma / sqrt(moving_variance + epsilon) + beta

    along the kernel's output-channel axis, adding a bias where the layer had
    none. The fold is computed in float64 and rounded once to the kernel
    dtype. A BatchNormalization that cannot fold becomes one fixed
    `keras_norms.layers.affine.Affine` layer of the same name (the same
    per-channel `x * a + b`): when its input has other consumers (or is a
    model output), comes from a layer with a non-linear activation, from a
    layer of another kind, from a model input, or from a layer called more
    than once; when the BatchNormalization itself is called more than once;
    or when its `axis` is not the channel axis of the layer before it (for
    example a BatchNormalization over the rows of a channels-last Conv2D:
    still a per-position affine map, so it is kept as one, never refused).

    One exception: Keras' own bias add is wrong on the TensorFlow backend
    for a channels-first convolution whose output has as many columns as
    channels (it adds the bias along the last axis; Keras 3.15). Such a
    layer (or one of unknown width) without a bias keeps none: the kernel
    takes the scale and an `Affine` (scale 1) after it the shift, reported
    as folded; with a bias, the BatchNormalization becomes an `Affine`.

    The result computes `model(x, training=False)` (up to float32 rounding)
    and has no BatchNormalization left. Every other layer is a fresh copy
    with copied weights (operations that are not layers, `keras.ops` calls
    such as `x + y` recorded in a functional graph, are kept as they are);
    the original model is not modified and shares no weights with the
    result. Sequential and functional models are
    supported, and so are functional/Sequential models nested as layers
    (folded recursively; a BatchNormalization at the start of a nested
    model sees a model input and becomes an Affine).

    Args:
        model: A built `keras.Sequential` or functional `keras.Model`.
        verbose: `"auto"` or `1` prints the report, `0` is silent.
        return_report: If `True`, return `(folded_model, report)` where
            `report` is a `FoldReport` (lists `folded` and `affine`).

    Returns:
        The folded model, or `(folded_model, FoldReport)`.

    Raises:
        ValueError: If the model is not built, or is a subclassed model
            whose layer graph cannot be read.

    Examples:
        >>> model = keras.Sequential([
        ...     keras.Input((4,)),
        ...     keras.layers.Dense(3, name="dense"),
        ...     keras.layers.BatchNormalization(name="bn"),
        ... ])
        >>> folded = kn.fold_batch_norms(model)
        Folded 1 BatchNormalization layer(s); 0 became fixed Affine layer(s).
          folded bn -> dense
        >>> [layer.name for layer in folded.layers]
        ['dense']
        >>> x = np.random.default_rng(0).normal(size=(2, 4)).astype("float32")
        >>> y = model.predict(x, verbose=0)
        >>> np.allclose(folded.predict(x, verbose=0), y, atol=1e-5)
        True
    """
    verbose = _validation.check_verbose(verbose)
    _check_foldable_model(model)
    report = FoldReport()
    folded = _fold_model(model, report)
    if verbose:
        print(report)
    if return_report:
        return folded, report
    return folded


# ----------------------------------------------------------------------
# Model walking
# ----------------------------------------------------------------------
def _check_foldable_model(model):
    check_graph_model(model, "fold BatchNormalization layers of")


def check_graph_model(model, action):
    """Raise unless `model` is a built Sequential or functional model.

    `action` completes the messages, as in "Cannot {action} the subclassed
    model ...". Shared by folding, conversion and `optimize_for_inference`.
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
    if not _is_graph_model(model):
        raise ValueError(
            f"Cannot {action} the subclassed model '{model.name}' "
            f"({type(model).__name__}): its layer graph cannot be read. "
            "Rebuild it as a functional or Sequential model. "
            f"Received: model={model.name}"
        )


def _is_graph_model(model):
    return isinstance(model, keras.Sequential) or isinstance(
        model, keras.src.models.functional.Functional
    )


def _fold_model(model, report):
    if isinstance(model, keras.Sequential):
        return _fold_sequential(model, report)
    return _fold_functional(model, report)


def _clone_layer(layer, report, assignments):
    """A fresh copy of a layer that is kept (weights assigned later)."""
    if isinstance(layer, keras.Model) and _is_graph_model(layer):
        inner = FoldReport()
        new = _fold_model(layer, inner)
        report._merge(inner, layer.name + "/")
        return new
    return copy_layer(layer, assignments)


def _fold_sequential(model, report):
    layers = list(model.layers)
    new_layers = []
    assignments = []
    previous = None  # the original layer before the current one
    i = 0
    while i < len(layers):
        layer = layers[i]
        following = layers[i + 1] if i + 1 < len(layers) else None
        if isinstance(layer, _FOLDABLE) and is_batch_normalization(following):
            why = _refusal(layer, following, _output_shape(layer))
            if why is None:
                new, shift = _folded_copy(
                    layer, following, _output_shape(layer), assignments
                )
                new_layers += [new] if shift is None else [new, shift]
                report.folded.append((following.name, layer.name))
                i += 2
                previous = following
                continue
        if is_batch_normalization(layer):
            if previous is None:
                why = "its input is the model input"
            else:
                why = _refusal(previous, layer, _output_shape(previous))
            new_layers.append(_affine(layer))
            report.affine.append((layer.name, why))
        else:
            new_layers.append(_clone_layer(layer, report, assignments))
        previous = layer
        i += 1
    inputs = [
        keras.Input(batch_shape=x.shape, dtype=x.dtype, name=x.name)
        for x in model.inputs
    ]
    new_model = keras.Sequential(inputs + new_layers, name=model.name)
    _apply(assignments)
    return new_model


def _fold_functional(model, report):
    nodes = [n for depth in model._nodes_by_depth.values() for n in depth]
    consumers = {}
    node_count = {}
    for node in nodes:
        node_count[id(node.operation)] = node_count.get(id(node.operation), 0) + 1
        for kt in node.arguments.keras_tensors:
            consumers[id(kt)] = consumers.get(id(kt), 0) + 1
    for kt in keras.tree.flatten(model.outputs):
        consumers[id(kt)] = consumers.get(id(kt), 0) + 1

    fold_into = {}  # id(conv) -> bn
    folded_bns = set()  # id(bn)
    affine_bns = {}  # id(bn) -> reason
    for node in nodes:
        bn = node.operation
        if not is_batch_normalization(bn):
            continue
        if node_count[id(bn)] > 1:
            affine_bns[id(bn)] = "it is called more than once"
            continue
        kt = node.arguments.keras_tensors[0]
        producer = kt._keras_history.operation
        if isinstance(producer, keras.layers.InputLayer):
            affine_bns[id(bn)] = "its input is the model input"
            continue
        why = _refusal(producer, bn, tuple(kt.shape))
        if why is None and consumers[id(kt)] > 1:
            why = f"the output of '{producer.name}' has other consumers"
        if why is None and node_count[id(producer)] > 1:
            why = f"'{producer.name}' is called more than once"
        if why is None and node.arguments.kwargs.get("training") is True:
            why = "it is called with training=True"
        if why is None:
            fold_into[id(producer)] = (bn, tuple(kt.shape))
            folded_bns.add(id(bn))
        else:
            affine_bns[id(bn)] = why

    shifts = {}  # id(folded bn) -> Affine carrying the shift, or None

    def clone_function(layer, assignments):
        if id(layer) in folded_bns:
            return layer  # never called: `call_function` skips it
        if id(layer) in affine_bns:
            report.affine.append((layer.name, affine_bns[id(layer)]))
            return _affine(layer)
        if id(layer) in fold_into:
            bn, shape = fold_into[id(layer)]
            report.folded.append((bn.name, layer.name))
            new, shift = _folded_copy(layer, bn, shape, assignments)
            shifts[id(bn)] = shift
            return new
        return _clone_layer(layer, report, assignments)

    def call_function(layer, *args, **kwargs):
        if id(layer) in folded_bns:
            shift = shifts[id(layer)]
            return args[0] if shift is None else shift(args[0])
        if isinstance(layer, _affine_class()):
            # BatchNormalization takes `training` and `mask`; the fixed map
            # needs neither (masks propagate, `supports_masking=True`).
            return layer(args[0])
        return layer(*args, **kwargs)

    return rebuild_model(model, clone_function, call_function=call_function)


# ----------------------------------------------------------------------
# Graph rebuilding, shared with keras_norms.conversion and .inference
# ----------------------------------------------------------------------
def copy_layer(layer, assignments):
    """A fresh copy of `layer` (from its config); weights copied once built.

    A nested Sequential/functional model is copied with `rebuild_model`.
    """
    if isinstance(layer, keras.Model) and _is_graph_model(layer):
        return rebuild_model(layer, copy_layer)
    new = layer.__class__.from_config(layer.get_config())
    assignments.append((new, layer.get_weights()))
    return new


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
            they are). It may append `(new_layer,
            weights)` to `assignments` (a list for `set_weights`, or a
            `_WeightsByName`): they are set once the new model is built.
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
            raise ValueError("`call_function` needs a functional model.")
        new_layers = [
            clone_function(layer, assignments)
            for layer in model.layers
            if id(layer) not in skip
        ]
        inputs = [
            keras.Input(batch_shape=x.shape, dtype=x.dtype, name=x.name)
            for x in model.inputs
        ]
        new_model = keras.Sequential(
            inputs + new_layers, name=model.name, trainable=model.trainable
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
    _apply(assignments)
    return new_model


# ----------------------------------------------------------------------
# The fold itself
# ----------------------------------------------------------------------
def _affine_class():
    from keras_norms.layers.affine import Affine

    return Affine


def _affine(bn):
    return _affine_class().from_batch_normalization(bn)


def _channel_axis(layer):
    if isinstance(layer, _DENSE):
        return -1
    return 1 if layer.data_format == "channels_first" else -1


def _refusal(layer, bn, output_shape=None):
    """Why `bn` cannot fold into `layer` (its producer), or None."""
    if not isinstance(layer, _FOLDABLE):
        return (
            f"it follows '{layer.name}' ({type(layer).__name__}), not a "
            "Conv/Dense layer"
        )
    activation = keras.activations.serialize(layer.activation)
    if isinstance(activation, dict):
        activation = activation.get("config", activation)
    if activation not in ("linear", None):
        return f"'{layer.name}' has the non-linear activation {activation!r}"
    if getattr(layer, "lora_enabled", False) or getattr(
        layer, "quantization_mode", None
    ):
        return f"'{layer.name}' is LoRA-enabled or quantized"
    if layer.use_bias and _keras_bias_add_is_wrong(layer, output_shape):
        return (
            f"the bias add of the channels-first '{layer.name}' is wrong in "
            "Keras on TensorFlow for its output shape (see "
            "`_keras_bias_add_is_wrong`), so the fold could not match it"
        )
    ndim = batch_norm_input_rank(bn)
    (bn_axis,) = _validation.canonical_axes(bn.axis, ndim)
    if bn_axis != _channel_axis(layer) % ndim:
        return (
            f"its axis {bn.axis} is not the channel axis of "
            f"'{layer.name}' ({_channel_axis(layer)})"
        )
    return None


def _output_shape(layer):
    try:
        return tuple(layer.output.shape)
    except (AttributeError, ValueError):
        return None


def _keras_bias_add_is_wrong(layer, output_shape):
    """Whether Keras' bias add of a channels-first `layer` may be wrong.

    On the TensorFlow backend, Keras 3 (3.15) convolutions add their bias
    with `ops.add(outputs, reshape(bias, (1, C, 1, ...)))`, and `ops.add`
    turns that into `tf.nn.bias_add(..., "NHWC")` whenever the last axis
    of the output also has size C: the bias goes along the last spatial
    axis. A channels-first layer without a bias gets none here, so that
    its folded copy is right on every backend (and in the SavedModel).
    """
    if isinstance(layer, _DENSE) or layer.data_format != "channels_first":
        return False
    if output_shape is None or output_shape[-1] is None:
        return True
    return output_shape[-1] == output_shape[1]


def _numpy64(w):
    return np.asarray(keras.ops.convert_to_numpy(w), dtype=np.float64)


def _folded_copy(layer, bn, output_shape, assignments):
    """`(copy of layer with bn folded in, None or an Affine for the shift)`.

    The shift goes into the layer's bias, added if needed, except for a
    channels-first layer without a bias whose Keras bias add could be wrong
    (see `_keras_bias_add_is_wrong`): it then goes into an `Affine` (scale
    1) after the layer. Weights are assigned once the copy is built.
    """
    a, b = batch_norm_scale_and_shift(bn)
    config = layer.get_config()
    separate_shift = not layer.use_bias and _keras_bias_add_is_wrong(
        layer, output_shape
    )
    config["use_bias"] = not separate_shift
    new = layer.__class__.from_config(config)
    if isinstance(layer, _DEPTHWISE):
        kernel = _numpy64(layer.kernel)  # (..., in, multiplier)
        weights = {"kernel": kernel * a.reshape(kernel.shape[-2:])}
    elif isinstance(layer, _SEPARABLE):
        weights = {
            "depthwise_kernel": _numpy64(layer.depthwise_kernel),
            "pointwise_kernel": _numpy64(layer.pointwise_kernel) * a,
        }
    elif isinstance(layer, _TRANSPOSE):
        kernel = _numpy64(layer.kernel)  # (..., out, in)
        weights = {"kernel": kernel * a[:, None]}
    else:
        weights = {"kernel": _numpy64(layer.kernel) * a}
    bias = _numpy64(layer.bias) if layer.use_bias else np.zeros_like(a)
    shift = None
    if separate_shift:
        shift = _affine_class().from_batch_normalization(bn)
        shift.scale.assign(np.ones_like(a).astype(shift.scale.dtype))
        shift.offset.assign((bias * a + b).astype(shift.offset.dtype))
    else:
        weights["bias"] = bias * a + b
    assignments.append((new, _WeightsByName(weights)))
    return new, shift


class _WeightsByName(dict):
    """Weights to assign by attribute name once the new layer is built."""


def _set_weights(new, weights):
    if isinstance(weights, _WeightsByName):
        for name, value in weights.items():
            variable = getattr(new, name)
            variable.assign(value.astype(variable.dtype))
    else:
        new.set_weights(weights)
        # Adapted preprocessing layers (keras.layers.Normalization,
        # Discretization, ...) compute from their state variables only in
        # `finalize_state()`, which Keras' loader calls after loading them
        # but `set_weights` does not: without it a copied Normalization
        # would normalize with mean 0 and variance 1.
        finalize = getattr(new, "finalize_state", None)
        if callable(finalize):
            finalize()


def _apply(assignments):
    for new, weights in assignments:
        _set_weights(new, weights)
