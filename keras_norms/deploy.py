"""Export a model in any Keras export format, checked in its own runtime.

`export(model, filepath, format=...)` puts the model in its inference form
(`keras_norms.optimize_for_inference`), writes it through Keras' own
`model.export` (or, for `"tf_saved_model"`, through
`keras_norms.export_saved_model`, the XLA-compiled SavedModel), then loads
the artifact in a fresh Python process that imports the target runtime
alone (no Keras, no keras_norms) and compares its outputs with the Keras
model's on a sample batch.

What each format needs (Keras 3.15's exporters; the runtime is what the
check loads the artifact with):

| format           | backends              | exporter needs                  | runtime                   |
|------------------|-----------------------|---------------------------------|---------------------------|
| `tf_saved_model` | tensorflow, jax, torch| tensorflow                      | `tf.saved_model.load`     |
| `onnx`           | tensorflow            | tf2onnx, onnx                   | onnxruntime               |
| `onnx`           | jax                   | jax2onnx                        | onnxruntime               |
| `onnx`           | torch                 | onnx, onnxscript (`torch.onnx`) | onnxruntime               |
| `litert`         | tensorflow            | tensorflow (`tf.lite`)          | ai_edge_litert            |
| `litert`         | torch                 | litert_torch                    | ai_edge_litert            |
| `openvino`       | tensorflow, torch     | openvino                        | openvino (`Core`, CPU)    |
| `torch`          | torch                 | torch (`torch.export`)          | `torch.export.load`       |

`format="litert"` also takes `quantize="int8"` (full-integer
post-training quantization, calibrated on `representative_data`) or
`"float16"`, from the TensorFlow backend (`keras_norms._quantize`).

Keras itself refuses `litert` on JAX and `torch` off the torch backend,
and OpenVINO cannot convert a JAX model (jax2tf leaves one XlaCallModule
op); `export` says so before writing anything, with what to use instead.
Install the runtimes with `pip install "keras_norms[deploy]" -c
constraints.txt`; `import keras_norms` never imports any of them.
"""

import warnings

import keras
import numpy as np

from keras_norms import _artifact
from keras_norms import _check
from keras_norms import _compat
from keras_norms import _deploy_verify
from keras_norms import _float32
from keras_norms import _formats
from keras_norms import _quantize
from keras_norms import _validation
from keras_norms._deploy_report import DeployReport
from keras_norms._formats import FORMATS

__all__ = [
    "DeployReport",
    "FORMATS",
    "check_filepath",
    "check_format",
    "export",
]


