"""`keras_norms.deploy.export(..., format="litert", quantize=...)`.

Argument errors on every backend (nothing written); on TensorFlow, an
int8 artifact of a small CNN trained on scikit-learn's digits: int8
weights inside, float32 in and out, smaller than the float file, as
accurate within the stated rule, and a wrong artifact refused.
"""

import importlib.util
import os

import keras
import numpy as np
import pytest

import keras_norms as kn
from keras_norms import _check
from keras_norms import _quantize
from keras_norms import deploy
from keras_norms import inference
from tests.helpers import BACKEND


def _cnn():
    """Input(8, 8, 1) -> two Conv-BN-ReLU -> pooled Dense(10) softmax."""
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(8, 3, padding="same", use_bias=False),
            kn.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.Conv2D(16, 3, padding="same", use_bias=False),
            kn.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )


def _export(model, path, **kwargs):
    kwargs.setdefault("format", "litert")
    return deploy.export(model, path, **kwargs)


# ----------------------------------------------------------------------
# Argument errors: every backend, nothing written
# ----------------------------------------------------------------------
X = np.zeros((16, 8, 8, 1), "float32")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"quantize": "int4"}, r"`quantize`.*Received: quantize='int4'"),
        ({"quantize": True}, r"`quantize`.*Received: quantize=True"),
        (
            {"quantize": "int8", "representative_data": X, "format": "onnx"},
            r"format='litert'.*quantize='int8', format='onnx'",
        ),
        (
            {"quantize": "int8", "format": "tf_saved_model"},
            r"format='litert'.*format='tf_saved_model'",
        ),
        ({"quantize": "int8"}, r"`representative_data`.*=None"),
        ({"representative_data": X}, r"only used with.*quantize=None"),
        (
            {"quantize": "float16", "representative_data": X},
            r"only used with.*quantize='float16'",
        ),
        (
            {"quantize": "int8", "representative_data": X[..., 0]},
            r"shape \(None, 8, 8, 1\).*shape \(16, 8, 8\)",
        ),
        (
            {"quantize": "int8", "representative_data": np.zeros((4, 8, 9, 1))},
            r"Received: representative_data of shape \(4, 8, 9, 1\)",
        ),
        (
            {"quantize": "int8", "representative_data": X[:0]},
            r"non-empty.*shape \(0, 8, 8, 1\)",
        ),
        (
            {
                "quantize": "int8",
                "representative_data": X,
                "optimizations": [],
            },
            r"either `quantize` or.*\['optimizations'\]",
        ),
    ],
)
def test_argument_errors(tmp_path, kwargs, match):
    format = kwargs.get("format", "litert")
    target = tmp_path / ("m" if format == "tf_saved_model" else "m.tflite")
    with pytest.raises(ValueError, match=match):
        _export(_cnn(), target, **kwargs)
    assert not os.listdir(tmp_path)


def test_representative_data_not_an_array(tmp_path):
    with pytest.raises(TypeError, match="representative_data of type dict"):
        _export(
            _cnn(),
            tmp_path / "m.tflite",
            quantize="int8",
            representative_data={"x": 1},
        )


def test_multi_input_model_is_refused(tmp_path):
    a, b = keras.Input((4,)), keras.Input((4,))
    model = keras.Model([a, b], keras.layers.Dense(2)(a + b))
    with pytest.raises(ValueError, match="one input.*has 2"):
        _export(
            model,
            tmp_path / "m.tflite",
            quantize="int8",
            representative_data=[np.zeros((2, 4))] * 2,
        )


