"""Exports that never lose a file, a training or a feature.

- `export_saved_model` overwrites only an earlier export, atomically, and
  refuses the working directory, a file, a directory of other files;
- a failed (re-)export leaves the previous one; `FoldAndExport` warns and
  training goes on;
- every export and `optimize_for_inference` is checked against the
  original model with a tolerance relative to the output scale;
- a `keras.layers.Normalization` with a constant feature is not folded
  into float32 weights that lose the feature (NumPy reference);
- TensorFlow missing gives an `ImportError` naming the extra to install;
- the documented serving snippets run as written (TensorFlow alone).

Most tests replace the SavedModel writer (`export._write_and_run`) by a
fake that writes a file and returns the model's outputs, perturbed at
will: they test the file handling and the checks, fast, on every backend.
One real export per module (a module fixture) serves the snippet tests.
"""

import json
import os
import re
import subprocess
import sys
import textwrap
import warnings

import keras
import numpy as np
import pytest

from keras_norms import _artifact
from keras_norms import _check
from keras_norms import _inference_rewrite
from keras_norms import saved_model as kn_export
from keras_norms.callbacks import FoldAndExport
from keras_norms.inference import OutputMismatchError
from keras_norms.inference import optimize_for_inference
from keras_norms.saved_model import export_saved_model
from tests.helpers import Interrupted
from tests.helpers import interrupt_moves
from tests.helpers import to_numpy

L = keras.layers
DOCS = os.path.join(
    os.path.dirname(__file__), "..", "docs", "guide", "export.md"
)


@pytest.fixture
def fake_writer(monkeypatch):
    """The writer writes `saved_model.pb` (the call number) and returns
    `model(x) * scale + shift`; `fail_on` calls raise instead."""
    state = {"calls": 0, "scale": 1.0, "shift": 0.0, "fail_on": ()}

    def write(model, directory, jit_compile, inputs):
        state["calls"] += 1
        with open(os.path.join(directory, "saved_model.pb"), "w") as f:
            f.write(str(state["calls"]))
        if state["calls"] in state["fail_on"]:
            raise RuntimeError(f"writer failure {state['calls']}")
        x = inputs[0] if len(inputs) == 1 else inputs
        return [
            o * state["scale"] + state["shift"]
            for o in _check.model_outputs(model, x)
        ]

    monkeypatch.setattr(kn_export, "_write_and_run", write)
    return state


def _model(scale=1.0):
    model = keras.Sequential(
        [keras.Input((3,)), L.Dense(2), L.BatchNormalization()]
    )
    model.layers[0].kernel.assign(
        np.full((3, 2), scale, "float32") * [[1.0, -1.0]]
    )
    model.compile(optimizer="sgd", loss="mse")
    return model


def _content(path):
    with open(os.path.join(path, "saved_model.pb")) as f:
        return f.read()


def _fit(model, callbacks, epochs=1):
    x = np.random.RandomState(0).randn(8, 3).astype("float32")
    return model.fit(
        x,
        x[:, :2],
        epochs=epochs,
        batch_size=8,
        verbose=0,
        callbacks=callbacks,
    )


