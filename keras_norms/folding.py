"""Fold inference-mode BatchNormalization into the layer that feeds it.

At inference a BatchNormalization is a fixed per-channel map,
`y = x * a + b` with `a = gamma / sqrt(moving_variance + epsilon)` and
`b = beta - moving_mean * a` (step 3 of every normalization in
`keras_norms.ops`, with frozen statistics). When `x` is the output of a
linear Conv/Dense layer, `x = W * u + c`, the two fold into one layer:

    W' = W * a          (along the kernel's output-channel axis)
    c' = (c - moving_mean) * a + beta

and the BatchNormalization disappears. A BatchNormalization that cannot be
folded becomes one fixed `keras_norms.layers.affine.Affine` layer. The
arithmetic is `keras_norms._fold_math`'s; this module finds the pairs and
rewrites the graph.
"""

import keras
import numpy as np

from keras_norms import _fold_math
from keras_norms import _graph
from keras_norms import _validation
from keras_norms.layers.affine import Affine
from keras_norms.layers.affine import batch_norm_input_rank
from keras_norms.layers.affine import batch_norm_scale_and_shift

__all__ = ["FoldReport", "fold_batch_norms", "batch_norm_scale_and_shift"]


class FoldReport:
    """What `fold_batch_norms` did.

    Attributes:
        folded: List of `(batch_norm_name, layer_name)`: each
            BatchNormalization folded into the named Conv/Dense layer.
        affine: List of `(batch_norm_name, reason)`: each BatchNormalization
            replaced by an `Affine` layer of the same name, and why it could
            not be folded.
        wrapped: The names (also in `affine`) of the BatchNormalizations
            inside a `ConditionalNormalization`, which became an `Affine`
            inside it.
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
        self.wrapped = []

    def _merge(self, other, prefix):
        self.folded += [(prefix + b, prefix + c) for b, c in other.folded]
        self.affine += [(prefix + b, why) for b, why in other.affine]
        self.wrapped += [prefix + b for b in other.wrapped]

    def __str__(self):
        lines = [
            f"Folded {len(self.folded)} BatchNormalization layer(s); "
            f"{len(self.affine)} became fixed Affine layer(s)."
        ]
        lines += [f"  folded {b} -> {c}" for b, c in self.folded]
        lines += [f"  affine {b} ({why})" for b, why in self.affine]
        return "\n".join(lines)

    def __repr__(self):
        return f"FoldReport(folded={self.folded!r}, affine={self.affine!r})"


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
    _graph.check_graph_model(model, "fold BatchNormalization layers of")


def _fold_model(model, report):
    if isinstance(model, keras.Sequential):
        return _fold_sequential(model, report)
    return _fold_functional(model, report)


def _clone_layer(layer, report, assignments):
    """A fresh copy of a layer that is kept (weights assigned later)."""
    if isinstance(layer, keras.Model) and _graph.is_graph_model(layer):
        inner = FoldReport()
        new = _fold_model(layer, inner)
        report._merge(inner, layer.name + "/")
        return new
    folded = _fold_wrapped_batch_norm(layer, report, assignments)
    if folded is not None:
        return folded
    return _graph.copy_layer(layer, assignments)


# The reason `FoldReport.affine` gives for a BatchNormalization that a
# ConditionalNormalization wraps (also listed in `FoldReport.wrapped`).
WRAPPED_BATCH_NORM = (
    "it is wrapped by a ConditionalNormalization, whose conditional scale "
    "and shift stay"
)


def _fold_wrapped_batch_norm(layer, report, assignments):
    """A `ConditionalNormalization` around a BatchNormalization, copied
    with the BatchNormalization replaced by its fixed `Affine` (reported
    as `"wrapper/bn"`); `None` for any other layer.

    The conditional scale and shift depend on the sample, so they cannot
    fold into a neighbouring kernel: only the wrapped statistics do.
    """
    from keras_norms.layers import conditional_normalization as _cn

    if not isinstance(layer, _cn.ConditionalNormalization) or not (
        _graph.is_batch_normalization(layer.normalization)
    ):
        return None
    config = layer.get_config()
    config["normalization"] = Affine.from_batch_normalization(
        layer.normalization
    )
    new = type(layer)(**config)
    name = f"{layer.name}/{layer.normalization.name}"
    report.affine.append((name, WRAPPED_BATCH_NORM))
    report.wrapped.append(name)
    # The wrapper's weights: the wrapped layer's (the Affine's, already
    # set), then the `scale` and `shift` Dense layers'.
    assignments.append(
        (
            new,
            config["normalization"].get_weights()
            + layer.scale.get_weights()
            + layer.shift.get_weights(),
        )
    )
    return new


def _fold_sequential(model, report):
    layers = list(model.layers)
    new_layers = []
    assignments = []
    previous = None  # the original layer before the current one
    i = 0
    while i < len(layers):
        layer = layers[i]
        following = layers[i + 1] if i + 1 < len(layers) else None
        foldable = isinstance(layer, _graph.FOLDABLE)
        if foldable and _graph.is_batch_normalization(following):
            shape = _graph.output_shape(layer)
            if _refusal(layer, following, shape) is None:
                new, shift = _folded_copy(layer, following, shape, assignments)
                new_layers += [new] if shift is None else [new, shift]
                report.folded.append((following.name, layer.name))
                i += 2
                previous = following
                continue
        if _graph.is_batch_normalization(layer):
            if previous is None:
                why = "its input is the model input"
            else:
                why = _refusal(previous, layer, _graph.output_shape(previous))
            new_layers.append(Affine.from_batch_normalization(layer))
            report.affine.append((layer.name, why))
        else:
            new_layers.append(_clone_layer(layer, report, assignments))
        previous = layer
        i += 1
    new_model = _graph.new_sequential(model, new_layers)
    _graph.apply(assignments)
    return new_model


def _fold_functional(model, report):
    graph = _graph.usage(model)
    fold_into = {}  # id(conv) -> (bn, conv output shape)
    folded_bns = set()  # id(bn)
    affine_bns = {}  # id(bn) -> reason
    for node in graph.nodes:
        bn = node.operation
        if not _graph.is_batch_normalization(bn):
            continue
        if graph.calls[id(bn)] > 1:
            affine_bns[id(bn)] = "it is called more than once"
            continue
        kt = node.arguments.keras_tensors[0]
        producer = _graph.producer(kt)
        if isinstance(producer, keras.layers.InputLayer):
            affine_bns[id(bn)] = "its input is the model input"
            continue
        why = _refusal(producer, bn, tuple(kt.shape))
        consumers = len(graph.consumers.get(id(kt), ())) + (
            id(kt) in graph.outputs
        )
        if why is None and consumers > 1:
            why = f"the output of '{producer.name}' has other consumers"
        if why is None and graph.calls[id(producer)] > 1:
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
            return Affine.from_batch_normalization(layer)
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
        if isinstance(layer, Affine):
            # BatchNormalization takes `training` and `mask`; the fixed map
            # needs neither (masks propagate, `supports_masking=True`).
            return layer(args[0])
        return layer(*args, **kwargs)

    return _graph.rebuild_model(
        model, clone_function, call_function=call_function
    )


# ----------------------------------------------------------------------
# The fold itself
# ----------------------------------------------------------------------
def _refusal(layer, bn, output_shape=None):
    """Why `bn` cannot fold into `layer` (its producer), or None."""
    if not isinstance(layer, _graph.FOLDABLE):
        return (
            f"it follows '{layer.name}' ({type(layer).__name__}), not a "
            "Conv/Dense layer"
        )
    activation = keras.activations.serialize(layer.activation)
    if isinstance(activation, dict):
        activation = activation.get("config", activation)
    if activation not in ("linear", None):
        return f"'{layer.name}' has the non-linear activation {activation!r}"
    if _graph.is_lora_or_quantized(layer):
        return f"'{layer.name}' is LoRA-enabled or quantized"
    if layer.use_bias and _graph.keras_bias_add_is_wrong(layer, output_shape):
        return (
            f"the bias add of the channels-first '{layer.name}' is wrong in "
            "Keras on TensorFlow for its output shape (see "
            "`keras_norms._graph.keras_bias_add_is_wrong`), so the fold "
            "could not match it"
        )
    ndim = batch_norm_input_rank(bn)
    (bn_axis,) = _validation.canonical_axes(bn.axis, ndim)
    channel_axis = _graph.channel_axis(layer)
    if bn_axis != channel_axis % ndim:
        return (
            f"its axis {bn.axis} is not the channel axis of "
            f"'{layer.name}' ({channel_axis})"
        )
    return None


def _folded_copy(layer, bn, output_shape, assignments):
    """`(copy of layer with bn folded in, None or an Affine for the shift)`.

    The shift goes into the layer's bias, added if needed, except for a
    channels-first layer without a bias whose Keras bias add could be wrong
    (see `keras_norms._graph.keras_bias_add_is_wrong`): it then goes into
    an `Affine` (scale 1) after the layer. Weights are assigned once the
    copy is built.
    """
    a, b = batch_norm_scale_and_shift(bn)
    numpy64 = _graph.numpy64
    config = layer.get_config()
    separate_shift = not layer.use_bias and _graph.keras_bias_add_is_wrong(
        layer, output_shape
    )
    config["use_bias"] = not separate_shift
    new = layer.__class__.from_config(config)
    bias = numpy64(layer.bias) if layer.use_bias else None
    if isinstance(layer, _graph.SEPARABLE):
        # The depthwise step keeps its kernel; the pointwise one takes a.
        pointwise, bias = _fold_math.fold_after(
            numpy64(layer.pointwise_kernel), bias, a, b
        )
        weights = {
            "depthwise_kernel": numpy64(layer.depthwise_kernel),
            "pointwise_kernel": pointwise,
        }
    else:
        kernel, bias = _fold_math.fold_after(
            numpy64(layer.kernel), bias, a, b, _kernel_layout(layer)
        )
        weights = {"kernel": kernel}
    shift = None
    if separate_shift:
        shift = Affine.from_scale_and_offset(
            np.ones_like(a),
            bias,
            axis=bn.axis,
            ndim=batch_norm_input_rank(bn),
            name=bn.name,
            dtype=bn.dtype_policy,
        )
    else:
        weights["bias"] = bias
    assignments.append((new, _graph.WeightsByName(weights)))
    return new, shift


def _kernel_layout(layer):
    """Where `layer`'s kernel keeps its output channels (`_fold_math`)."""
    if isinstance(layer, _graph.DEPTHWISE):
        return "in_multiplier"
    if isinstance(layer, _graph.TRANSPOSE):
        return "out_in"
    return "in_out"