def export(
    model,
    filepath,
    format="tf_saved_model",
    fold=True,
    verify=True,
    sample=None,
    overwrite=False,
    batch_size=None,
    quantize=None,
    representative_data=None,
    dtype=None,
    atol=None,
    rtol=None,
    **kwargs,
):
    """Write `model` for a deployment runtime, and check it runs there.

    With `fold=True` the model is first put in its inference form by
    `keras_norms.optimize_for_inference` (BatchNormalization folded into
    the layer before it, WeightNormalization / WeightStandardization
    unwrapped, a leading `keras.layers.Normalization` folded into the
    first layer), which is what mobile and server runtimes (and int8
    quantization) want. Then:

    - `"tf_saved_model"`: `keras_norms.export_saved_model` (an
      XLA-compiled SavedModel, always checked with TensorFlow);
    - `"onnx"`, `"litert"`, `"openvino"`, `"torch"`: Keras'
      `model.export(..., format=format)`, written into a temporary path
      beside `filepath`.

    With `verify=True` the artifact is loaded in a fresh Python process
    by its runtime alone (onnxruntime's `InferenceSession`; LiteRT's
    `Interpreter`; OpenVINO's `Core` on CPU in float32;
    `torch.export.load`) and run on `sample` (or a seeded random batch of
    4 of the model's input shape) as one batch, and, with
    `batch_size=None`, on batches of 1 and 5 rows built from its rows (an
    artifact that takes one batch size only is refused:
    `report.checked_batch_sizes` says which ran); every output must
    satisfy

        max |artifact - model| <= atol + rtol * max |model|

    with `atol=1e-5`, `rtol=1e-4` for a float32 model (the same rule as
    `optimize_for_inference` and `export_saved_model`)
    or nothing is written. OpenVINO is also run in its CPU plugin's
    default precision (bf16 on processors with bf16 units), reported as
    `report.default_precision_difference`, with a warning where it
    exceeds the tolerance (the export guide, "OpenVINO's precision").
    What the exporter prints is captured (shown with `verbose=True`,
    quoted in the error if it fails).
    Only then is the artifact moved to `filepath`:
    an existing export is replaced only after the new one is written and
    verified, and only with `overwrite=True`. OpenVINO's `.xml` and `.bin`
    are replaced as one unit (the old `.xml` moved aside first, the new
    `.xml` moved in last), so an interruption leaves the old pair, the new
    pair, or no `.xml` (loading fails), never an `.xml` beside the other
    export's `.bin` (the export guide, "Replacing an export"). The
    inputs may be any structure Keras takes (a list, a dict, nested): the
    check matches them to the artifact's inputs by the model's input
    names, or by their keys in the structure.

    A mixed precision model (a `mixed_float16` / `mixed_bfloat16` policy,
    globally or per layer) is checked with `atol = rtol = 16 * eps` of
    its compute dtype (`eps = 2**-10` for float16, `2**-7` for
    bfloat16; measured up to 1.6 eps of the output scale). It is exported
    in its dtypes where the format and its runtime take them, and as a
    float32 copy (policies float32, weights cast; `report.dtype` says
    which) where they do not: bfloat16 to ONNX (ONNX's Conv takes no
    bfloat16) and OpenVINO (its CPU plugin fails or computes it wrong),
    float16 and bfloat16 to LiteRT from TensorFlow (the converter keeps
    them as Flex ops, which the interpreter lacks) and to ONNX from JAX
    (jax2onnx writes an ill-typed graph). `dtype="float32"` asks for the
    float32 copy in every format.

    `format="litert"` with `quantize="int8"` (TensorFlow backend) writes a
    full-integer model: TensorFlow's LiteRT converter quantizes the folded
    weights and every activation to int8 (`Optimize.DEFAULT`,
    `TFLITE_BUILTINS_INT8`), calibrating the activation ranges on up to
    200 rows of `representative_data`; inputs and outputs stay float32,
    so the artifact is called like the float one. `quantize="float16"`
    stores the weights in float16. Without `sample`, the int8 check runs
    on rows of `representative_data` that the calibration never sees: a
    quarter of them (at most 64) is held out first (seeded), the rest (at
    most 200) calibrates; the report's `checked_on` says which and how
    many. A quantized artifact is checked with a looser rule, stated in
    the report: for int8, with `range` the max - min of the model's
    output on the checked rows,

        max |artifact - model| <= 0.25 * range
        mean |artifact - model| <= 0.03 * range

    (measured on small conv nets: max up to 0.097 * range, mean up to
    0.010 * range; a model with its classifier rows permuted, mean 0.19 *
    range), for float16 weights `atol = rtol = 5e-3`.

    Args:
        model: A built `keras.Model` (functional or Sequential for
            `fold=True`).
        filepath: Where to write. A directory for `"tf_saved_model"`, else
            a file ending in `.onnx`, `.tflite`, `.xml` (OpenVINO writes a
            `.bin` beside it) or `.pt2`.
        format: One of `"tf_saved_model"`, `"onnx"`, `"litert"`,
            `"openvino"`, `"torch"`.
        fold: Put the model in its inference form first.
        verify: Check the artifact in its runtime (see above).
        sample: The input batch for the check, in the structure the model
            takes (an array, or a list, dict or nested structure of
            arrays; finite numbers); `None` draws one (for
            `quantize="int8"`, holds rows of `representative_data` out
            of the calibration).
        overwrite: Replace an existing file (or earlier export).
        batch_size: `None` keeps the batch dimension dynamic in every
            format (for `"torch"`, through `torch.export`'s
            `dynamic_shapes`), checked on batches of 1, the sample's rows
            and 5; an integer fixes it (Keras then exports with that
            static batch; on torch, `"onnx"` uses torch.onnx's dynamo
            exporter instead of the TorchScript one, which fails on some
            graphs). The check then runs the sample in chunks of
            `batch_size`.
        quantize: `None` (float32), `"int8"` (full-integer post-training
            quantization, float32 inputs and outputs) or `"float16"`
            (float16 weights); `format="litert"` on the TensorFlow
            backend only (int8: for a model with one input).
        representative_data: For `quantize="int8"` (and only then): an
            array of input rows like the training data (finite numbers),
            e.g. a few hundred training rows (never test rows); up to 200
            of them, drawn at random (seeded), calibrate the int8 ranges,
            and without `sample` a quarter of them (at most 64, at least
            one: pass 4 rows or more) is held out for the check.
        atol: Absolute part of the check's tolerance; `None` follows the
            model's compute dtype (see above). Not with `quantize`.
        rtol: Part of the tolerance relative to `max |model output|`;
            `None` follows the model's compute dtype. Not with
            `quantize`.
        dtype: `None` exports a mixed precision model in its dtypes
            where the format runs them (a float32 copy elsewhere, see
            above); `"float32"` always exports a float32 copy.
        **kwargs: Passed to `model.export` (e.g. `opset_version` for
            ONNX, `input_signature`, `dynamic_shapes` for `"torch"`; for
            LiteRT, `tf.lite.TFLiteConverter` attributes; `verbose=True`
            shows what the exporter printed).

    Returns:
        A `DeployReport`: format, path, runtime, max abs difference,
        tolerance and the rule it came from, the rows checked on and how
        many, the batch sizes checked, static batch size, quantization;
        for OpenVINO, the precision of its default configuration and its
        difference.

    Raises:
        ValueError: An unknown format, a format this backend cannot
            write, an unbuilt model, a subclassed model with `fold=True`,
            a wrong file name ending, an unknown `quantize`, `quantize`
            with a format other than `"litert"` or off the TensorFlow
            backend, `quantize="int8"` without `representative_data` or
            with rows of another shape than the model's input, or fewer
            than 4 rows and no `sample`; a row of `sample` or
            `representative_data` holding NaN or inf (the message names
            it), a model computing NaN or inf on the check's rows; a
            model the converter cannot quantize to int8; or an artifact
            that computes something else than the model; a `dtype`
            other than `None` or `"float32"`; with `batch_size=None`, an
            artifact that takes one batch size only, or a model
            torch.export cannot trace with a dynamic batch.
        FileExistsError: `filepath` exists and `overwrite=False`.
        ModuleNotFoundError: The exporter or runtime is not installed.

    Example:

    ```python
    report = kn.deploy.export(model, "model.onnx", format="onnx")
    print(report)  # Exported onnx to ...; onnxruntime 1.x matches ...

    # On the TensorFlow backend: int8 inside, float32 in and out.
    report = kn.export(model, "model.tflite", format="litert",
                       quantize="int8", representative_data=x_train[:500])
    ```
    """
    backend = keras.backend.backend()
    if sample is not None:
        _validation.check_finite_rows("sample", sample)
    dtype = _check_dtype(dtype)
    atol, rtol, _ = _check.check_tolerance(atol, rtol, "raise")
    if quantize is not None and (atol, rtol) != (None, None):
        raise ValueError(
            "A quantized export is checked with the quantization's own "
            "rule (see the docstring); `atol` and `rtol` apply to float "
            f"exports. Received: quantize={quantize!r}, atol={atol!r}, "
            f"rtol={rtol!r}"
        )
    representative_data = _quantize.check_arguments(
        model, format, quantize, representative_data, kwargs, backend
    )
    # Which rows the check runs on, for the report: `(rows, what)`.
    checked_on = "sample" if sample is not None else "drawn"
    held_out = quantize == "int8" and sample is None
    if held_out:
        sample, checked_on = _quantize.check_sample(
            representative_data, batch_size
        )
    target = _check_arguments(model, filepath, format, fold, overwrite, verify)
    if batch_size is not None:
        batch_size = _check_batch_size(batch_size, format, kwargs)
        kwargs["input_signature"] = _static_signature(model, batch_size)
        if sample is None:
            sample = _sample_of(model, batch_size)
        elif len(keras.tree.flatten(sample)[0]) % batch_size:
            raise ValueError(
                "Argument `sample` must have a multiple of `batch_size` rows "
                "(the check runs it in chunks of batch_size). Received: "
                f"batch_size={batch_size!r} and a sample of "
                f"{len(keras.tree.flatten(sample)[0])} rows"
            )
    if format == "tf_saved_model":
        report = _export_saved_model(
            model, target, fold, sample, dtype, atol, rtol, **kwargs
        )
        report.check_rows, report.checked_on = _checked_rows(
            _check.sample_batch(model, sample), checked_on
        )
        # `saved_model.export` checks the sample as one batch.
        report.checked_batch_sizes = [report.check_rows]
        return report
    _formats.check_defects(model, format, backend)
    # The model's outputs on the check sample, before anything is traced
    # (Keras' ONNX exporter also wants a model that has been called).
    sample, expected = _check.reference_outputs(model, sample)
    checked_on = _checked_rows(sample, checked_on)
    if verify:
        _check_finite_outputs(model, expected, checked_on[1])
        batches = _deploy_verify.check_batches(
            model, sample, expected, batch_size
        )
    if format == "torch" and batch_size is None:
        kwargs.setdefault("dynamic_shapes", _dynamic_batch(model))
    exported = model
    if fold:
        from keras_norms.inference import optimize_for_inference

        exported = optimize_for_inference(
            model, verbose=0, sample=sample, atol=atol, rtol=rtol
        )
    model_dtype = _check.compute_dtype(model)
    if dtype == "float32" or model_dtype in _formats.FLOAT32_ONLY.get(
        (format, backend), ()
    ):
        exported = _float32.float32_copy(exported)
        # Called once, as Keras' ONNX exporter wants.
        _check.model_outputs(exported, sample)
    if quantize is not None:
        tolerance = _check.Tolerance.quantized(quantize)
    else:
        tolerance = _check.Tolerance.for_model(model, atol, rtol)
    report = DeployReport(
        format,
        target.path,
        _formats.RUNTIME[format][1],
        folded=bool(fold),
        rule=str(tolerance),
        dtype=_check.compute_dtype(exported),
        atol=tolerance.atol,
        rtol=tolerance.rtol,
    )
    if verify:
        report.check_rows, report.checked_on = checked_on
    if quantize is not None:
        kwargs.update(
            _quantize.converter_options(
                quantize, representative_data, batch_size, held_out
            )
        )
        report.quantize = quantize
    kwargs.setdefault("verbose", False)

    def produce(staged):
        # What the converter prints (torch.onnx dumps its whole graph on
        # a failure) is kept out of the terminal: replayed with
        # verbose=True, quoted in the error if it fails.
        with _formats.quiet_converter(verbose=kwargs["verbose"]) as printed:
            try:
                exported.export(staged, format=format, **kwargs)
            except Exception as e:  # any exporter's failure, explained
                error = e
            else:
                error = None
        if error is not None:
            _formats.explain_export_error(
                error, format, backend, batch_size, quantize, printed.tail()
            )
        if verify:
            inputs = _describe_inputs(exported)  # as the exporter saw them
            notes.extend(
                _deploy_verify.verify(
                    staged, format, tolerance, report, inputs, reference
                )
            )

    notes = []  # warnings, given once the artifact is in place
    reference = (model, sample, expected, batches if verify else None)
    _artifact.write(target, produce)
    for note in notes:
        warnings.warn(note, stacklevel=2)
    return report