# ----------------------------------------------------------------------
# 1. Nothing of the user's is deleted
# ----------------------------------------------------------------------
def test_overwrite_replaces_only_an_earlier_export(
    fake_writer, tmp_path, monkeypatch
):
    model = _model()
    models = tmp_path / "models"
    models.mkdir()
    (models / "notes.txt").write_text("mine")

    with pytest.raises(
        FileExistsError, match=r"notes\.txt.*Received: filepath="
    ):
        export_saved_model(model, models, overwrite=True, verbose=0)
    with pytest.raises(FileExistsError, match="existing file"):
        export_saved_model(model, models / "notes.txt", overwrite=True)
    monkeypatch.chdir(models)
    with pytest.raises(FileExistsError, match="working directory"):
        export_saved_model(model, ".", overwrite=True, verbose=0)
    # FoldAndExport refuses before training, not after it.
    with pytest.raises(FileExistsError, match="models"):
        _fit(model, [FoldAndExport(str(models), verbose=0)])
    assert fake_writer["calls"] == 0
    assert sorted(os.listdir(models)) == ["notes.txt"]
    assert (models / "notes.txt").read_text() == "mine"

    # An earlier export (ours, or a bare SavedModel) is replaced.
    target = models / "exported"
    export_saved_model(model, target, verbose=0)
    export_saved_model(model, target, overwrite=True, verbose=0)
    assert _content(target) == "2"
    assert json.loads((target / _artifact.MARKER).read_text())["format"]
    (target / _artifact.MARKER).unlink()
    (target / "variables").mkdir()
    export_saved_model(model, target, overwrite=True, verbose=0)
    assert _content(target) == "3"
    # Nothing left beside it: no staging or old directories.
    assert sorted(os.listdir(models)) == ["exported", "notes.txt"]


class _Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = L.Dense(2)

    def call(self, x):
        return self.dense(x)


def test_subclassed_model_is_checked_on_a_sample_from_its_input_shape(
    fake_writer, tmp_path
):
    model = _Subclassed()
    model(np.zeros((1, 3), "float32"))
    fake_writer["shift"] = 1.0
    with pytest.raises(OutputMismatchError, match="differs"):
        export_saved_model(model, tmp_path / "s", fold=False, verbose=0)
    assert fake_writer["calls"] == 1 and os.listdir(tmp_path) == []


# ----------------------------------------------------------------------
# 2. A failed re-export keeps the previous one
# ----------------------------------------------------------------------
def test_failed_reexport_keeps_the_previous_export(
    fake_writer, tmp_path, monkeypatch
):
    model = _model()
    target = tmp_path / "m"
    export_saved_model(model, target, verbose=0)
    fake_writer["fail_on"] = (2,)
    with pytest.raises(RuntimeError, match="writer failure 2"):
        export_saved_model(model, target, overwrite=True, verbose=0)
    assert _content(target) == "1"
    assert os.listdir(tmp_path) == ["m"]

    # Failing to move the new export in: the old one is moved back.
    replace = os.replace

    def failing_replace(src, dst):
        if ".tmp" + os.sep in str(src):  # the new export, from staging
            raise OSError("disk gone")
        replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk gone"):
        export_saved_model(model, target, overwrite=True, verbose=0)
    monkeypatch.setattr(os, "replace", replace)
    assert _content(target) == "1"
    assert os.listdir(tmp_path) == ["m"]


@pytest.mark.parametrize("killed", [False, True], ids=["error", "killed"])
@pytest.mark.parametrize("at", [1, 2, 3])
def test_interrupted_reexport_leaves_old_new_or_nothing(
    fake_writer, tmp_path, at, killed
):
    # A SavedModel re-export makes two moves (the old directory aside,
    # the new one in); `at=3` interrupts nothing.
    model = _model()
    target = tmp_path / "m"
    export_saved_model(model, target, verbose=0)
    with pytest.MonkeyPatch.context() as patch:
        interrupt_moves(patch, at, killed)
        try:
            export_saved_model(model, target, overwrite=True, verbose=0)
        except Interrupted:
            assert at <= 2
    state = _content(target) if target.exists() else None
    aside = [p for p in tmp_path.iterdir() if p.name.endswith(".old")]
    if not killed or at == 3:  # recovered: the old export, or the new
        assert state == ("2" if at == 3 else "1")
        assert os.listdir(tmp_path) == ["m"]
    else:  # stopped there: the old export, at its path or aside
        assert state in ("1", None)
        if state is None:  # the old export is complete, aside
            assert sorted(os.listdir(aside[0] / "m")) == sorted(
                ["saved_model.pb", _artifact.MARKER]
            )
            assert _content(aside[0] / "m") == "1"
    # A later export to the same path works.
    export_saved_model(model, target, overwrite=True, verbose=0)
    assert _content(target) == str(fake_writer["calls"])


