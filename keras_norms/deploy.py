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

import contextlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile

import keras
import numpy as np

from keras_norms import _quantize
from keras_norms import _validation

__all__ = [
    "DeployReport",
    "FORMATS",
    "check_filepath",
    "check_format",
    "export",
]

FORMATS = ("tf_saved_model", "onnx", "litert", "openvino", "torch")
# The file name ending Keras' exporter requires per format (None: a
# directory).
_SUFFIX = {
    "tf_saved_model": None,
    "onnx": ".onnx",
    "litert": ".tflite",
    "openvino": ".xml",
    "torch": ".pt2",
}
# The verification tolerance: max|artifact - model| <= RTOL * max(1,
# max|model|), output by output. Float32 runtimes reorder sums and fuse
# ops, which costs a few ulps of the output scale; a wrong graph costs
# far more.
RTOL = 1e-4
_INSTALL_HINT = 'pip install "keras_norms[deploy]" -c constraints.txt'

# Modules the exporter (in this process) and the runtime (in the check's
# process) import, per (format, backend); the runtime's first.
_RUNTIME = {
    "onnx": ("onnxruntime", "onnxruntime"),
    "litert": ("ai_edge_litert", "LiteRT interpreter (ai_edge_litert)"),
    "openvino": ("openvino", "OpenVINO runtime"),
    "torch": ("torch", "torch.export"),
}
_EXPORTER = {
    ("onnx", "tensorflow"): ("tf2onnx", "onnx"),
    ("onnx", "jax"): ("jax2onnx", "onnx"),
    ("onnx", "torch"): ("onnx", "onnxscript"),
    ("litert", "tensorflow"): ("tensorflow",),
    ("litert", "torch"): ("litert_torch",),
    ("openvino", "tensorflow"): ("openvino",),
    ("openvino", "torch"): ("openvino",),
    ("torch", "torch"): (),
}
# The compute dtypes a (format, backend) cannot export or run, measured
# on Conv-BN nets (tests/test_deploy.py): `export(dtype=None)` writes a
# float32 copy of such a model (`inference.float32_copy`), checked like
# any other against the model.
_FLOAT32_ONLY = {
    # tf2onnx and torch.onnx write bfloat16 Conv inputs, which ONNX's Conv
    # does not take (onnxruntime: "invalid model").
    ("onnx", "tensorflow"): ("bfloat16",),
    ("onnx", "torch"): ("bfloat16",),
    # jax2onnx types a float16/bfloat16 ReduceMean's output float32:
    # onnxruntime refuses the graph.
    ("onnx", "jax"): ("float16", "bfloat16"),
    # TensorFlow's LiteRT converter keeps float16/bfloat16 convolutions as
    # Flex (select TensorFlow) ops, which the LiteRT interpreter lacks.
    ("litert", "tensorflow"): ("float16", "bfloat16"),
    # OpenVINO's CPU plugin cannot compile the bfloat16 Convert from the
    # TensorFlow frontend, and computes a bfloat16 model from torch wrong
    # (max abs difference 1.2 on unit-scale outputs).
    ("openvino", "tensorflow"): ("bfloat16",),
    ("openvino", "torch"): ("bfloat16",),
}
# Formats Keras cannot write from a backend, and what to do instead.
_REFUSED = {
    ("litert", "jax"): (
        "Keras writes LiteRT only from the TensorFlow and torch backends. "
        "Export from the TensorFlow backend (save the model as .keras and "
        "load it there; keras_norms layers are registered), or use "
        "format='onnx' or 'tf_saved_model' from JAX."
    ),
    ("openvino", "jax"): (
        "Keras converts a JAX model for OpenVINO through jax2tf, whose "
        "graph is one XlaCallModule op that OpenVINO has no conversion rule "
        "for. Use format='onnx' (OpenVINO reads .onnx files directly: "
        "openvino.Core().read_model('model.onnx')), or export from the "
        "TensorFlow or torch backend."
    ),
    ("torch", "tensorflow"): (
        "Keras writes a torch ExportedProgram (.pt2) only from the torch "
        "backend. Export from the torch backend (KERAS_BACKEND=torch, load "
        "the .keras file there), or use format='onnx'."
    ),
    ("torch", "jax"): (
        "Keras writes a torch ExportedProgram (.pt2) only from the torch "
        "backend. Export from the torch backend (KERAS_BACKEND=torch, load "
        "the .keras file there), or use format='onnx'."
    ),
}