@pytest.mark.parametrize("bad", [np.inf, np.nan, 1e39])
def test_non_finite_representative_data_is_refused(tmp_path, bad):
    # One inf made TensorFlow's converter crash the process (no traceback);
    # refused first, on every backend, naming the row. 1e39 is finite in
    # float64 and inf in float32, what the converter is given.
    data = np.random.RandomState(0).rand(16, 8, 8, 1)
    data[5, 2, 3, 0] = bad
    data[9, 0, 0, 0] = bad
    what = "NaN" if np.isnan(bad) else "inf"
    with pytest.raises(
        ValueError,
        match=rf"`representative_data` must hold finite numbers in float32 "
        rf".*crashes.*Row 5 of representative_data holds {what} \(2 of its "
        rf"16 rows are not finite: 5, 9\).*Received: "
        rf"representative_data\[5\] holding {what}",
    ):
        _export(
            _cnn(),
            tmp_path / "m.tflite",
            quantize="int8",
            representative_data=data,
        )
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("rows", [4, 7, 64, 200, 263, 1000])
def test_check_rows_are_held_out_of_calibration(rows):
    # Row i of the data holds i: the rows are told apart by value.
    data = np.arange(rows, dtype="float32")[:, None, None, None]
    data = data * np.ones((1, 8, 8, 1), "float32")
    sample, (n, description) = _quantize.check_sample(data, None)
    calibration, _ = _quantize._rows(data, hold_out=True)
    checked = set(sample[:, 0, 0, 0].astype(int))
    assert n == len(checked) == min(64, rows // 4)
    assert checked.isdisjoint(calibration)
    assert len(calibration) == min(200, rows - n)
    assert description.startswith(f"{n} row")
    assert f"held out from calibration (calibrated on {len(calibration)})" in (
        description
    )
    # With a static batch, the held-out rows repeated to whole batches.
    batched, _ = _quantize.check_sample(data, 5)
    assert len(batched) % 5 == 0 and set(batched[:, 0, 0, 0]) == checked
    # With a `sample` of the user's, every row (up to 200) calibrates.
    calibration, check = _quantize._rows(data, hold_out=False)
    assert len(check) == 0 and len(calibration) == min(200, rows)


@pytest.mark.skipif(BACKEND == "tensorflow", reason="off TensorFlow only")
@pytest.mark.parametrize("quantize", ["int8", "float16"])
def test_other_backends_say_export_from_tensorflow(tmp_path, quantize):
    data = X if quantize == "int8" else None
    with pytest.raises(ValueError, match="KERAS_BACKEND=tensorflow"):
        _export(
            _cnn(),
            tmp_path / "m.tflite",
            quantize=quantize,
            representative_data=data,
        )
    assert not os.listdir(tmp_path)


# ----------------------------------------------------------------------
# TensorFlow: the artifacts
# ----------------------------------------------------------------------
tf_only = pytest.mark.skipif(
    BACKEND != "tensorflow"
    or importlib.util.find_spec("ai_edge_litert") is None,
    reason="int8 LiteRT is converted on TensorFlow, run by ai_edge_litert",
)


@pytest.fixture(scope="module")
def digits():
    """A small CNN trained on the digits, and the data split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (data.images / 16.0).astype("float32")[..., None]
    x_train, x_test, y_train, y_test = train_test_split(
        x, data.target, test_size=0.25, random_state=0, stratify=data.target
    )
    keras.utils.set_random_seed(0)
    model = _cnn()
    model.compile(
        keras.optimizers.Adam(1e-2),
        "sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.fit(x_train, y_train, epochs=10, batch_size=32, verbose=0)
    return model, x_train, x_test, y_test


def _interpreter(path):
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_path=str(path))


def _predict(path, x):
    interpreter = _interpreter(path)
    (inp,) = interpreter.get_input_details()
    interpreter.resize_tensor_input(inp["index"], x.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], x)
    interpreter.invoke()
    (out,) = interpreter.get_output_details()
    return interpreter.get_tensor(out["index"])


@tf_only
def test_int8_artifact(tmp_path, digits):
    model, x_train, x_test, y_test = digits
    float_path, int8_path = tmp_path / "f.tflite", tmp_path / "q.tflite"
    _export(model, float_path)
    report = _export(
        model, int8_path, quantize="int8", representative_data=x_train
    )
    assert report.verified and report.quantize == "int8"
    assert report.rule == str(
        _check.Tolerance.quantized("int8")
    ) and "int8" in str(report)
    assert 0 < report.max_abs_difference <= report.tolerance
    assert 0 < report.mean_abs_difference <= report.mean_tolerance
    assert report.mean_tolerance < report.tolerance
    assert sorted(os.listdir(tmp_path)) == ["f.tflite", "q.tflite"]

    interpreter = _interpreter(int8_path)
    # float32 in and out: called like the float artifact.
    assert interpreter.get_input_details()[0]["dtype"] == np.float32
    assert interpreter.get_output_details()[0]["dtype"] == np.float32
    # Inside, the conv kernels (rank 4) and dense kernel are int8, and no
    # float32 weight is left.
    tensors = interpreter.get_tensor_details()
    kernels = [t for t in tensors if len(t["shape"]) == 4 and t["shape"][0]]
    kernels = [t for t in kernels if tuple(t["shape"][1:3]) == (3, 3)]
    assert len(kernels) == 2
    assert all(t["dtype"] == np.int8 for t in kernels)
    assert {t["dtype"] for t in tensors if len(t["shape"]) == 2} <= {
        np.int8,
        np.float32,  # the float32 input/output side only
        np.int32,
    }
    # Each kernel weight: 4 bytes -> 1 (less per-channel scales); the
    # file's fixed overhead (about 4 KB) is most of this small model.
    weights = sum(
        int(np.prod(layer.kernel.shape))
        for layer in model.layers
        if hasattr(layer, "kernel")
    )
    saved = os.path.getsize(float_path) - os.path.getsize(int8_path)
    assert saved > 1.5 * weights

    # On the whole test split: within the rule, and as accurate.
    expected = model.predict(x_test, verbose=0)
    got = _predict(int8_path, x_test)
    difference = np.abs(got - expected).max()
    check = _check.Check.run(
        [got], [expected], _check.Tolerance.quantized("int8"), "int8"
    )
    assert difference <= check.bound
    assert 0 < check.mean_difference <= check.mean_bound
    float_accuracy = np.mean(expected.argmax(-1) == y_test)
    int8_accuracy = np.mean(got.argmax(-1) == y_test)
    assert float_accuracy > 0.8
    assert abs(int8_accuracy - float_accuracy) <= 0.02
    assert np.mean(got.argmax(-1) == expected.argmax(-1)) >= 0.97


@tf_only
def test_int8_static_batch_and_float16(tmp_path, digits):
    model, x_train, *_ = digits
    report = _export(
        model,
        tmp_path / "q.tflite",
        quantize="int8",
        representative_data=x_train[:50],
        batch_size=4,
    )
    assert report.static_batch == 4 and report.verified
    report = _export(model, tmp_path / "h.tflite", quantize="float16")
    assert report.verified and report.rule == str(
        _check.Tolerance.quantized("float16")
    )
    dtypes = {
        t["dtype"] for t in _interpreter(report.path).get_tensor_details()
    }
    assert np.float16 in dtypes


@tf_only
def test_wrong_int8_artifact_is_refused(tmp_path, digits, monkeypatch):
    model, x_train, *_ = digits
    target = tmp_path / "q.tflite"
    target.write_text("earlier export")
    real = inference.optimize_for_inference

    def wrong(model, **kwargs):
        # The folded model with its classifier's rows permuted: a model
        # that loads and computes something else.
        folded = real(model, **kwargs)
        dense = folded.layers[-1]
        kernel, bias = dense.get_weights()
        dense.set_weights([kernel[::-1], bias])
        return folded

    monkeypatch.setattr(inference, "optimize_for_inference", wrong)
    with pytest.raises(
        ValueError, match="differs from the original model.*int8: max <= 0.25"
    ):
        _export(
            model,
            target,
            quantize="int8",
            representative_data=x_train,
            overwrite=True,
        )
    assert target.read_text() == "earlier export"
    assert os.listdir(tmp_path) == ["q.tflite"]


@tf_only
def test_mean_rule_is_enforced(tmp_path, digits, monkeypatch):
    # A mean tolerance nothing passes: the max rule alone does not let
    # the artifact through.
    model, x_train, *_ = digits
    monkeypatch.setattr(_check, "INT8_MEAN", -1.0)
    with pytest.raises(
        ValueError, match=r"differs.*, mean abs difference \S+ > -"
    ):
        _export(
            model,
            tmp_path / "q.tflite",
            quantize="int8",
            representative_data=x_train,
        )
    assert not os.listdir(tmp_path)


@tf_only
def test_int8_is_checked_on_rows_the_calibration_never_saw(
    tmp_path, digits, monkeypatch
):
    model, x_train, x_test, _ = digits
    data = x_train[:64]  # fewer than 200: all used to calibrate before
    calibrated = []
    real = _quantize.converter_options

    def recording(*args):
        options = real(*args)
        calibrated.extend(
            b for (batch,) in options["representative_dataset"]() for b in batch
        )
        return options

    monkeypatch.setattr(_quantize, "converter_options", recording)
    path = tmp_path / "q.tflite"
    report = _export(model, path, quantize="int8", representative_data=data)
    assert report.check_rows == 16
    assert report.checked_on == (
        "16 rows of representative_data held out from calibration "
        "(calibrated on 48)"
    )
    assert "on 16 rows of representative_data held out" in str(report)
    assert "'check_rows': 16" in repr(report)
    # The held-out rows: none was calibrated on.
    held_out, _ = _quantize.check_sample(data, None)
    assert {r.tobytes() for r in calibrated}.isdisjoint(
        r.tobytes() for r in held_out
    )
    assert len({r.tobytes() for r in calibrated}) == 48
    # The reported figure is the int8 artifact's on those rows.
    expected = model.predict(held_out, verbose=0)
    difference = np.abs(_predict(path, held_out) - expected).max()
    np.testing.assert_allclose(report.max_abs_difference, difference, 1e-5)

    # A `sample` of the user's: checked on it, every row calibrates.
    calibrated.clear()
    report = _export(
        model,
        path,
        quantize="int8",
        representative_data=data,
        sample=x_test[:8],
        overwrite=True,
    )
    assert report.check_rows == 8
    assert report.checked_on == "the 8 rows of `sample`"
    assert len({r.tobytes() for r in calibrated}) == 64


@tf_only
def test_int8_with_too_few_rows_needs_a_sample(tmp_path, digits):
    model, x_train, x_test, _ = digits
    with pytest.raises(
        ValueError,
        match=r"3 row\(s\) are too few to hold any out.*`sample=`.*"
        r"Received: representative_data of 3 row\(s\) and sample=None",
    ):
        _export(
            model,
            tmp_path / "q.tflite",
            quantize="int8",
            representative_data=x_train[:3],
        )
    assert not os.listdir(tmp_path)
    # One calibration row, checked on fresh rows: its int8 ranges miss
    # what other rows reach (measured: max 0.0055 on the calibration row,
    # 0.45 of the output range on 16 fresh ones), and the check says so.
    with pytest.raises(inference.OutputMismatchError, match="16 rows of"):
        _export(
            model,
            tmp_path / "q.tflite",
            quantize="int8",
            representative_data=x_train[:1],
            sample=x_test[:16],
        )
    assert not os.listdir(tmp_path)