def _check_batch_size(batch_size, format, kwargs):
    """`batch_size` as an int, or a clear error."""
    if format == "tf_saved_model":
        raise ValueError(
            "Argument `batch_size` is not supported for "
            "format='tf_saved_model' (its batch stays dynamic). "
            f"Received: batch_size={batch_size!r}"
        )
    if "input_signature" in kwargs:
        raise ValueError(
            "Pass either `batch_size` or `input_signature`, not both. "
            f"Received: batch_size={batch_size!r}"
        )
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, (int, np.integer))
        or batch_size < 1
    ):
        raise ValueError(
            "Argument `batch_size` must be None or an integer >= 1. "
            f"Received: batch_size={batch_size!r}"
        )
    return int(batch_size)


def _dynamic_batch(model):
    """torch.export's `dynamic_shapes` for Keras' torch exporter: one
    `torch.export.Dim("batch")` on dimension 0 of every input (Keras
    traces with a batch of 2 then; without it, with a batch of 1, which
    the program is fixed to)."""
    import torch

    batch = torch.export.Dim("batch")
    signature = _compat.input_signature(model)
    # Keras' exporter calls `torch.export.export(model, args)`, whose
    # `forward(*args)` takes the arguments as one tuple.
    return [
        tuple(
            keras.tree.map_structure(lambda spec: {0: batch}, argument)
            for argument in signature
        )
    ]


