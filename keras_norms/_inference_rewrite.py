"""The graph rewrites of the inference form of a model.

Three steps, each a new model: weight reparametrizations unwrapped and
`keras.layers.Normalization` made a fixed `Affine` (step 1),
BatchNormalization folded into the layer before it (step 2,
`keras_norms.folding`), fixed scale-and-shift layers folded into the
layer after them (step 3). The fold arithmetic is `_fold_math`'s; this
module places its results in the graph. `keras_norms.inference` checks
the result against the original model.
"""

import keras
import numpy as np

from keras_norms import _compat
from keras_norms import _fold_math
from keras_norms import _graph
from keras_norms import _validation
from keras_norms import folding
from keras_norms.layers import weight_normalization as _wn
from keras_norms.layers import weight_standardization as _ws
from keras_norms.layers.affine import Affine

# A `keras.layers.Normalization` becomes `x * (1 / std) - mean / std` only
# where `max |mean| / std <= _MAX_SHIFT_RATIO`: the float32 product and sum
# then err by at most about 2**-23 * 100 ~ 1.2e-5 of the normalized unit
# scale. Past it (a feature of large mean and small spread, or a constant
# feature, whose std Keras clamps to 1e-7) the terms are so much larger than
# their difference that float32 loses the feature: the layer is kept.
_MAX_SHIFT_RATIO = 100.0


class InferenceReport(folding.FoldReport):
    """What `optimize_for_inference` did.

    Attributes:
        unwrapped: List of `(wrapper_name, wrapper_class_name)`: each
            `WeightNormalization` / `WeightStandardization` replaced by the
            plain layer it wraps (named as the wrapper), holding the
            effective kernel.
        folded: List of `(batch_norm_name, layer_name)`: each
            BatchNormalization folded into the Conv/Dense layer before it
            (as `keras_norms.folding.fold_batch_norms` does).
        folded_forward: List of `(name, layer_name)`: each
            `keras.layers.Normalization`, or BatchNormalization that could
            not fold backward, folded as a fixed scale and shift into the
            Dense / `padding="valid"` Conv layer after it.
        affine: List of `(name, reason)`: each of those left as a fixed
            `Affine` layer of the same name, and why.
        kept: List of `(name, reason)`: each `keras.layers.Normalization`
            kept as it is (not a per-channel map, or one float32 could not
            fold exactly).
        check: The comparison of the new model with the original on the
            sample batch (a `Check`), or `None` before it ran.
    Names of layers inside nested models are prefixed with
    `"outer_model_name/"`.

    Examples:
        >>> model = keras.Sequential([
        ...     keras.Input((4,)),
        ...     kn.WeightNormalization(keras.layers.Dense(3), name="wn"),
        ...     kn.BatchNormalization(name="bn"),
        ... ])
        >>> plain, report = kn.optimize_for_inference(
        ...     model, verbose=0, return_report=True
        ... )
        >>> report.unwrapped, report.folded
        ([('wn', 'WeightNormalization')], [('bn', 'wn')])
        >>> report.check.passed
        True
    """

    def __init__(self):
        super().__init__()
        self.unwrapped = []
        self.folded_forward = []
        self.kept = []
        self.check = None

    def __str__(self):
        lines = [
            f"Unwrapped {len(self.unwrapped)} weight-reparametrized "
            f"layer(s); folded {len(self.folded)} BatchNormalization "
            f"layer(s) into the layer before and {len(self.folded_forward)} "
            f"fixed scale-and-shift layer(s) into the layer after; "
            f"{len(self.affine)} fixed Affine layer(s) remain."
        ]
        lines += [f"  unwrapped {w} ({kind})" for w, kind in self.unwrapped]
        lines += [f"  folded {b} -> {c}" for b, c in self.folded]
        lines += [
            f"  folded {a} -> {c} (forward)" for a, c in self.folded_forward
        ]
        lines += [f"  affine {a} ({why})" for a, why in self.affine]
        lines += [f"  kept {n} ({why})" for n, why in self.kept]
        if self.check is not None:
            lines.append(f"  checked: {self.check}")
        return "\n".join(lines)

    def __repr__(self):
        return (
            f"InferenceReport(unwrapped={self.unwrapped!r}, "
            f"folded={self.folded!r}, folded_forward={self.folded_forward!r}, "
            f"affine={self.affine!r}, kept={self.kept!r})"
        )


