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

from keras_norms import _check
from keras_norms import _graph
from keras_norms import _inference_rewrite
from keras_norms import _validation
from keras_norms._check import OutputMismatchError  # noqa: F401 (its home)
from keras_norms._inference_rewrite import InferenceReport

__all__ = ["InferenceReport", "optimize_for_inference"]


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
    atol, rtol, on_mismatch = _check.check_tolerance(atol, rtol, on_mismatch)
    _graph.check_graph_model(model, "optimize for inference")
    # The reference first: weights changing from here on (a training
    # thread) are then told apart from a wrong rewrite.
    sample, expected = _check.reference_outputs(model, sample)
    new, report = _inference_rewrite.rewrite(model)
    report.check = _check.Check.run(
        _check.model_outputs(new, sample),
        expected,
        _check.Tolerance.for_model(model, atol, rtol),
        what=f"The optimized model '{new.name}'",
    )
    if verbose:
        print(report)
    _check.enforce_against(report.check, model, sample, expected, on_mismatch)
    if return_report:
        return new, report
    return new