# One artifact as the package writes it: (staged, target) pairs, the
# path a runtime opens last (OpenVINO's .xml after its .bin).
_LAYOUTS = {
    "file": ["m.onnx"],
    "pair": ["m.bin", "m.xml"],
    "directory": ["m/"],
}


def _write_artifact(directory, names, tag):
    for name in names:
        path = directory / name.rstrip("/")
        if name.endswith("/"):
            path.mkdir(parents=True)
            (path / "saved_model.pb").write_text(tag)
        else:
            path.write_text(tag)


def _tag(path):
    return (path / "saved_model.pb" if path.is_dir() else path).read_text()


def _artifact_state(directory, names):
    """ "old" / "new" for a complete export, None if the opened path is
    absent; anything else (a mixed export) fails the test."""
    paths = [directory / name.rstrip("/") for name in names]
    if not paths[-1].exists():
        return None
    tags = {_tag(p) for p in paths}
    assert len(tags) == 1, f"a mixed export: {tags}"
    return tags.pop()


@pytest.mark.parametrize("killed", [False, True], ids=["error", "killed"])
@pytest.mark.parametrize("layout", sorted(_LAYOUTS))
def test_replace_artifact_never_leaves_a_mixed_export(tmp_path, layout, killed):
    names = _LAYOUTS[layout]
    moves = {"file": 1, "pair": 4, "directory": 2}[layout]
    for at in range(1, moves + 2):  # moves + 1: nothing interrupted
        work = tmp_path / f"at{at}"
        staging = work / ".staging"
        staging.mkdir(parents=True)
        _write_artifact(work, names, "old")
        _write_artifact(staging, names, "new")
        pairs = [
            (str(staging / n.rstrip("/")), str(work / n.rstrip("/")))
            for n in names
        ]
        with pytest.MonkeyPatch.context() as patch:
            calls = interrupt_moves(patch, at, killed)
            try:
                _artifact.replace(pairs)
            except Interrupted as error:
                assert at <= moves
                if killed and at > 1:  # the rollback failed: it says so
                    notes = "".join(getattr(error, "__notes__", []))
                    assert "kept in" in notes
        assert len(calls) >= min(at, moves)
        state = _artifact_state(work, names)
        aside = [p for p in work.iterdir() if p.name.endswith(".old")]
        if at > moves:
            assert state == "new" and not aside
        elif not killed:
            assert state == "old" and not aside
        else:
            assert state in ("old", None)
            # Nothing of the old export is lost: each of its files is at
            # its path, or aside.
            for name in names:
                found = [work / name] + [a / name for a in aside]
                assert "old" in {_tag(p) for p in found if p.exists()}
        # A later replace works, whatever was left.
        later = work / ".later"
        later.mkdir()
        _write_artifact(later, names, "newer")
        _artifact.replace(
            [(str(later / n.rstrip("/")), t) for n, (_, t) in zip(names, pairs)]
        )
        assert _artifact_state(work, names) == "newer"