def _odd_depth_radius_lrn(layer):
    return (
        type(layer).__name__ == "LocalResponseNormalization"
        and layer.depth_radius % 2 == 1
    )


# Converter defects found by the export matrix (tests/test_deploy.py):
# (format, backend, which layers, why, what to use instead). `export`
# refuses such a model before writing anything; the check would catch the
# wrong artifact anyway, but without saying why.
_DEFECTS = (
    (
        "openvino",
        "tensorflow",
        _odd_depth_radius_lrn,
        "OpenVINO's TensorFlow frontend (2026.4) converts tf.nn.lrn with an "
        "odd depth_radius to an LRN over 2 * (depth_radius - 1) + 1 "
        "channels instead of 2 * depth_radius + 1 (measured: max abs "
        "difference 0.2-0.4 on unit-scale inputs; even radii convert "
        "exactly).",
        "Export format='onnx' and read the .onnx with OpenVINO "
        "(openvino.Core().read_model('model.onnx')), or export from the "
        "torch backend.",
    ),
)


def _check_defects(model, format, backend):
    """A ValueError naming the layer if a known converter defect hits it."""
    from keras_norms import _compat

    for defect_format, defect_backend, hit, why, instead in _DEFECTS:
        if (format, backend) != (defect_format, defect_backend):
            continue
        for layer in _compat.flatten_layers(model):
            if hit(layer):
                raise ValueError(
                    f"Cannot export layer '{layer.name}' "
                    f"({type(layer).__name__}) as format={format!r} from "
                    f"the {backend} backend: {why} {instead} "
                    f"Received: format={format!r}"
                )


