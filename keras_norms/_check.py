"""The one check: a candidate's outputs against the original model's.

Every model tool checks what it produced against the model it started
from: `optimize_for_inference` and `fold`-ing exports check the rewritten
model, every export checks its artifact run in its runtime, quantized
exports check with a looser rule. They all use this module: the check
sample and the reference outputs (`sample_batch`, `reference_outputs`),
one tolerance rule (`Tolerance`: `max |got - expected| <= atol + rtol *
max |expected|` per output, with defaults that follow the model's compute
dtype, and the quantized rules), one comparison and its report (`Check`),
and one place that enforces it (`Check.enforce`, raising
`OutputMismatchError`).
"""

import warnings

import keras
import numpy as np

from keras_norms import _compat
from keras_norms import _graph
from keras_norms import _validation
from keras_norms import backend as kn_backend

# float32 models: `max|got - expected| <= ATOL + RTOL * max|expected|`.
# RTOL accepts float32 reassociation (about 2e-5 of the output scale on
# deep models with outputs of order 1e3; runtimes that reorder sums and
# fuse ops measured below 1e-6 on the export matrix) and still catches a
# wrong fold (a lost feature or a misplaced bias is off by a sizeable
# part of the scale).
ATOL = 1e-5
RTOL = 1e-4

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
RESOLUTION = {"float16": 2.0**-10, "bfloat16": 2.0**-7}

# Quantized artifacts, measured (docs/guide/export.md). int8, as fractions
# of the model's output range (max - min): the max |int8 - model| reached
# 0.096 on one of 450 test images (the demo's digits CNN after one epoch)
# and 0.097 for a Conv2D + WeightStandardization net (the export matrix's
# models); the mean, 0.0017 and 0.010 (GroupNormalization) at worst,
# against 0.19 for a model with its classifier rows permuted. The max
# bound holds every output; the mean one is the sharp test. float16
# weights: max 6.4e-4 * max|output| measured; checked with atol = rtol =
# 5e-3.
INT8_MAX = 0.25
INT8_MEAN = 0.03
FLOAT16_WEIGHTS = 5e-3

ON_MISMATCH = ("raise", "warn")


class OutputMismatchError(ValueError):
    """A rewritten or exported model differs from the original model."""


