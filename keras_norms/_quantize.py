"""Post-training quantization for `keras_norms.deploy.export` (LiteRT).

`export(..., format="litert", quantize="int8", representative_data=x)`
converts the (folded) model with TensorFlow's LiteRT converter, through
Keras' own LiteRT exporter, which passes converter attributes on:

- `quantize="int8"`: full-integer post-training quantization
  (`optimizations=[tf.lite.Optimize.DEFAULT]`, a `representative_dataset`
  of up to `CALIBRATION_SAMPLES` rows of `representative_data`, and
  `supported_ops=[TFLITE_BUILTINS_INT8]`, so conversion fails rather than
  leave an op in float). Weights and activations are int8 inside; the
  model's inputs and outputs stay float32 (the converter adds a quantize
  op after the input and a dequantize op before the output), so the
  artifact is called exactly like the float one.
- `quantize="float16"`: weights stored as float16 (half the file),
  computed in float32.

A quantized artifact cannot match the model to float rounding, so it is
checked against a looser, stated rule (`_check.Tolerance.quantized`), measured on
conv nets (see `docs/guide/export.md`) and still far below what a wrong
graph or wrong weights cost.
"""

import keras
import numpy as np

from keras_norms import _check
from keras_norms import _validation

MODES = ("int8", "float16")
# At most this many rows of `representative_data` calibrate the int8
# ranges (the converter records each tensor's min and max over them),
# in batches of `_CALIBRATION_BATCH` (or the export's static batch).
CALIBRATION_SAMPLES = 200
_CALIBRATION_BATCH = 20
# With `sample=None`, the check runs on rows of `representative_data`
# held out from calibration (drawn first, seeded): a quarter of them,
# at most `CHECK_SAMPLES`. The calibration never sees them, so the check
# measures the int8 error on rows like those the artifact will be given,
# not on the rows whose ranges it was fitted to (with one calibration row
# the int8 error measured 0.0055 on that row, 0.66 on fresh ones).
CHECK_SAMPLES = 64
_HELD_OUT_SHARE = 4  # one row in this many is held out

_HINT = {
    "int8": (
        "int8 quantization changed the outputs too much (a model whose "
        "normalization layers compute statistics at run time, e.g. several "
        "stacked LayerNormalization / GroupNormalization / "
        "InstanceNormalization, can lose them in int8). Use "
        "quantize='float16', or pass verify=False to keep it anyway."
    ),
    "float16": "Pass verify=False to keep it anyway.",
}


def check_arguments(model, format, quantize, data, kwargs, backend):
    """Clear errors for bad quantization arguments, before any writing.

    Returns `data` as a float array (or `None`).
    """
    if quantize is None:
        if data is not None:
            raise ValueError(
                "Argument `representative_data` is only used with "
                "quantize='int8'. Received: quantize=None"
            )
        return None
    if quantize not in MODES:
        raise ValueError(
            f"Argument `quantize` must be None or one of {list(MODES)}. "
            f"Received: quantize={quantize!r}"
        )
    if format != "litert":
        raise ValueError(
            "Argument `quantize` needs format='litert' (TensorFlow's LiteRT "
            "converter quantizes; for the other formats use their own "
            f"tools). Received: quantize={quantize!r}, format={format!r}"
        )
    clash = sorted({"optimizations", "representative_dataset"} & set(kwargs))
    if clash:
        raise ValueError(
            f"Pass either `quantize` or the converter option(s) {clash}, not "
            f"both. Received: quantize={quantize!r}"
        )
    if quantize == "float16":
        if data is not None:
            raise ValueError(
                "Argument `representative_data` is only used with "
                "quantize='int8' (float16 needs no calibration). "
                "Received: quantize='float16'"
            )
    elif data is None:
        raise ValueError(
            "quantize='int8' needs `representative_data`: an array of input "
            "rows like the training data (a few hundred training rows; "
            "the int8 ranges are calibrated on them). "
            "Received: representative_data=None"
        )
    elif isinstance(model, keras.Model) and model.built:
        data = _check_data(model, data)
    if backend != "tensorflow":
        raise ValueError(
            f"quantize={quantize!r} runs TensorFlow's LiteRT converter, so "
            f"it exports from the TensorFlow backend only, not {backend}. "
            "Save the model as .keras and export it under "
            "KERAS_BACKEND=tensorflow (keras_norms layers are registered). "
            f"Received: quantize={quantize!r}"
        )
    return data