class DeployReport:
    """What `export` wrote and how close the artifact is to the model.

    Attributes:
        format: The export format.
        path: The absolute path of the artifact.
        runtime: The runtime the check loaded it with, and its version.
        max_abs_difference: `max |artifact - model|` over the outputs on
            the sample batch (`None` when `verify=False`).
        tolerance: `RTOL * max(1, max |model output|)`, or the quantized
            rule's (`None` when `verify=False`).
        static_batch: The batch size the artifact is fixed to, or `None`
            if it takes any batch (the check then ran one batch;
            otherwise one call per sample).
        folded: Whether the model was put in its inference form first.
        rule: How `tolerance` was computed from the model's outputs.
        quantize: `None`, or the quantization (`"int8"`, `"float16"`).
        mean_abs_difference: For `quantize="int8"`, `mean |artifact -
            model|` (the output where it is largest against its
            tolerance), else `None`.
        mean_tolerance: Its tolerance (see `rule`), else `None`.
        checked_on: Which rows the check ran on: `"the 16 rows of
            `sample`"`, `"4 rows drawn at random (seeded)"`, or for
            `quantize="int8"` without `sample`, `"64 rows of
            representative_data held out from calibration (calibrated on
            200)"` (`None` when `verify=False`).
        check_rows: How many rows (distinct ones: a static batch size
            repeats rows up to whole batches), else `None`.
        dtype: The compute dtype of the exported model: the model's
            (`"float32"`, or `"float16"` / `"bfloat16"` for a mixed
            precision model), or `"float32"` for a float32 copy.
        rtol: The relative tolerance of the float rule: `RTOL` for a
            float32 model, `16 * eps` for a float16 (`eps = 2**-10`) or
            bfloat16 (`eps = 2**-7`) one.
    """

    def __init__(
        self,
        format,
        path,
        runtime,
        max_abs_difference=None,
        tolerance=None,
        static_batch=None,
        folded=True,
        rule=f"{RTOL:g} * max(1, max|output|)",
        quantize=None,
        mean_abs_difference=None,
        mean_tolerance=None,
        checked_on=None,
        check_rows=None,
        dtype="float32",
        rtol=None,
    ):
        self.format = format
        self.path = path
        self.runtime = runtime
        self.max_abs_difference = max_abs_difference
        self.tolerance = tolerance
        self.static_batch = static_batch
        self.folded = folded
        self.rule = rule
        self.quantize = quantize
        self.mean_abs_difference = mean_abs_difference
        self.mean_tolerance = mean_tolerance
        self.checked_on = checked_on
        self.check_rows = check_rows
        self.dtype = dtype
        self.rtol = RTOL if rtol is None else rtol

    @property
    def verified(self):
        return self.max_abs_difference is not None

    def to_dict(self):
        return dict(vars(self))

    def __str__(self):
        what = self.format + (f" ({self.quantize})" if self.quantize else "")
        if not self.verified:
            return f"Exported {what} to {self.path} (not verified)."
        mean = ""
        if self.mean_abs_difference is not None:
            mean = (
                f", mean abs difference {self.mean_abs_difference:.3g} <= "
                f"{self.mean_tolerance:.3g}"
            )
        on = f" on {self.checked_on}" if self.checked_on else ""
        return (
            f"Exported {what} to {self.path}; {self.runtime} matches "
            f"the model{on}: max abs difference "
            f"{self.max_abs_difference:.3g} <= tolerance "
            f"{self.tolerance:.3g}{mean} ({self.rule})."
        )

    def __repr__(self):
        return f"DeployReport({self.to_dict()!r})"


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
    4 of the model's input shape); every output must satisfy

        max |artifact - model| <= 1e-4 * max(1, max |model|)

    or nothing is written. Only then is the artifact moved to `filepath`:
    an existing export is replaced only after the new one is written and
    verified, and only with `overwrite=True`. OpenVINO's `.xml` and `.bin`
    are replaced as one unit (the old `.xml` moved aside first, the new
    `.xml` moved in last), so an interruption leaves the old pair, the new
    pair, or no `.xml` (loading fails), never an `.xml` beside the other
    export's `.bin`; see `keras_norms.saved_model.replace_artifact`. The
    inputs may be any structure Keras takes (a list, a dict, nested): the
    check matches them to the artifact's inputs by the model's input
    names, or by their keys in the structure.

    A mixed precision model (a `mixed_float16` / `mixed_bfloat16` policy,
    globally or per layer) is checked with `16 * eps` of its compute
    dtype instead of `1e-4` (`eps = 2**-10` for float16, `2**-7` for
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
    range), for float16 `max |artifact - model| <= 5e-3 * max(1,
    max|model|)`.

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
        batch_size: `None` keeps the batch dimension dynamic; an integer
            fixes it (Keras then exports with that static batch; on torch,
            `"onnx"` uses torch.onnx's dynamo exporter instead of the
            TorchScript one, which fails on some graphs). The check runs
            the sample in chunks of `batch_size`.
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
        dtype: `None` exports a mixed precision model in its dtypes
            where the format runs them (a float32 copy elsewhere, see
            above); `"float32"` always exports a float32 copy.
        **kwargs: Passed to `model.export` (e.g. `opset_version` for
            ONNX, `input_signature`; for LiteRT, `tf.lite.TFLiteConverter`
            attributes).

    Returns:
        A `DeployReport`: format, path, runtime, max abs difference,
        tolerance and the rule it came from, the rows checked on and how
        many, static batch size, quantization.

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
            other than `None` or `"float32"`.
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
    path = _check_arguments(model, filepath, format, fold, overwrite, verify)
    if batch_size is not None:
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
        kwargs["input_signature"] = _static_signature(model, int(batch_size))
        if sample is None:
            sample = _sample_of(model, int(batch_size))
        elif len(keras.tree.flatten(sample)[0]) % batch_size:
            raise ValueError(
                "Argument `sample` must have a multiple of `batch_size` rows "
                "(the check runs it in chunks of batch_size). Received: "
                f"batch_size={batch_size!r} and a sample of "
                f"{len(keras.tree.flatten(sample)[0])} rows"
            )
    if format == "tf_saved_model":
        report = _export_saved_model(
            model, filepath, fold, sample, overwrite, dtype, **kwargs
        )
        from keras_norms import inference

        report.check_rows, report.checked_on = _checked_rows(
            inference.sample_batch(model, sample), checked_on
        )
        return report
    _check_defects(model, format, backend)
    from keras_norms import inference

    # The model's outputs on the check sample, before anything is traced
    # (Keras' ONNX exporter also wants a model that has been called).
    sample, expected = inference.reference_outputs(model, sample)
    checked_on = _checked_rows(sample, checked_on)
    if verify:
        _check_finite_outputs(model, expected, checked_on[1])
    exported = model
    if fold:
        from keras_norms.inference import optimize_for_inference

        exported = optimize_for_inference(model, verbose=0, sample=sample)
    model_dtype = inference.compute_dtype(model)
    if dtype == "float32" or model_dtype in _FLOAT32_ONLY.get(
        (format, backend), ()
    ):
        exported = inference.float32_copy(exported)
        # Called once, as Keras' ONNX exporter wants.
        inference.model_outputs(exported, sample)
    runtime = _RUNTIME[format][1]
    report = DeployReport(
        format,
        path,
        runtime,
        folded=bool(fold),
        dtype=inference.compute_dtype(exported),
        rtol=_rtol(model_dtype),
    )
    report.rule = _rule(model_dtype, report.rtol)
    if verify:
        report.check_rows, report.checked_on = checked_on
    quiet = contextlib.nullcontext()
    if quantize is not None:
        kwargs.update(
            _quantize.converter_options(
                quantize, representative_data, batch_size, held_out
            )
        )
        report.quantize = quantize
        report.rule = _quantize.rule(quantize)
        quiet = _quantize.quiet_converter()

    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(
        prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=parent
    )
    try:
        staged = os.path.join(staging, os.path.basename(path))
        kwargs.setdefault("verbose", False)
        try:
            with quiet:
                exported.export(staged, format=format, **kwargs)
        except Exception as e:
            _explain_export_error(e, format, backend, batch_size, quantize)
            raise
        if verify:
            inputs = _inputs_of(exported)  # as the exporter saw them
            _verify(staged, format, sample, expected, staging, report, inputs)
        _check_target(path, filepath, overwrite)  # again: it may have changed
        from keras_norms import saved_model

        saved_model.replace_artifact(
            [
                (os.path.join(staging, os.path.basename(name)), name)
                for name in _artifact_files(path)
            ]
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report


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


def _rtol(model_dtype):
    """`RTOL`, or `16 * eps` of a float16/bfloat16 model (the check's)."""
    from keras_norms import inference

    eps = inference.resolution(model_dtype)
    if eps is None:
        return RTOL
    return inference.REDUCED_PRECISION_ULPS * eps


def _rule(model_dtype, rtol):
    from keras_norms import inference

    eps = inference.resolution(model_dtype)
    if eps is None:
        return f"{rtol:g} * max(1, max|output|)"
    return (
        f"{inference.REDUCED_PRECISION_ULPS} * eps * max(1, max|output|), "
        f"eps = {eps:g} of the model's {model_dtype}"
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
    from keras_norms import inference

    batch = inference.sample_batch(model)
    return keras.tree.map_structure(
        lambda x: np.resize(x, (batch_size,) + x.shape[1:]), batch
    )


def _explain_export_error(error, format, backend, batch_size, quantize):
    """A clear error for an exporter failure with a known way around it."""
    if quantize == "int8":
        raise ValueError(
            "TensorFlow's LiteRT converter could not quantize the model to "
            "int8 (every op must have an int8 kernel, "
            "TFLITE_BUILTINS_INT8): "
            f"{type(error).__name__}: {str(error).strip()[-300:]}\n"
            "Use quantize='float16', or export in float (quantize=None). "
            "Received: quantize='int8'"
        ) from error
    if format == "onnx" and backend == "torch" and batch_size is None:
        raise ValueError(
            "torch.onnx could not export the model with a dynamic batch "
            "(Keras uses torch.onnx's TorchScript exporter for a dynamic "
            "batch on torch, and it fails on some graphs, e.g. "
            "channels-last group_norm): "
            f"{type(error).__name__}: {str(error).strip()[-300:]}\n"
            "Pass batch_size=N for an artifact with a static batch of N "
            "(torch.onnx's dynamo exporter), or export from the TensorFlow "
            "or JAX backend for a dynamic batch. Received: batch_size=None"
        ) from error


def check_format(format, verify=True):
    """Raise if this backend cannot write (and check) `format` here.

    A `ValueError` for an unknown format or one Keras cannot write from
    the current backend (saying what to use instead), a
    `ModuleNotFoundError` naming the install for a missing exporter or
    runtime (the runtime only with `verify=True`). Nothing is written;
    `FoldAndExport(format=...)` calls it before training starts.
    """
    backend = keras.backend.backend()
    _check_format_value(format, backend)
    if format != "tf_saved_model":
        _require(format, backend, verify)


def _check_format_value(format, backend):
    if format not in FORMATS:
        raise ValueError(
            f"Argument `format` must be one of {list(FORMATS)}. "
            f"Received: format={format!r}"
        )
    if (format, backend) in _REFUSED:
        raise ValueError(
            f"Cannot export format={format!r} from the {backend} backend: "
            f"{_REFUSED[(format, backend)]} Received: format={format!r}"
        )


def check_filepath(filepath, format, overwrite):
    """The absolute path to write `format` to, or a clear error.

    A `TypeError` for a non-path, a `ValueError` for a file name without
    the format's ending, a `FileExistsError` for a directory where a file
    goes or an existing file without `overwrite=True`.
    """
    try:
        filepath = os.fspath(filepath)
    except TypeError:
        raise TypeError(
            "Argument `filepath` must be a path (str or os.PathLike). "
            f"Received: filepath={filepath!r}"
        ) from None
    suffix = _SUFFIX[format]
    if suffix is None:
        from keras_norms import saved_model

        return saved_model.check_target(filepath, overwrite)
    if not filepath.endswith(suffix):
        raise ValueError(
            f"Argument `filepath` must end with {suffix!r} for "
            f"format={format!r} (Keras' exporter requires it). "
            f"Received: filepath={filepath!r}"
        )
    path = os.path.abspath(filepath)
    _check_target(path, filepath, overwrite)
    return path


def _check_arguments(model, filepath, format, fold, overwrite, verify):
    """The absolute target path, or a clear error for a bad argument."""
    backend = keras.backend.backend()
    _check_format_value(format, backend)
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
    path = check_filepath(filepath, format, overwrite)
    if format != "tf_saved_model":
        _require(format, backend, verify)
    return path


def _artifact_files(path):
    """The files an export to `path` writes, the one a runtime opens last
    (OpenVINO's `.bin` beside the `.xml` it reads it from)."""
    if path.endswith(".xml"):
        return [path[: -len(".xml")] + ".bin", path]
    return [path]


def _check_target(path, filepath, overwrite):
    for name in _artifact_files(path):
        if not os.path.lexists(name):
            continue
        if os.path.isdir(name) and not os.path.islink(name):
            raise FileExistsError(
                f"The export path {name!r} is a directory; this format "
                "writes a file. Choose another path. "
                f"Received: filepath={filepath!r}"
            )
        if not overwrite:
            raise FileExistsError(
                f"The export path {name!r} already exists. Pass "
                "overwrite=True to replace it (only once the new export is "
                "written and verified), or choose another path. "
                f"Received: filepath={filepath!r}"
            )


def _export_saved_model(
    model, filepath, fold, sample, overwrite, dtype, **kwargs
):
    from keras_norms import saved_model

    result = saved_model.export(
        model,
        filepath,
        fold=fold,
        overwrite=overwrite,
        sample=sample,
        verbose=0,
        dtype=dtype,
        **kwargs,
    )
    check = result.check
    inference = saved_model.inference
    atol, rtol = inference.tolerances(model)
    rule = f"{atol:g} + {rtol:g} * max|output|"
    model_dtype = inference.compute_dtype(model)
    if inference.resolution(model_dtype) is not None:
        rule += (
            f" ({inference.REDUCED_PRECISION_ULPS} * eps of the model's "
            f"{model_dtype})"
        )
    return DeployReport(
        "tf_saved_model",
        os.path.abspath(filepath),
        "TensorFlow (tf.saved_model.load)",
        max_abs_difference=check.max_difference,
        tolerance=max(t for _, t in check.figures),
        folded=bool(fold),
        # export_saved_model's own check, the same scale as ours.
        rule=rule,
        dtype=result.dtype,
        rtol=rtol,
    )


def _require(format, backend, verify):
    """A ModuleNotFoundError naming the install, before anything is written."""
    needed = list(_EXPORTER[(format, backend)])
    if verify:
        needed.append(_RUNTIME[format][0])
    missing = [m for m in needed if importlib.util.find_spec(m) is None]
    if "litert_torch" in missing:
        raise ModuleNotFoundError(
            "Exporting format='litert' from the torch backend needs "
            "litert_torch (pip install litert-torch), not installed here and "
            "not part of keras_norms[deploy]: litert-torch 0.8 requires "
            "torch<2.10. Export LiteRT from the TensorFlow backend (load the "
            ".keras file there; keras_norms layers are registered), or use "
            "format='onnx' or 'torch'.",
            name="litert_torch",
        )
    if missing:
        raise ModuleNotFoundError(
            f"Exporting format={format!r} from the {backend} backend needs "
            f"{', '.join(sorted(set(missing)))}, not installed here. "
            f"Install the deploy runtimes: {_INSTALL_HINT}",
            name=missing[0],
        )


def _verify(staged, format, sample, expected, staging, report, inputs_of):
    """Run `staged` on `sample` in a fresh process with its runtime, compare
    with the model's outputs `expected`; fill `report`."""
    from keras_norms import inference

    # One entry per input, in the order of the model's flattened inputs
    # (never an object array of a structure, which NumPy cannot reload).
    inputs = [np.asarray(x) for x in keras.tree.flatten(sample)]
    io = os.path.join(staging, "check")
    np.savez(io + "_in.npz", **{f"x{i}": x for i, x in enumerate(inputs)})
    with open(io + "_inputs.json", "w") as f:
        json.dump(inputs_of, f)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, format, staged, io],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"The {report.runtime} could not load or run the {format} "
            f"export (nothing was written to {report.path!r}):\n"
            f"{done.stderr.strip()[-3000:]}"
        )
    with open(io + "_meta.json") as f:
        meta = json.load(f)
    out = np.load(io + "_out.npz")
    got = [out[f"arr_{i}"] for i in range(len(out.files))]
    report.runtime = f"{report.runtime} {meta['version']}"
    report.static_batch = meta["static_batch"]
    if len(got) != len(expected):
        raise inference.OutputMismatchError(
            f"The {format} export returns {len(got)} output(s), the model "
            f"{len(expected)}. Nothing was written to {report.path!r}."
        )
    worst = 0.0
    tolerance = 0.0
    for g, e in zip(got, expected):
        g = np.asarray(g, np.float64)
        e = np.asarray(e, np.float64)
        if g.shape != e.shape:
            raise inference.OutputMismatchError(
                f"The {format} export returns an output of shape {g.shape} "
                f"where the model returns {e.shape}. Nothing was written to "
                f"{report.path!r}."
            )
        tol = _tolerance(e, report.quantize, report.rtol)
        diff = float(np.max(np.abs(g - e), initial=0.0))
        if not np.all(np.isfinite(g)):
            diff = float("inf")
        if diff - tol > worst - tolerance or tolerance == 0.0:
            worst, tolerance = diff, tol
    report.max_abs_difference = worst
    report.tolerance = tolerance
    figures = f"max abs difference {worst:.3g}, tolerance {tolerance:.3g}"
    ok = worst <= tolerance
    if report.quantize == "int8":
        mean, mean_tolerance = _quantize.mean_difference(got, expected)
        report.mean_abs_difference = mean
        report.mean_tolerance = mean_tolerance
        figures += f"; mean {mean:.3g}, tolerance {mean_tolerance:.3g}"
        ok = ok and mean <= mean_tolerance
    if not ok:
        raise inference.OutputMismatchError(
            f"The {format} export, run by {report.runtime}, differs from "
            f"the model on {report.checked_on}: {figures} ({report.rule}). "
            f"Nothing was written to {report.path!r} (an earlier file there "
            "is unchanged). "
            + (
                _quantize.hint(report.quantize)
                if report.quantize
                else "Try another format, or fold=False."
            )
        )