def check_tolerance(atol, rtol, on_mismatch):
    """Validated `(atol, rtol, on_mismatch)` (the policy of `_validation`).

    `None` for `atol` or `rtol` stays `None`: the model's compute dtype
    sets it (`Tolerance.for_model`).
    """
    return (
        None
        if atol is None
        else _validation.check_non_negative_float("atol", atol),
        None
        if rtol is None
        else _validation.check_non_negative_float("rtol", rtol),
        _validation.check_one_of("on_mismatch", on_mismatch, ON_MISMATCH),
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
        if dtype in RESOLUTION and RESOLUTION[dtype] > RESOLUTION.get(
            found, 0.0
        ):
            found = dtype
    return found


def resolution(dtype):
    """`eps` of a reduced-precision dtype (float16, bfloat16), else `None`."""
    return RESOLUTION.get(dtype)


class Tolerance:
    """How close a candidate's outputs must be to the model's, per output.

    The rule: `max |got - expected| <= atol + rtol * max |expected|`.
    `Tolerance.for_model` sets `atol` and `rtol` from the model's compute
    dtype where they are not given; `Tolerance.quantized` gives the rules
    of quantized artifacts (int8: `max <= 0.25 * range` and `mean <= 0.03
    * range` of the output range `max - min`; float16 weights: atol = rtol
    = 5e-3).

    Attributes:
        atol, rtol: The float rule's terms (`None` for int8).
        dtype: The compute dtype they follow (`"float32"`, `"float16"`,
            `"bfloat16"`), or the quantization (`"int8"`, `"float16"`).
    """

    def __init__(self, atol, rtol, dtype="float32", int8=False):
        self.atol = atol
        self.rtol = rtol
        self.dtype = dtype
        self.int8 = int8

    @classmethod
    def for_model(cls, model, atol=None, rtol=None):
        """The float rule for `model`: given terms, else by its dtype.

        A `None` follows the model's compute dtype (`compute_dtype`):
        `ATOL` and `RTOL` for float32, `REDUCED_PRECISION_ULPS * eps` for
        float16 (`eps = 2**-10`) and bfloat16 (`eps = 2**-7`).
        """
        dtype = compute_dtype(model)
        eps = resolution(dtype)
        default = None if eps is None else REDUCED_PRECISION_ULPS * eps
        if atol is None:
            atol = ATOL if eps is None else default
        if rtol is None:
            rtol = RTOL if eps is None else default
        return cls(atol, rtol, dtype)

    @classmethod
    def quantized(cls, quantize):
        """The rule of a quantized artifact (`"int8"` or `"float16"`)."""
        if quantize == "int8":
            return cls(None, None, "int8", int8=True)
        return cls(FLOAT16_WEIGHTS, FLOAT16_WEIGHTS, "float16 weights")

    def bounds(self, expected):
        """`(max bound, mean bound or None)` for one expected output."""
        if self.int8:
            spread = _spread(expected)
            return INT8_MAX * spread, INT8_MEAN * spread
        return self.atol + self.rtol * _scale(expected), None

    def __str__(self):
        if self.int8:
            return (
                f"int8: max <= {INT8_MAX:g} and mean <= {INT8_MEAN:g} of "
                "max - min output"
            )
        eps = resolution(self.dtype)
        terms = f"{self.atol:g} + {self.rtol:g} * max|output|"
        if eps is not None:
            return f"{terms} (16 eps of the model's {self.dtype})"
        if self.dtype == "float16 weights":
            return f"float16 weights: {terms}"
        return terms

    def __repr__(self):
        return f"Tolerance({str(self)!r})"


def _finite(expected):
    return expected[np.isfinite(expected)]


def _scale(expected):
    """`max |expected|` over its finite values (0 if none)."""
    return float(np.max(np.abs(_finite(expected)), initial=0.0))


def _spread(expected):
    """`max - min` of an output (`max(1, max|output|)` if constant)."""
    finite = _finite(expected)
    spread = float(np.ptp(finite)) if finite.size else 0.0
    return spread or max(1.0, _scale(expected))


class Check:
    """A comparison of outputs with the reference outputs, and its figures.

    `figures` lists `(difference, bound)` per output (`max |got -
    expected|`, where `got` is not finite exactly where `expected` is
    not); for int8, `mean_figures` lists `(mean |got - expected|,
    bound)`. `passed` is whether all pass; `str(check)` states the worst
    output against its bound, and the rule.
    """

    def __init__(
        self,
        what,
        figures,
        passed,
        problem=None,
        tolerance=None,
        mean_figures=(),
        checked_on="the sample batch",
    ):
        self.what = what
        self.figures = figures
        self.passed = passed
        self.problem = problem
        self.tolerance = tolerance
        self.mean_figures = list(mean_figures)
        self.checked_on = checked_on

    @classmethod
    def run(cls, got, expected, tolerance, what, checked_on=None):
        """Compare the flat outputs `got` with `expected` under `tolerance`."""
        checked_on = checked_on or "the sample batch"
        if len(got) != len(expected):
            return cls(
                what,
                [],
                False,
                f"returns {len(got)} output(s), the model {len(expected)}",
                tolerance,
                checked_on=checked_on,
            )
        figures, means = [], []
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
                    tolerance,
                    checked_on=checked_on,
                )
            bound, mean_bound = tolerance.bounds(e)
            finite = np.isfinite(e)
            if not np.array_equal(np.isfinite(g), finite):
                diff = mean = float("inf")
            else:
                error = np.abs(g[finite] - e[finite])
                diff = float(np.max(error, initial=0.0))
                mean = float(np.mean(error)) if error.size else 0.0
            figures.append((diff, bound))
            if mean_bound is not None:
                means.append((mean, mean_bound))
        passed = all(d <= b for d, b in figures + means)
        return cls(what, figures, passed, None, tolerance, means, checked_on)

    @staticmethod
    def _worst(figures):
        return max(figures, key=lambda f: f[0] - f[1])

    @property
    def max_difference(self):
        """The difference of the output worst against its bound."""
        if not self.figures:
            return float("nan")
        return self._worst(self.figures)[0]

    @property
    def bound(self):
        """The bound of the output worst against it."""
        if not self.figures:
            return float("nan")
        return self._worst(self.figures)[1]

    @property
    def mean_difference(self):
        return self._worst(self.mean_figures)[0] if self.mean_figures else None

    @property
    def mean_bound(self):
        return self._worst(self.mean_figures)[1] if self.mean_figures else None

    def __str__(self):
        if self.problem is not None:
            return f"{self.what} {self.problem}"
        i, (diff, bound) = max(
            enumerate(self.figures), key=lambda f: f[1][0] - f[1][1]
        )
        verdict = "<=" if diff <= bound else ">"
        where = f"output {i}: " if len(self.figures) > 1 else ""
        mean = ""
        if self.mean_figures:
            m, m_bound = self._worst(self.mean_figures)
            mean = (
                f", mean abs difference {m:.3g} "
                f"{'<=' if m <= m_bound else '>'} {m_bound:.3g}"
            )
        return (
            f"{self.what} {'matches' if self.passed else 'differs from'} "
            f"the original model on {self.checked_on}: {where}max abs "
            f"difference {diff:.3g} {verdict} tolerance {bound:.3g}{mean} "
            f"({self.tolerance})"
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


def reference_changed(model, sample, expected):
    """Whether the model's own outputs on `sample` are no longer `expected`.

    A failed check is only the candidate's fault if the reference still
    holds: a model whose weights change while it is exported (training in
    another thread, a callback assigning weights) fails the check for
    that reason, and the error must say so.
    """
    now = model_outputs(model, sample)
    return len(now) != len(expected) or not all(
        np.array_equal(a, b, equal_nan=True) for a, b in zip(now, expected)
    )


def enforce_against(check, model, sample, expected, on_mismatch, extra=""):
    """`check.enforce`, saying so when the model itself changed meanwhile."""
    if not check.passed and reference_changed(model, sample, expected):
        raise OutputMismatchError(
            f"Model '{model.name}' changed while it was checked: its own "
            "outputs on the check batch are no longer those it gave at the "
            "start, so its weights changed during the export (is it "
            "training in another thread, or does a callback assign its "
            "weights?). Export when it is not being trained. "
            f"Received: model={model.name}"
        )
    check.enforce(on_mismatch, extra)


# ----------------------------------------------------------------------
# The check sample and the reference outputs
# ----------------------------------------------------------------------
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
    except (AttributeError, ValueError) as error:
        raise ValueError(
            f"Model '{model.name}' has no known input shape to build a "
            "check sample from: pass `sample=` (an input batch). "
            "Received: sample=None"
        ) from error
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


def with_rows(sample, rows):
    """`sample` (an array or any input structure) with its rows repeated,
    in order, to `rows` rows (`np.resize` along the batch axis)."""
    return keras.tree.map_structure(
        lambda x: np.resize(np.asarray(x), (rows,) + np.shape(x)[1:]), sample
    )


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

    A default sample the model cannot run (an unknown dimension set to 16
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