def rewrite(model):
    """`(new model, InferenceReport)`: the inference form, unchecked.

    The three steps of `keras_norms.optimize_for_inference` (unwrap,
    fold backward, fold forward); the callers check the result against
    the original themselves (`report.check` is `None`).
    """
    _graph.check_graph_model(model, "optimize for inference")
    report = InferenceReport()
    normalizations = set()  # names of the Normalizations now Affine
    model = _unwrap(model, report, normalizations, "")
    model, fold_report = folding.fold_batch_norms(
        model, verbose=0, return_report=True
    )
    report.folded = list(fold_report.folded)
    reasons = dict(fold_report.affine)
    model = _fold_forward(model, report, normalizations, reasons, "")
    # BatchNormalizations inside a ConditionalNormalization became Affine
    # layers inside it, out of `_fold_forward`'s reach: report them here.
    wrapped = set(fold_report.wrapped)
    report.affine += [
        (name, why) for name, why in fold_report.affine if name in wrapped
    ]
    return model, report


# ----------------------------------------------------------------------
# Step 1: unwrap WN / WS, Normalization -> Affine
# ----------------------------------------------------------------------
def _unwrap(model, report, normalizations, prefix):
    def clone_function(layer, assignments):
        if isinstance(layer, keras.Model):
            # A nested subclassed model: its layers cannot be reached.
            _graph.check_graph_model(
                layer,
                f"optimize model '{model.name}' for inference, as it nests",
            )
            return _unwrap(
                layer, report, normalizations, prefix + layer.name + "/"
            )
        if isinstance(layer, _wn.WeightNormalization):
            kernel, bias = layer.effective_kernel_and_bias()
        elif isinstance(layer, _ws.WeightStandardization):
            kernel = layer.standardized_kernel()
            bias = layer.layer.bias if layer.layer.use_bias else None
        elif isinstance(layer, keras.layers.Normalization):
            affine, why = _normalization_affine(layer)
            if affine is None:
                report.kept.append((prefix + layer.name, why))
                return _graph.copy_layer(layer, assignments)
            normalizations.add(prefix + layer.name)
            return affine
        else:
            return _graph.copy_layer(layer, assignments)
        report.unwrapped.append((prefix + layer.name, type(layer).__name__))
        config = layer.layer.get_config()
        config["name"] = layer.name
        new = layer.layer.__class__.from_config(config)
        weights = {"kernel": _graph.numpy64(kernel)}
        if bias is not None:
            weights["bias"] = _graph.numpy64(bias)
        assignments.append((new, _graph.WeightsByName(weights)))
        return new

    return _graph.rebuild_model(model, clone_function)


def _normalization_affine(layer):
    """`(Affine equal to the Normalization layer, None)` or `(None, why)`."""
    if not layer.built or getattr(layer, "mean", None) is None:
        raise ValueError(
            f"The keras.layers.Normalization layer '{layer.name}' has no mean "
            "and variance yet: call its `adapt(data)` (or pass `mean` and "
            f"`variance`) before optimizing the model. Received: "
            f"layer={layer.name}"
        )
    layout = _compat.normalization_layout(layer)
    ndim = layout["rank"]
    if len(layout["keep_axes"]) != 1:
        return None, (
            f"it normalizes with statistics of shape "
            f"{layout['statistics_shape']} over axis={layer.axis}, "
            "not one per channel"
        )
    (axis,) = layout["keep_axes"]
    mean = _graph.numpy64(layer.mean).reshape(-1)
    variance = _graph.numpy64(layer.variance).reshape(-1)
    std = np.maximum(np.sqrt(variance), keras.backend.epsilon())
    if layer.invert:
        scale, offset = std, mean
    else:
        scale, offset = 1.0 / std, -mean / std
        ratio = np.abs(mean) / std
        worst = int(np.argmax(ratio))
        if ratio[worst] > _MAX_SHIFT_RATIO:
            return None, (
                f"|mean| / std reaches {ratio[worst]:.3g} > "
                f"{_MAX_SHIFT_RATIO:g} on feature {worst} (mean "
                f"{mean[worst]:.6g}, variance {variance[worst]:.3g}): in "
                "float32 a fixed scale and shift would lose that feature"
            )
    affine = Affine.from_scale_and_offset(
        scale,
        offset,
        axis=axis - ndim,
        ndim=ndim,
        name=layer.name,
        dtype=layer.dtype_policy,
    )
    return affine, None