def _inputs_of(model):
    """The model's input names in its order (what exporters name them), the
    paths of its inputs in the structure it takes (a dict's keys: what
    some exporters name them instead), and the structure of its call
    arguments with each input's index."""
    from keras_norms import _compat

    signature = _compat.input_signature(model)
    leaves = keras.tree.flatten_with_path(signature)
    # Each input's index in the flattened order (a dict's keys sorted),
    # the order the check ships the inputs in.
    structure = keras.tree.pack_sequence_as(signature, list(range(len(leaves))))
    return {
        "names": [getattr(spec, "name", None) or "" for _, spec in leaves],
        # Without the index of the positional argument (a functional
        # model's whole structure is its one argument).
        "paths": ["/".join(str(p) for p in path[1:]) for path, _ in leaves],
        "structure": structure,  # JSON writes tuples as lists
    }


def _tolerance(expected, quantize, rtol):
    """The check's tolerance for one output (see `RTOL`, `_quantize`)."""
    if quantize is not None:
        return _quantize.tolerance(expected, quantize)
    return rtol * max(1.0, float(np.max(np.abs(expected), initial=0.0)))


# The check's process: the runtime alone (no Keras, no keras_norms).
# argv: format, artifact path, io prefix (reads <io>_in.npz, writes
# <io>_out.npz and <io>_meta.json). A runtime whose artifact has a fixed
# batch size is run one sample at a time.
_CHILD = r"""
import json, sys
import numpy as np

fmt, path, io = sys.argv[1:4]
data = np.load(io + "_in.npz")
xs = [data[f"x{i}"] for i in range(len(data.files))]  # flattened inputs
with open(io + "_inputs.json") as f:
    inputs_of_model = json.load(f)
names = inputs_of_model["names"]  # the model's input names, in its order
paths = inputs_of_model["paths"]  # their paths in its input structure
structure = inputs_of_model["structure"]  # its arguments: input indices
static = None


def packed(xs, structure=structure):
    # The inputs in the structure of the model's call arguments (a
    # functional model of a list of inputs takes one list).
    if isinstance(structure, list):
        return [packed(xs, s) for s in structure]
    if isinstance(structure, dict):
        return {k: packed(xs, s) for k, s in structure.items()}
    return xs[structure]


def in_artifact_order(xs, artifact_names):
    # The artifact's inputs by name where it kept the model's input names
    # or their paths in its input structure (a dict's keys; the order of
    # a signature need not be the model's), else by position.
    for keys in (names, paths):
        if len(set(keys)) == len(keys) and sorted(artifact_names) == sorted(
            keys
        ):
            by_name = dict(zip(keys, xs))
            return [by_name[n] for n in artifact_names]
    return xs


def output_order(key):
    digits = "".join(c for c in key if c.isdigit())
    return (int(digits) if digits else 0, key)


if fmt == "onnx":
    import onnxruntime as rt
    version = rt.__version__
    session = rt.InferenceSession(path, providers=["CPUExecutionProvider"])
    inputs = [i.name for i in session.get_inputs()]
    first = session.get_inputs()[0].shape[0]
    static = first if isinstance(first, int) else None
    def run(xs):
        return session.run(None, dict(zip(inputs, in_artifact_order(xs, inputs))))
elif fmt == "litert":
    import ai_edge_litert
    from ai_edge_litert.interpreter import Interpreter
    version = getattr(ai_edge_litert, "__version__", "")
    interpreter = Interpreter(model_path=path)
    # The serving signature, whose inputs and outputs are named (the
    # interpreter's tensor lists need not be in the model's order).
    key, signature = next(iter(interpreter.get_signature_list().items()))
    runner = interpreter.get_signature_runner(key)
    inputs = list(signature["inputs"])
    outputs = sorted(signature["outputs"], key=output_order)
    detail = runner.get_input_details()[inputs[0]]
    first = detail.get("shape_signature", detail["shape"])[0]
    static = None if first == -1 else int(first)
    def run(xs):
        result = runner(**dict(zip(inputs, in_artifact_order(xs, inputs))))
        return [result[name] for name in outputs]
elif fmt == "openvino":
    import openvino as ov
    version = ov.__version__
    core = ov.Core()
    ov_model = core.read_model(path)
    first = ov_model.inputs[0].get_partial_shape()[0]
    static = None if first.is_dynamic else first.get_length()
    # Float32 inference: the CPU plugin would otherwise run bf16 where the
    # processor has it.
    compiled = core.compile_model(
        ov_model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    inputs = [i.get_any_name() for i in compiled.inputs]
    def run(xs):
        result = compiled(in_artifact_order(xs, inputs))
        return [np.asarray(result[o]) for o in compiled.outputs]
elif fmt == "torch":
    import torch
    version = torch.__version__
    module = torch.export.load(path).module()
    def run(xs):
        with torch.no_grad():
            out = module(*packed([torch.from_numpy(x) for x in xs]))
        if isinstance(out, dict):
            out = list(out.values())
        if not isinstance(out, (list, tuple)):
            out = [out]
        # NumPy has no bfloat16: such outputs come back as float32.
        return [
            (o.float() if o.dtype == torch.bfloat16 else o).detach().numpy()
            for o in out
        ]
    try:
        outs = run(xs)
    except Exception:
        static = 1
else:
    raise SystemExit(f"unknown format {fmt}")

n = len(xs[0])
if static is None or static == n:
    outs = run(xs)
else:
    rows = [run([x[i:i + static] for x in xs]) for i in range(0, n, static)]
    outs = [np.concatenate(parts) for parts in zip(*rows)]
def saveable(o):
    # A bfloat16 (ml_dtypes) array is saved as raw bytes: store float32.
    o = np.asarray(o)
    return o.astype(np.float32) if o.dtype.name == "bfloat16" else o


np.savez(io + "_out.npz", *[saveable(o) for o in outs])
with open(io + "_meta.json", "w") as f:
    json.dump({"version": str(version), "static_batch": static}, f)
"""
