"""`optimize_for_inference`: the inference form of a model.

Named after TensorFlow's `optimize_for_inference` tool and PyTorch's
`torch.jit.optimize_for_inference`: every normalization whose inference
map is a fixed per-channel `y = x * a + b` is moved into the weights of a
neighbouring linear layer, and weight reparametrizations are replaced by
the plain layer holding the kernel they compute. The result is a plain
Keras model (Dense/Conv layers, a few fixed `Affine` layers, and the norms
that compute statistics of their input at inference), which
`keras.Model.quantize`, `export_saved_model` and any other Keras tool take
like any model.
"""

import warnings

import keras
import numpy as np

from keras_norms import _compat
from keras_norms import _fold_math
from keras_norms import _graph
from keras_norms import _validation
from keras_norms import backend as kn_backend
from keras_norms import folding
from keras_norms.layers import weight_normalization as _wn
from keras_norms.layers import weight_standardization as _ws
from keras_norms.layers.affine import Affine

__all__ = ["InferenceReport", "optimize_for_inference"]

# The check of a rewritten or exported model against the original: output
# by output, `max|got - expected| <= ATOL + RTOL * max|expected|`. RTOL
# accepts float32 reassociation (about 2e-5 of the output scale on deep
# models with outputs of order 1e3) and still catches a wrong fold (a lost
# feature or a misplaced bias is off by a sizeable part of the scale).
ATOL = 1e-5
RTOL = 1e-4
_ON_MISMATCH = ("raise", "warn")

# A model computing in float16 or bfloat16 (a `mixed_float16` /
# `mixed_bfloat16` policy, or a layer of such a dtype) rounds every
# intermediate to that dtype's resolution `eps` (the spacing of floats at
# 1: 2**-10, 2**-7): a fold, an exporter or a runtime that rounds at other
# places differs by a few `eps` of the scale of the values. The check then
# uses `atol = rtol = REDUCED_PRECISION_ULPS * eps` (float16: 0.0156;
# bfloat16: 0.125), i.e. `max|got - expected| <= 16 * eps * (1 +
# max|expected|)`: the folds and exports measured up to 1.6 eps of
# `max(1, max|output|)` on Conv-BN nets; a wrong fold is off by a sizeable
# part of the scale.
REDUCED_PRECISION_ULPS = 16
_RESOLUTION = {"float16": 2.0**-10, "bfloat16": 2.0**-7}

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