def _checked_rows(sample, checked_on):
    """`(rows, what)`: how many rows the check runs on, and which.

    `checked_on`: `"sample"` (the user's), `"drawn"` (a seeded random
    batch) or already `(rows, what)` (held-out rows, from `_quantize`).
    """
    if isinstance(checked_on, tuple):
        return checked_on
    rows = len(keras.tree.flatten(sample)[0])
    if checked_on == "sample":
        return rows, f"the {rows} row{'s' * (rows != 1)} of `sample`"
    return rows, f"{rows} row{'s' * (rows != 1)} drawn at random (seeded)"


def _check_finite_outputs(model, expected, checked_on):
    """A ValueError naming the row if the model's own output on the check
    rows holds NaN or inf (the check would compare nothing)."""
    for i, output in enumerate(expected):
        rows = _validation.non_finite_rows(output)
        if rows:
            raise ValueError(
                f"Model '{model.name}' computes NaN or inf on the check's "
                f"row {rows[0]} ({checked_on}; output {i}, {len(rows)} "
                "row(s) in all), so an export cannot be checked against "
                "it. Pass `sample=`: input rows the model computes finite "
                "outputs for, or verify=False. Received: a model output "
                f"holding non-finite values in row {rows[0]}"
            )


def _check_dtype(dtype):
    if dtype is None or dtype == "float32":
        return dtype
    raise ValueError(
        "Argument `dtype` must be None (export the model in its own "
        'dtype where the format runs it) or "float32" (export a float32 '
        f"copy of a mixed precision model). Received: dtype={dtype!r}"
    )