class _FakeLoss(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        logs["fake_loss"] = 3.0 - epoch  # improves every epoch


def test_callback_failed_export_warns_and_training_goes_on(
    fake_writer, tmp_path
):
    target = tmp_path / "best"
    callback = FoldAndExport(target, monitor="fake_loss", verbose=0)
    fake_writer["fail_on"] = (2,)
    with pytest.warns(UserWarning, match="failed; training goes on.*unchanged"):
        history = _fit(_model(), [_FakeLoss(), callback], epochs=3)
    assert len(history.history["loss"]) == 3
    assert callback.exported == [str(target)] * 2  # epochs 1 and 3
    ((path, reason),) = callback.failed
    assert path == str(target) and "writer failure 2" in reason
    assert _content(target) == "3"
    assert os.listdir(tmp_path) == ["best"]


# ----------------------------------------------------------------------
# 3. A tolerance relative to the output scale; a failed check keeps fit's work
# ----------------------------------------------------------------------
def test_check_is_relative_to_the_output_scale():
    e = np.linspace(-1500.0, 2000.0, 12).reshape(4, 3)
    float32 = _check.Tolerance(_check.ATOL, _check.RTOL)
    check = _check.Check.run(
        [e * (1 + 2e-5)], [e], float32, what="x"
    )  # float32 reassociation on outputs of order 1e3 (issue 19): passes
    assert check.passed and "0.04 <= tolerance 0.2" in str(check)
    for got, ref in [(e + 1.0, e), (e / 1e3 + 3.6e-3, e / 1e3)]:
        check = _check.Check.run(
            [got], [ref], float32, what="x"
        )  # a defect of 5e-4 .. 1e-3 of the scale: caught
        assert not check.passed and "differs" in str(check)
    check = _check.Check.run([e], [e, e], _check.Tolerance(0, 0), what="x")
    assert not check.passed and "1 output(s), the model 2" in str(check)


def test_callback_check_is_relative_and_warns_by_default(
    fake_writer, tmp_path, capsys
):
    # Outputs of order 1e3 off by 2e-5 relative: accepted, one line printed.
    model = _model(scale=1e3)
    fake_writer["scale"] = 1 + 2e-5
    callback = FoldAndExport(tmp_path / "big", sample=np.ones((4, 3)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        _fit(model, [callback])
    (line,) = capsys.readouterr().out.strip().splitlines()
    assert str(tmp_path / "big") in line and "max abs difference" in line

    # A real mismatch at the end of fit: warn, keep the files, say where.
    fake_writer["scale"], fake_writer["shift"] = 1.0, 1.0
    callback = FoldAndExport(tmp_path / "off", verbose=0)
    with pytest.warns(UserWarning, match=r"max abs difference 1 > .*kept at"):
        _fit(model, [callback])
    assert callback.exported == [str(tmp_path / "off")]
    assert _content(tmp_path / "off")
    # Raise only if asked; the files are then not installed.
    callback = FoldAndExport(tmp_path / "no", on_mismatch="raise", verbose=0)
    with pytest.raises(ValueError, match="differs from the original"):
        _fit(model, [callback])
    assert not (tmp_path / "no").exists()
    assert sorted(os.listdir(tmp_path)) == ["big", "off"]
    with pytest.raises(ValueError, match="Received: on_mismatch='ignore'"):
        FoldAndExport(tmp_path, on_mismatch="ignore")
    with pytest.raises(ValueError, match="Received: rtol=-1"):
        export_saved_model(model, tmp_path / "x", rtol=-1)


# ----------------------------------------------------------------------
# 4. keras.layers.Normalization with a constant feature
# ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def constant_feature():
    """Data whose last feature is a constant 5 (variance 0)."""
    rng = np.random.RandomState(0)
    data = (rng.randn(64, 3) * [1.0, 2.0, 1.0] + [0.0, 3.0, 0.0]).astype(
        "float32"
    )
    data[:, 2] = 5.0
    return data


def _normalization_model(data):
    norm = L.Normalization(name="norm")
    norm.adapt(data)
    dense = L.Dense(4, name="d")
    model = keras.Sequential([keras.Input((3,)), norm, dense])
    dense.kernel.assign(np.random.RandomState(1).randn(3, 4).astype("float32"))
    return model


def _numpy_reference(model, data):
    """`(x - mean) / max(sqrt(var), 1e-7) @ W + b` in float64, from the
    statistics `adapt` stored (Keras' formula)."""
    norm, dense = model.get_layer("norm"), model.get_layer("d")
    mean, var, w, b = (
        to_numpy(v).astype("float64")
        for v in (norm.mean, norm.variance, dense.kernel, dense.bias)
    )
    std = np.maximum(np.sqrt(var), 1e-7)
    return (data.astype("float64") - mean) / std @ w + b


def test_normalization_with_constant_feature_stays_exact(
    constant_feature, fake_writer, tmp_path, monkeypatch
):
    data = constant_feature
    model = _normalization_model(data)
    reference = _numpy_reference(model, data)
    np.testing.assert_allclose(to_numpy(model(data)), reference, atol=1e-5)

    optimized, report = optimize_for_inference(
        model, verbose=0, return_report=True
    )
    np.testing.assert_allclose(to_numpy(optimized(data)), reference, atol=1e-5)
    ((name, why),) = report.kept
    assert name == "norm" and "|mean| / std" in why and "feature 2" in why
    assert report.folded_forward == [] and report.check.passed

    # Folded anyway, the feature is lost; the check sees it (its default
    # sample follows the Normalization's statistics) and refuses.
    monkeypatch.setattr(_inference_rewrite, "_MAX_SHIFT_RATIO", np.inf)
    with pytest.raises(OutputMismatchError, match="max abs difference"):
        optimize_for_inference(model, verbose=0)
    with pytest.raises(OutputMismatchError, match="Nothing was exported"):
        export_saved_model(model, tmp_path / "m", verbose=0)
    assert fake_writer["calls"] == 0 and not (tmp_path / "m").exists()
    with pytest.warns(UserWarning, match="differs"):
        folded = optimize_for_inference(model, verbose=0, on_mismatch="warn")
    assert np.max(np.abs(to_numpy(folded(data)) - reference)) > 0.05


# ----------------------------------------------------------------------
# 5a. TensorFlow missing: say which extra to install, before any child
# ----------------------------------------------------------------------
def test_export_without_tensorflow_names_the_extra(monkeypatch, tmp_path):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "tensorflow" else find_spec(name, *a),
    )

    def no_child(*args, **kwargs):
        raise AssertionError("a child process was started")

    monkeypatch.setattr(subprocess, "run", no_child)
    model = _model()
    hint = re.escape('pip install "keras_norms[tensorflow]" -c constraints.txt')
    with pytest.raises(ModuleNotFoundError, match=hint):
        export_saved_model(model, tmp_path / "m", verbose=0)
    with pytest.raises(ImportError, match=hint):
        kn_export.run_saved_model(tmp_path / "m", np.zeros((1, 3)))
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------
# 5d. The documented serving snippets run as written (TensorFlow alone)
# ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits_export(tmp_path_factory):
    """One real export of a digits-shaped model: `cwd/exported/digits`."""
    cwd = tmp_path_factory.mktemp("docs")
    inputs = keras.Input((8, 8, 1))
    x = L.Conv2D(4, 3, use_bias=False)(inputs)
    x = L.BatchNormalization()(x)
    outputs = L.Dense(10, activation="softmax")(L.Flatten()(L.ReLU()(x)))
    model = keras.Model(inputs, outputs)
    export_saved_model(model, cwd / "exported" / "digits", verbose=0)
    return cwd


def _python_blocks(text):
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def _run_tf_only(code, cwd):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("KERAS_BACKEND", None)
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # JAX exports carry no unsaved custom gradients (5c): no absl warning.
    assert "unsaved custom gradients" not in result.stderr
    return result.stdout


def test_documented_serving_snippets_run(digits_export):
    (docstring_block,) = _python_blocks(
        textwrap.dedent(export_saved_model.__doc__.split("\n", 1)[1])
    )
    with open(DOCS) as f:
        blocks = [
            b for b in _python_blocks(f.read()) if "saved_model.load" in b
        ]
    assert len(blocks) == 1
    code = "\n".join(
        [
            'filepath = "exported/digits"',
            docstring_block,
            "print(outputs.shape)",
            blocks[0],
            "print(probs.shape)",
        ]
    )
    out = _run_tf_only(code, digits_export).strip().splitlines()
    assert out[-2:] == ["(2, 10)", "(5, 10)"]