def optimize_for_inference(
    model,
    verbose="auto",
    return_report=False,
    *,
    sample=None,
    atol=None,
    rtol=None,
    on_mismatch="raise",
):
    """A new, plain Keras model computing `model(x, training=False)`.

    In order:

    1. Every `keras_norms.layers.WeightNormalization` and
       `WeightStandardization` becomes the plain layer it wraps (named as
       the wrapper) holding the effective kernel (`g * v / ||v||`, or the
       standardized kernel) and bias. Every `keras.layers.Normalization`
       over one axis (the per-channel data normalization set with `adapt`)
       becomes a fixed `Affine`, `x * (1 / std) - mean / std` (with
       Keras' `max(std, keras.backend.epsilon())`; the inverse map for
       `invert=True`); over several axes it is kept as it is. It is kept
       as well where float32 could not compute the fixed map exactly:
       where `max |mean| / std > 100` over the features (a constant
       feature, whose variance is 0 and whose `std` Keras clamps to 1e-7,
       or a large mean against a small spread), `x / std` and `mean / std`
       are so much larger than their difference that float32 loses the
       feature; below that bound the map errs by at most about 1e-5 of
       the normalized scale.
    2. Every BatchNormalization is folded into the Conv/Dense layer before
       it, or becomes a fixed `Affine`, exactly as
       `keras_norms.folding.fold_batch_norms` does (so a BatchNormalization
       after an unwrapped WN/WS layer folds into it).
    3. Every `Affine` whose output feeds only a `Dense`, or a
       `Conv1D/2D/3D` with `padding="valid"` and `groups=1`, over its
       input-channel axis, is folded into that layer:

           W' = W * scale        (along the kernel's input-channel axis)
           b' = b + sum(W * offset)

       which, for a Normalization, is `W' = W / std` and
       `b' = b - sum(W * mean / std)`. This takes the data normalization
       of the model's input into its first layer. A "same" or "causal"
       padding would pad the *normalized* input with zeros, which the
       folded layer cannot reproduce at the border, so there the `Affine`
       stays (as it does when the output has other consumers, is a model
       output, or the layer is called more than once).

    The folds are computed in float64 and rounded once to the kernel dtype.
    Other norms (Layer, Group, Instance, RMS, ...) are kept: at inference
    they compute statistics of their own input, already in one pass.
    Finally the new model is checked against the original on a sample
    batch (`sample`, or a deterministic batch of 4 built from the model's
    inputs, unknown dimensions 16: standard normal, or drawn from the
    statistics of an adapted `keras.layers.Normalization` the input
    feeds), output by output:

        max |new - original| <= atol + rtol * max |original|

    The defaults follow the model's compute dtype: for float32,
    `atol=1e-5`, `rtol=1e-4` (float32 rounding passes on outputs of any
    scale and a wrong fold does not); for a mixed precision model (a
    `mixed_float16` / `mixed_bfloat16` policy, globally or on some
    layers), `atol = rtol = 16 * eps` of its lowest-precision compute
    dtype (`eps = 2**-10` for float16, `2**-7` for bfloat16: 0.0156 and
    0.125), as the folded kernels and each intermediate are rounded to
    that dtype (measured: up to 1.6 eps of the output scale). The result
    computes in the model's dtypes.

    The result holds only Keras layers and fixed `Affine` layers, so
    `result.quantize("int8")`, `export_saved_model` and `.keras` saving
    work on it as on any model. The original model is not modified and
    shares no weights with the result. Sequential and functional models
    are supported, and so are Sequential/functional models nested in them.

    Args:
        model: A built `keras.Sequential` or functional `keras.Model`.
        verbose: `"auto"` or `1` prints the report, `0` is silent.
        return_report: If `True`, return `(new_model, report)`, `report` an
            `InferenceReport`.
        sample: Input batch for the check, in the structure the model
            takes (an array; a list, dict or nested structure of arrays
            for several inputs); `None` builds one (see above).
        atol: Absolute part of the check's tolerance; `None` follows the
            model's compute dtype (see above).
        rtol: Part of the tolerance relative to `max |original output|`;
            `None` follows the model's compute dtype.
        on_mismatch: `"raise"` (a `ValueError` with the figures) or
            `"warn"` (a warning with the figures; the model is returned)
            when the check fails.

    Returns:
        The new model, or `(new_model, InferenceReport)`.

    Raises:
        ValueError: If the model is not built, is a subclassed model whose
            layer graph cannot be read, or holds a `Normalization` that
            was never built; or, with `on_mismatch="raise"`, if the new
            model differs from the original on the sample.

    Examples:
        >>> model = keras.Sequential([
        ...     keras.Input((4,)),
        ...     kn.WeightNormalization(keras.layers.Dense(3), name="wn"),
        ...     kn.BatchNormalization(name="bn"),
        ... ])
        >>> plain = kn.optimize_for_inference(model, verbose=0)
        >>> [type(layer).__name__ for layer in plain.layers]
        ['Dense']
    """
    verbose = _validation.check_verbose(verbose)
    atol, rtol, on_mismatch = check_tolerance(atol, rtol, on_mismatch)
    new, report = optimize_unchecked(model)
    atol, rtol = tolerances(model, atol, rtol)
    sample, expected = reference_outputs(model, sample)
    report.check = Check.run(
        model_outputs(new, sample),
        expected,
        atol=atol,
        rtol=rtol,
        what=f"The optimized model '{new.name}'",
    )
    if verbose:
        print(report)
    report.check.enforce(on_mismatch)
    if return_report:
        return new, report
    return new