def _static_signature(model, batch_size):
    """The model's input specs with the batch dimension fixed."""
    from keras_norms import _compat

    return keras.tree.map_structure(
        lambda spec: keras.InputSpec(
            shape=(batch_size,) + tuple(spec.shape[1:]),
            dtype=spec.dtype,
            name=getattr(spec, "name", None),
        ),
        _compat.input_signature(model),
    )


def _sample_of(model, batch_size):
    """The default check sample, its rows repeated to `batch_size`."""
    return _check.with_rows(_check.sample_batch(model), batch_size)


def check_format(format, verify=True):
    """Raise if this backend cannot write (and check) `format` here.

    A `ValueError` for an unknown format or one Keras cannot write from
    the current backend (saying what to use instead), a
    `ModuleNotFoundError` naming the install for a missing exporter or
    runtime (the runtime only with `verify=True`). Nothing is written;
    `FoldAndExport(format=...)` calls it before training starts.
    """
    backend = keras.backend.backend()
    _formats.check_format_value(format, backend)
    if format != "tf_saved_model":
        _formats.require(format, backend, verify)


def check_filepath(filepath, format, overwrite):
    """The absolute path to write `format` to, or a clear error.

    A `TypeError` for a non-path, a `ValueError` for a file name without
    the format's ending, a `FileExistsError` for a directory where a file
    goes or an existing file without `overwrite=True` (or, for a
    SavedModel directory, one holding anything but an earlier export).
    """
    return _artifact.target(
        filepath, _formats.SUFFIX[format], overwrite, format
    ).path


def _check_arguments(model, filepath, format, fold, overwrite, verify):
    """The export's `_artifact.Target`, or a clear error for a bad argument."""
    backend = keras.backend.backend()
    _formats.check_format_value(format, backend)
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"Argument `model` must be a keras.Model. Received: model={model!r}"
        )
    if not model.built:
        raise ValueError(
            f"Model '{model.name}' is not built: call it on a batch, or "
            "create it with a keras.Input, before exporting it. "
            f"Received: model={model.name} (built=False)"
        )
    if fold:
        from keras_norms import _graph

        if not _graph.is_graph_model(model):
            raise ValueError(
                f"Cannot fold the subclassed model '{model.name}' "
                f"({type(model).__name__}): its layer graph cannot be read. "
                "Pass fold=False to export it as it is, or rebuild it as a "
                "functional or Sequential model. Received: fold=True"
            )
    target = _artifact.target(
        filepath, _formats.SUFFIX[format], overwrite, format
    )
    if format != "tf_saved_model":
        _formats.require(format, backend, verify)
    return target


def _export_saved_model(model, target, fold, sample, dtype, atol, rtol, **kw):
    """`saved_model.export` (its own check, the same rule), as a report."""
    from keras_norms import saved_model

    result = saved_model.export(
        model,
        target.filepath,
        fold=fold,
        overwrite=target.overwrite,
        sample=sample,
        atol=atol,
        rtol=rtol,
        verbose=0,
        dtype=dtype,
        **kw,
    )
    check = result.check
    return DeployReport(
        "tf_saved_model",
        target.path,
        "TensorFlow (tf.saved_model.load)",
        max_abs_difference=check.max_difference,
        tolerance=check.bound,
        folded=bool(fold),
        rule=str(check.tolerance),
        dtype=result.dtype,
        atol=check.tolerance.atol,
        rtol=check.tolerance.rtol,
    )


def _describe_inputs(model):
    """The model's input names, paths and argument structure, as the
    runtime programs match the artifact's inputs with them."""
    from keras_norms._runtimes import _protocol

    return _protocol.describe_inputs(_compat.input_signature(model))
