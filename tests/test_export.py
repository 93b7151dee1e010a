"""export_saved_model and FoldAndExport: an XLA SavedModel served by plain TF.

The exported SavedModel is checked in a clean child process that imports
only TensorFlow and NumPy (never keras_norms): outputs against
`model(x, training=False)` at two batch sizes, and the proof of XLA
compilation (`_XlaMustCompile` on a function the serving signature calls).
Exports are slow (a TF child process on torch), so there are few of them.
"""

import json
import os
import subprocess
import sys
import textwrap
import types

import keras
import numpy as np
import pytest

from keras_norms import backend as kn_backend
from keras_norms.callbacks import FoldAndExport
from keras_norms.layers.batch_normalization import (
    BatchNormalization as KnBatchNormalization,
)
from keras_norms.saved_model import export_saved_model
from tests.helpers import BACKEND
from tests.helpers import to_numpy

L = keras.layers

# Reads a SavedModel with TensorFlow alone and reports what it found.
_CLEAN_CHILD = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tensorflow as tf

    path, x_path, y_path = sys.argv[1:4]
    loaded = tf.saved_model.load(path)
    signature = loaded.signatures["serving_default"]
    (name,) = signature.structured_input_signature[1]
    outputs = {}
    with np.load(x_path) as data:
        for key in data.files:
            result = signature(**{name: tf.constant(data[key])})
            (out,) = result.values()
            outputs[key] = out.numpy()
    np.savez(y_path, **outputs)

    graph = signature.graph.as_graph_def()
    library = {f.signature.name: f for f in graph.library.function}
    compiled, stack, seen = [], list(graph.node), set()
    while stack:
        node = stack.pop()
        if node.attr["_XlaMustCompile"].b:
            compiled.append(node.name)
        for value in node.attr.values():
            f = value.func.name
            if f in library and f not in seen:
                seen.add(f)
                if library[f].attr["_XlaMustCompile"].b:
                    compiled.append(f)
                stack.extend(library[f].node_def)
    print(json.dumps({
        "xla": compiled,
        "modules": sorted(m for m in sys.modules if m.startswith("keras")),
    }))
    """
)


def _serve_in_clean_child(path, batches, tmp_path):
    x_path, y_path = tmp_path / "x.npz", tmp_path / "y.npz"
    np.savez(x_path, **batches)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("KERAS_BACKEND", None)
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            _CLEAN_CHILD,
            str(path),
            str(x_path),
            str(y_path),
        ],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads(result.stdout.strip().splitlines()[-1])
    with np.load(y_path) as data:
        return {k: data[k] for k in data.files}, info


def _randomize_bns(model, seed=0):
    rng = np.random.RandomState(seed)
    for layer in model.layers:
        if isinstance(layer, (L.BatchNormalization, KnBatchNormalization)):
            c = layer.moving_mean.shape
            layer.moving_mean.assign(rng.randn(*c).astype("float32"))
            layer.moving_variance.assign(
                rng.uniform(0.2, 3, c).astype("float32")
            )
            layer.gamma.assign(rng.randn(*c).astype("float32"))
            layer.beta.assign(rng.randn(*c).astype("float32"))


def _small_cnn():
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(4, 3, padding="same", use_bias=False)(inputs)
    x = L.BatchNormalization()(x)  # folds
    x = L.ReLU()(x)
    x = L.Conv2D(4, 3, activation="relu")(x)
    x = KnBatchNormalization()(x)  # after a ReLU: an Affine
    x = L.GlobalAveragePooling2D()(x)
    x = L.Dense(3)(x)
    outputs = KnBatchNormalization()(x)  # folds into the Dense
    return keras.Model(inputs, outputs)


def test_export_serves_in_clean_tf_process_with_xla(tmp_path):
    """Export from this backend (torch: via a TF child process)."""
    model = _small_cnn()
    _randomize_bns(model)
    rng = np.random.RandomState(1)
    batches = {
        "b5": rng.randn(5, 8, 8, 3).astype("float32"),
        "b2": rng.randn(2, 8, 8, 3).astype("float32"),  # dynamic batch
    }
    before = [to_numpy(w).copy() for w in model.weights]
    path = tmp_path / "served"
    assert export_saved_model(model, path, verbose=0) == str(path)
    for b, a in zip(before, model.weights):
        np.testing.assert_array_equal(to_numpy(a), b)
    outputs, info = _serve_in_clean_child(path, batches, tmp_path)
    for key, x in batches.items():
        np.testing.assert_allclose(
            outputs[key], to_numpy(model(x, training=False)), atol=1e-4
        )
    assert info["xla"], "no _XlaMustCompile function under serving_default"
    assert "keras_norms" not in info["modules"]
    assert (path / "keras_norms_export.json").exists()

    with pytest.raises(FileExistsError, match="served"):
        export_saved_model(model, path, verbose=0)


@pytest.mark.skipif(
    BACKEND == "torch",
    reason="the torch path runs in a TF child process, covered above; one "
    "more costs ~20 s",
)
def test_jit_compile_false_is_not_xla(tmp_path):
    """The XLA proof can fail: without jit_compile nothing must compile."""
    model = keras.Sequential(
        [keras.Input((4,)), L.Dense(3), L.BatchNormalization()]
    )
    path = tmp_path / "plain"
    export_saved_model(model, path, jit_compile=False, verbose=0)
    x = np.random.RandomState(0).randn(3, 4).astype("float32")
    outputs, info = _serve_in_clean_child(path, {"x": x}, tmp_path)
    assert info["xla"] == []
    np.testing.assert_allclose(
        outputs["x"], to_numpy(model(x, training=False)), atol=1e-5
    )


@pytest.mark.skipif(
    BACKEND != "tensorflow",
    reason="the TensorFlow CPU kernels' NCHW limit is probed on TensorFlow",
)
def test_channels_first_export_runs_or_says_why(tmp_path):
    """With XLA any CPU serves NCHW; op by op only where TF has kernels."""
    model = keras.Sequential(
        [
            keras.Input((3, 6, 6)),
            L.Conv2D(4, 3, data_format="channels_first"),
            L.BatchNormalization(axis=1),
        ]
    )
    export_saved_model(model, tmp_path / "xla", verbose=0)
    if kn_backend.channels_first_conv_supported():
        export_saved_model(
            model, tmp_path / "plain", jit_compile=False, verbose=0
        )
    else:
        with pytest.raises(ValueError, match="jit_compile=True.*channels_last"):
            export_saved_model(
                model, tmp_path / "plain", jit_compile=False, verbose=0
            )
        assert not (tmp_path / "plain").exists()


def test_export_refuses_existing_path_and_unbuilt_model(tmp_path):
    model = keras.Sequential([keras.Input((2,)), L.Dense(1)])
    (tmp_path / "taken").mkdir()
    with pytest.raises(FileExistsError, match="taken"):
        export_saved_model(model, tmp_path / "taken")
    unbuilt = keras.Sequential([L.Dense(1)])
    with pytest.raises(ValueError, match="built"):
        export_saved_model(unbuilt, tmp_path / "new")


def test_callback_exports_and_checks_after_fit(tmp_path, capsys):
    model = keras.Sequential(
        [
            keras.Input((6, 6, 2)),
            L.Conv2D(3, 3, use_bias=False),
            L.BatchNormalization(),
            L.ReLU(),
            L.Flatten(),
            L.Dense(2),
        ]
    )
    model.compile(optimizer="sgd", loss="mse")
    rng = np.random.RandomState(0)
    x = rng.randn(16, 6, 6, 2).astype("float32")
    y = rng.randn(16, 2).astype("float32")
    path = tmp_path / "fit_export"
    callback = FoldAndExport(path, sample=x[:4])
    model.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[callback])
    assert callback.exported == [str(path)]
    assert (path / "saved_model.pb").exists()
    # One line per export (on torch, not the child's endpoint listing).
    (line,) = capsys.readouterr().out.strip().splitlines()
    assert line.startswith(f"Exported {path}: ") and "difference" in line
    # The moving statistics were updated by fit, and the export has them.
    outputs, _ = _serve_in_clean_child(path, {"x": x[:3]}, tmp_path)
    np.testing.assert_allclose(
        outputs["x"], to_numpy(model(x[:3], training=False)), atol=1e-4
    )


def _tiny_fit_model():
    model = keras.Sequential(
        [keras.Input((3,)), L.Dense(2), L.BatchNormalization()]
    )
    model.compile(optimizer="sgd", loss="mse")
    return model


def test_callback_monitor_exports_on_improvement(monkeypatch, tmp_path):
    """ModelCheckpoint-like: export when the monitored metric improves."""
    calls = []
    monkeypatch.setattr(
        FoldAndExport,
        "_fold_export_and_check",
        lambda self, epoch, logs: (
            calls.append(epoch),
            self.exported.append(epoch),
        ),
    )
    losses = iter([3.0, 2.0, 2.5, 1.0])

    class FakeLoss(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs["fake_loss"] = next(losses)

    callback = FoldAndExport(tmp_path / "m{epoch}", monitor="fake_loss")
    model = _tiny_fit_model()
    x = np.zeros((4, 3), "float32")
    model.fit(
        x, x[:, :2], epochs=4, verbose=0, callbacks=[FakeLoss(), callback]
    )
    assert calls == [1, 2, 4]  # not after epoch 3 (2.5 > 2.0), none at end
    assert callback.best == 1.0
    assert FoldAndExport(tmp_path, monitor="val_accuracy").mode == "max"
    assert callback._format_path(7, {}) == str(tmp_path / "m7")
    with pytest.raises(ValueError, match="Received: mode="):
        FoldAndExport(tmp_path, mode="best")


def test_callback_recomputes_precise_statistics_before_export(
    monkeypatch, tmp_path
):
    """`precise_statistics=(x, steps)`: PreciseBN on the live model first."""
    from keras_norms import saved_model as export_module

    exported_means = []
    monkeypatch.setattr(
        export_module,
        "export",
        lambda model, *a, **k: (
            exported_means.append(to_numpy(model.layers[-1].moving_mean).copy())
            or types.SimpleNamespace(summary=lambda: "exported")
        ),
    )
    inputs = keras.Input((3,))
    outputs = KnBatchNormalization(momentum=0.99)(L.Dense(2)(inputs))
    model = keras.Model(inputs, outputs)
    model.compile("sgd", "mse")
    x = np.random.RandomState(0).randn(16, 3).astype("float32") + 2.0
    callback = FoldAndExport(
        tmp_path / "m", precise_statistics=(x, 2), verbose=0
    )
    model.fit(
        x,
        np.zeros((16, 2)),
        epochs=1,
        batch_size=8,
        verbose=0,
        callbacks=[callback],
    )
    # Two batches of 8 (steps=2), equal weights: the mean of all 16 outputs.
    dense_out = to_numpy(model.layers[1](x))
    np.testing.assert_allclose(
        exported_means[-1], dense_out.mean(axis=0), rtol=1e-4, atol=1e-5
    )
    with pytest.raises(ValueError, match="precise_statistics"):
        FoldAndExport(tmp_path, precise_statistics=(x, 0))


def test_dict_input_model_exports_and_runs(tmp_path):
    # Two same-shaped inputs (a swap shows), keys sorted otherwise than
    # inserted: run_saved_model takes the dict as the model does.
    from keras_norms.saved_model import run_saved_model

    z = keras.Input((8, 8, 3), name="z")
    a = keras.Input((8, 8, 3), name="a")
    x = L.BatchNormalization()(L.Conv2D(4, 3)(z))
    y = L.Conv2D(4, 3)(L.Rescaling(3.0)(a))
    x = L.GlobalAveragePooling2D()(L.Concatenate()([x, y]))
    model = keras.Model({"z": z, "a": a}, L.Dense(3)(x))
    _randomize_bns(model)
    path = tmp_path / "served"
    export_saved_model(model, path, verbose=0)
    rng = np.random.RandomState(1)
    x = {k: rng.randn(3, 8, 8, 3).astype("float32") for k in ("z", "a")}
    want = to_numpy(model(x, training=False))
    np.testing.assert_allclose(
        run_saved_model(path, x), want, atol=1e-5, rtol=1e-4
    )
    swapped = {"z": x["a"], "a": x["z"]}
    assert np.max(np.abs(run_saved_model(path, swapped) - want)) > 0.1


@pytest.mark.parametrize("dtype", [None, "float32"])
def test_mixed_precision_export(tmp_path, dtype):
    from keras_norms.saved_model import run_saved_model

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = _small_cnn()
    finally:
        keras.config.set_dtype_policy(previous)
    _randomize_bns(model)
    path = tmp_path / "served"
    export_saved_model(model, path, verbose=0, dtype=dtype)
    x = np.random.RandomState(1).randn(4, 8, 8, 3).astype("float32")
    got = run_saved_model(path, x)
    # float16 outputs, or float32 ones from the float32 copy.
    assert got.dtype == ("float32" if dtype else "float16")
    want = to_numpy(model(x, training=False)).astype("float64")
    eps = 2.0**-10
    assert np.max(np.abs(got - want)) <= 16 * eps * (1 + np.max(np.abs(want)))