def optimize_unchecked(model):
    """`(new model, InferenceReport)`: `optimize_for_inference` unchecked.

    For the exports, which check the written model against the original
    themselves (`report.check` is `None`).
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
    report.affine += [
        (name, why)
        for name, why in fold_report.affine
        if why == folding.WRAPPED_BATCH_NORM
    ]
    return model, report


# ----------------------------------------------------------------------
# The check against the original model (shared by the exports)
# ----------------------------------------------------------------------
def check_tolerance(atol, rtol, on_mismatch):
    """Validated `(atol, rtol, on_mismatch)` (the policy of `_validation`).

    `None` for `atol` or `rtol` stays `None`: the model's compute dtype
    sets it (`tolerances`).
    """
    return (
        None
        if atol is None
        else _validation.check_non_negative_float("atol", atol),
        None
        if rtol is None
        else _validation.check_non_negative_float("rtol", rtol),
        _validation.check_one_of("on_mismatch", on_mismatch, _ON_MISMATCH),
    )


def compute_dtype(model):
    """The lowest-precision compute dtype of the model's layers.

    `"bfloat16"` or `"float16"` where a layer computes in it (a mixed
    precision policy, globally or per layer; bfloat16 is the coarser),
    else `"float32"` (float32 and float64 models alike).
    """
    found = "float32"
    for layer in _compat.flatten_layers(model):
        dtype = getattr(layer, "compute_dtype", None)
        if dtype in _RESOLUTION and _RESOLUTION[dtype] > _RESOLUTION.get(
            found, 0.0
        ):
            found = dtype
    return found


def resolution(dtype):
    """`eps` of a reduced-precision dtype (float16, bfloat16), else `None`."""
    return _RESOLUTION.get(dtype)


def tolerances(model, atol=None, rtol=None):
    """`(atol, rtol)` of the check for `model`: given ones, or by its dtype.

    A `None` follows the model's compute dtype (`compute_dtype`): `ATOL`
    and `RTOL` for float32, `REDUCED_PRECISION_ULPS * eps` for float16
    (`eps = 2**-10`) and bfloat16 (`eps = 2**-7`).
    """
    eps = resolution(compute_dtype(model))
    if atol is None:
        atol = ATOL if eps is None else REDUCED_PRECISION_ULPS * eps
    if rtol is None:
        rtol = RTOL if eps is None else REDUCED_PRECISION_ULPS * eps
    return atol, rtol


def float32_copy(model):
    """A copy of `model` computing in float32, with its weights cast.

    Every layer whose dtype policy computes in float16 or bfloat16 (a
    `mixed_float16` / `mixed_bfloat16` policy, or a `float16` /
    `bfloat16` one) gets the `"float32"` policy; the input layers keep
    their dtype (a layer casts its floating inputs to its compute dtype).
    The model is rebuilt from its config (Sequential, functional, or a
    subclassed model with `get_config`), and its weights are cast to the
    new variables' dtype. For the runtimes that cannot run float16 or
    bfloat16 (see `keras_norms.deploy.export`): its outputs differ from
    the model's by the model's own rounding, which the check's tolerance
    for the model's compute dtype (`tolerances`) accepts.

    Raises:
        ValueError: If the model cannot be rebuilt from its config.
    """
    config = _float32_config(model.get_config())
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")  # the new model's own policy
    try:
        new = type(model).from_config(config)
    except Exception as error:
        raise ValueError(
            f"Cannot make a float32 copy of model '{model.name}' "
            f"({type(model).__name__}) from its config: "
            f"{type(error).__name__}: {error}. Rebuild it as a functional "
            "or Sequential model, or export it in its own dtype "
            f"(dtype=None). Received: model={model.name}"
        ) from error
    finally:
        keras.config.set_dtype_policy(previous)
    new.set_weights([_cast_float(w) for w in model.get_weights()])
    return new


def _cast_float(array):
    """A float16/bfloat16 array as float32; any other as it is."""
    # bfloat16 (ml_dtypes) is not a NumPy floating type: test by name.
    if array.dtype.name in _RESOLUTION:
        return np.asarray(array, "float32")
    return array


def _float32_config(config, input_layer=False):
    """`config` with each float16/bfloat16 `"dtype"` made `"float32"`."""
    if isinstance(config, list):
        return [_float32_config(c, input_layer) for c in config]
    if not isinstance(config, dict):
        return config
    new = {}
    for key, value in config.items():
        if key == "dtype" and not input_layer and _is_reduced(value):
            new[key] = "float32"
        else:
            new[key] = _float32_config(
                value,
                input_layer or config.get("class_name") == "InputLayer",
            )
    return new


def _is_reduced(dtype):
    """Whether a serialized dtype (policy) computes in float16/bfloat16."""
    if isinstance(dtype, dict) and isinstance(dtype.get("config"), dict):
        dtype = dtype["config"].get("name")
    if not isinstance(dtype, str):
        return False
    return dtype.removeprefix("mixed_") in _RESOLUTION


def sample_batch(model, sample=None):
    """`sample`, or a deterministic batch of 4 for the model's inputs.

    Standard normal, zeros for integer inputs, and for an input that feeds
    an adapted `keras.layers.Normalization` (not `invert`) drawn from its
    statistics (`mean + sqrt(variance) * z`: a constant feature stays
    constant), so the check sees data like the training data. Unknown
    dimensions are 16. The batch has the structure the model takes: an
    array for a single input, else the list, dict or nested structure of
    its inputs (`keras.Model({"a": ..., "b": ...}, ...)` takes a dict).
    """
    if sample is not None:
        return sample
    try:
        signature = _compat.input_signature(model)
    except Exception:
        raise ValueError(
            f"Model '{model.name}' has no known input shape to build a "
            "check sample from: pass `sample=` (an input batch). "
            "Received: sample=None"
        ) from None
    # The positional arguments of a call: a model takes one (a
    # functional model's whole input structure is its one argument).
    structure = signature[0] if len(signature) == 1 else list(signature)
    try:
        statistics = _normalization_statistics(model)
    except (AttributeError, ValueError):  # a subclassed model
        statistics = {}
    rng = np.random.RandomState(0)
    batch = []
    # `keras.tree.flatten` orders the leaves as `model.inputs` (dict keys
    # sorted), which `statistics` is indexed by.
    for i, x in enumerate(keras.tree.flatten(structure)):
        shape = [4] + [d if d is not None else 16 for d in x.shape[1:]]
        dtype = keras.backend.standardize_dtype(x.dtype)
        if "int" in dtype or dtype == "bool":
            batch.append(np.zeros(shape, dtype=dtype))
            continue
        z = rng.randn(*shape)
        if i in statistics:
            mean, variance = statistics[i]
            z = mean + np.sqrt(np.maximum(variance, 0.0)) * z
        batch.append(z.astype(dtype))
    if len(batch) == 1 and not isinstance(structure, dict):
        return batch[0]  # one input (also a list of one)
    return keras.tree.pack_sequence_as(structure, batch)


def _normalization_statistics(model):
    """`{index in model.inputs: (mean, variance)}` broadcastable, float64."""
    found = {}
    ids = {id(x): i for i, x in enumerate(model.inputs)}
    for layer in model.layers:
        if not isinstance(layer, keras.layers.Normalization) or layer.invert:
            continue
        if getattr(layer, "mean", None) is None:
            continue
        try:
            source = layer.input
        except (AttributeError, ValueError):
            continue  # called several times
        if id(source) in ids:
            shape = _compat.normalization_layout(layer)["broadcast_shape"]
            found[ids[id(source)]] = (
                _graph.numpy64(layer.mean).reshape(shape),
                _graph.numpy64(layer.variance).reshape(shape),
            )
    return found


def reference_outputs(model, sample):
    """`(sample, outputs)`: the check batch and the model's outputs on it.

    A default sample the model cannot run (an unknown dimension set to 8
    that is too small, say) gives an error asking for `sample=`.
    """
    if sample is not None:
        return sample, model_outputs(model, sample)
    sample = sample_batch(model)
    try:
        outputs = model_outputs(model, sample)
        if not all(o.size for o in outputs):
            raise ValueError("an output is empty")
        return sample, outputs
    except Exception as e:
        shapes = [np.shape(x) for x in keras.tree.flatten(sample)]
        raise ValueError(
            f"Could not run model '{model.name}' on the default check "
            f"sample of shape(s) {shapes}: {type(e).__name__}: {e}\nIf "
            "that shape is the problem, pass `sample=` (an input batch the "
            "model takes). Received: sample=None"
        ) from e


def model_outputs(model, sample):
    """The flat list of NumPy outputs of `model(sample, training=False)`.

    Run through XLA where the model holds a channels-first layer that this
    backend cannot run op by op (TensorFlow's CPU with oneDNN off), as
    `keras_norms.backend.call_for_inference` does.
    """
    outputs = kn_backend.call_for_inference(model, sample)
    return [
        np.asarray(keras.ops.convert_to_numpy(t))
        for t in keras.tree.flatten(outputs)
    ]


class OutputMismatchError(ValueError):
    """A rewritten or exported model differs from the original model."""


class Check:
    """A comparison of outputs with the reference outputs, and its figures.

    Each output passes when `max|got - expected| <= atol + rtol *
    max|expected|`. `figures` lists `(difference, tolerance)` per output;
    `passed` is whether all pass; `str(check)` states the worst one.
    """

    def __init__(self, what, figures, passed, problem=None):
        self.what = what
        self.figures = figures
        self.passed = passed
        self.problem = problem

    @classmethod
    def run(cls, got, expected, *, atol, rtol, what):
        if len(got) != len(expected):
            return cls(
                what,
                [],
                False,
                f"returns {len(got)} output(s), the model {len(expected)}",
            )
        figures = []
        for g, e in zip(got, expected):
            g = np.asarray(g, dtype=np.float64)
            e = np.asarray(e, dtype=np.float64)
            if g.shape != e.shape:
                return cls(
                    what,
                    figures,
                    False,
                    f"returns an output of shape {g.shape} where the model "
                    f"returns {e.shape}",
                )
            scale = float(np.max(np.abs(e))) if e.size else 0.0
            diff = float(np.max(np.abs(g - e))) if e.size else 0.0
            if not np.all(np.isfinite(g) == np.isfinite(e)):
                diff = float("inf")
            elif not np.all(np.isfinite(e)):
                finite = np.isfinite(e)
                diff = float(np.max(np.abs(g[finite] - e[finite]), initial=0))
                scale = float(np.max(np.abs(e[finite]), initial=0))
            figures.append((diff, atol + rtol * scale))
        passed = all(d <= t for d, t in figures)
        return cls(what, figures, passed)

    @property
    def max_difference(self):
        return max((d for d, _ in self.figures), default=float("nan"))

    def __str__(self):
        if self.problem is not None:
            return f"{self.what} {self.problem}"
        i, (diff, tol) = max(
            enumerate(self.figures), key=lambda f: f[1][0] - f[1][1]
        )
        verdict = "<=" if diff <= tol else ">"
        where = f"output {i}: " if len(self.figures) > 1 else ""
        return (
            f"{self.what} {'matches' if self.passed else 'differs from'} "
            f"the original model on the sample batch: {where}max abs "
            f"difference {diff:.3g} {verdict} tolerance {tol:.3g} "
            f"(atol + rtol * max|output|)"
        )

    def __repr__(self):
        return f"Check({str(self)!r})"

    def enforce(self, on_mismatch, extra=""):
        """Raise (`"raise"`) or warn (`"warn"`) if the check failed."""
        if self.passed:
            return
        message = str(self) + "." + extra
        if on_mismatch == "raise":
            raise OutputMismatchError(message)
        warnings.warn(message, stacklevel=3)


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