# ----------------------------------------------------------------------
# Step 3: fold a fixed scale-and-shift into the layer after it
# ----------------------------------------------------------------------
def _forward_refusal(affine, consumer):
    """Why `affine` cannot fold into `consumer` (the layer after it)."""
    if not isinstance(consumer, _graph.FORWARD):
        return (
            f"it feeds '{consumer.name}' ({type(consumer).__name__}), not a "
            "Dense or Conv1D/2D/3D layer"
        )
    if _graph.is_lora_or_quantized(consumer):
        return f"'{consumer.name}' is LoRA-enabled or quantized"
    ndim = affine.input_spec.ndim
    (axis,) = _validation.canonical_axes(affine.axis, ndim)
    channel_axis = _graph.channel_axis(consumer) % ndim
    if not isinstance(consumer, keras.layers.Dense):
        if consumer.padding != "valid":
            return (
                f"'{consumer.name}' has padding='{consumer.padding}': it pads "
                "the scaled and shifted input with zeros, which a fold "
                "cannot reproduce at the border"
            )
        if getattr(consumer, "groups", 1) != 1:
            return f"'{consumer.name}' is a grouped convolution"
        if _graph.keras_bias_add_is_wrong(
            consumer, _graph.output_shape(consumer)
        ):
            return (
                f"the bias add of the channels-first '{consumer.name}' is "
                "wrong in Keras on TensorFlow for its output shape"
            )
    if axis != channel_axis:
        return (
            f"its axis {affine.axis} is not the input-channel axis of "
            f"'{consumer.name}'"
        )
    return None


def _forward_folded_copy(affine, consumer, assignments):
    """A copy of `consumer` computing `consumer(affine(x))`."""
    new_kernel, new_bias = _fold_math.fold_before(
        _graph.numpy64(consumer.kernel),  # (..., in, out)
        _graph.numpy64(consumer.bias) if consumer.use_bias else None,
        _graph.numpy64(affine.scale),
        _graph.numpy64(affine.offset),
    )
    config = consumer.get_config()
    config["use_bias"] = True
    new = consumer.__class__.from_config(config)
    assignments.append(
        (new, _graph.WeightsByName({"kernel": new_kernel, "bias": new_bias}))
    )
    return new


def _fold_forward(model, report, normalizations, reasons, prefix):
    into = {}  # id(consumer) -> affine
    skip = set()  # id(affine) folded away
    outcome = []  # (affine, consumer or None, why)
    if isinstance(model, keras.Sequential):
        layers = list(model.layers)
        for i, layer in enumerate(layers):
            if not isinstance(layer, Affine):
                continue
            if i + 1 == len(layers):
                outcome.append((layer, None, "it is the model output"))
                continue
            consumer = layers[i + 1]
            why = _forward_refusal(layer, consumer)
            outcome.append((layer, consumer, why))
            if why is None:
                into[id(consumer)] = layer
                skip.add(id(layer))
    else:
        graph = _graph.usage(model)
        for node in graph.nodes:
            layer = node.operation
            if not isinstance(layer, Affine):
                continue
            consumer = None
            (kt,) = node.outputs
            users = graph.consumers.get(id(kt), [])
            if graph.calls[id(layer)] > 1:
                why = "it is called more than once"
            elif id(kt) in graph.outputs:
                why = "its output is a model output"
            elif len(users) != 1:
                why = "its output has several consumers"
            else:
                consumer = users[0].operation
                if graph.calls[id(consumer)] > 1:
                    why = f"'{consumer.name}' is called more than once"
                elif len(users[0].arguments.keras_tensors) != 1:
                    why = f"'{consumer.name}' takes several inputs"
                elif id(consumer) in into:
                    why = f"'{consumer.name}' already takes another fold"
                else:
                    why = _forward_refusal(layer, consumer)
            outcome.append((layer, consumer, why))
            if why is None:
                into[id(consumer)] = layer
                skip.add(id(layer))

    for layer, consumer, why in outcome:
        name = prefix + layer.name
        if why is None:
            report.folded_forward.append((name, prefix + consumer.name))
        elif name in normalizations:
            report.affine.append((name, f"a keras.layers.Normalization; {why}"))
        elif name in reasons:
            report.affine.append((name, f"{reasons[name]}; {why}"))

    def clone_function(layer, assignments):
        if isinstance(layer, keras.Model) and _graph.is_graph_model(layer):
            return _fold_forward(
                layer,
                report,
                normalizations,
                reasons,
                prefix + layer.name + "/",
            )
        if id(layer) in into:
            return _forward_folded_copy(into[id(layer)], layer, assignments)
        return _graph.copy_layer(layer, assignments)

    return _graph.rebuild_model(model, clone_function, skip=skip)