def _check_data(model, data):
    """`data` as a float32 array shaped like the model's one input."""
    from keras_norms import _compat

    specs = keras.tree.flatten(_compat.input_signature(model))
    if len(specs) != 1:
        raise ValueError(
            "quantize='int8' supports models with one input; model "
            f"'{model.name}' has {len(specs)}. Received: "
            f"representative_data of type {type(data).__name__}"
        )
    try:
        with np.errstate(over="ignore"):  # inf: refused below, by row
            array = np.asarray(data, dtype="float32")
    except (TypeError, ValueError):
        raise TypeError(
            "Argument `representative_data` must be an array of input rows. "
            f"Received: representative_data of type {type(data).__name__}"
        ) from None
    expected = tuple(specs[0].shape)
    fits = array.ndim == len(expected) and all(
        d is None or d == n for d, n in zip(expected[1:], array.shape[1:])
    )
    if not fits or len(array) == 0:
        raise ValueError(
            "Argument `representative_data` must be a non-empty batch of "
            f"the model's input, shape {expected} (None: any size). "
            f"Received: representative_data of shape {array.shape}"
        )
    _validation.check_finite_rows(
        "representative_data",
        array,
        why=" in float32 (TensorFlow's LiteRT converter crashes the "
        "process on NaN or inf)",
    )
    return array


def _rows(data, hold_out):
    """The indices of the calibration rows and of the check rows of
    `data` (seeded), the check rows held out if `hold_out` (else none)."""
    order = np.random.RandomState(0).permutation(len(data))
    n_check = min(CHECK_SAMPLES, len(data) // _HELD_OUT_SHARE)
    if not hold_out:
        n_check = 0
    elif n_check == 0:
        raise ValueError(
            "quantize='int8' checks the artifact on rows of "
            "`representative_data` that the calibration never sees (one "
            f"in {_HELD_OUT_SHARE}, at most {CHECK_SAMPLES}), and "
            f"{len(data)} row(s) are too few to hold any out. Pass at "
            f"least {_HELD_OUT_SHARE} rows, or `sample=`: input rows "
            "(not in `representative_data`) to check the artifact on. "
            f"Received: representative_data of {len(data)} row(s) and "
            "sample=None"
        )
    n_calibration = min(CALIBRATION_SAMPLES, len(data) - n_check)
    calibration = order[:n_calibration]
    check = order[n_calibration : n_calibration + n_check]
    return calibration, check


def _whole_batches(x, batch):
    """`x`, rows repeated up to a multiple of `batch`."""
    return _check.with_rows(x, -(-len(x) // batch) * batch)


def check_sample(data, batch_size):
    """The default check batch and what it is: the rows of `data` held
    out from calibration (repeated up to whole batches of `batch_size`).

    Returns:
        `(sample, (rows, description))`: `rows` the number of held-out
        rows, `description` e.g. `"16 rows of representative_data held
        out from calibration (calibrated on 48)"`.

    Raises:
        ValueError: `data` has too few rows to hold any out.
    """
    calibration, check = _rows(data, hold_out=True)
    sample = data[check]
    description = (
        f"{len(check)} row{'s' * (len(check) != 1)} of "
        "representative_data held out from "
        f"calibration (calibrated on {len(calibration)})"
    )
    if batch_size:
        sample = _whole_batches(sample, batch_size)
    return sample, (len(check), description)


def converter_options(quantize, data, batch_size, hold_out):
    """The `tf.lite.TFLiteConverter` attributes for `quantize`.

    Keras' LiteRT exporter sets them on its converter (`model.export(...,
    format="litert", **options)`). With `hold_out`, the rows
    `check_sample` checks on are left out of the calibration.
    """
    import tensorflow as tf

    if quantize == "float16":
        return {
            "optimizations": [tf.lite.Optimize.DEFAULT],
            "target_spec": {"supported_types": [tf.float16]},
        }
    batch = batch_size or _CALIBRATION_BATCH
    rows = _whole_batches(data[_rows(data, hold_out)[0]], batch)

    def representative_dataset():
        for start in range(0, len(rows), batch):
            yield [rows[start : start + batch]]

    return {
        "optimizations": [tf.lite.Optimize.DEFAULT],
        "representative_dataset": representative_dataset,
        "target_spec": {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]},
    }


def hint(quantize):
    return _HINT[quantize]
