"""`keras_norms.deploy.export`: argument errors, and every format whose
runtime is installed, verified in that runtime in a fresh process.

The per-layer matrix (`test_matrix`) records each cell (layer x backend x
format: verified / refused / fails how) in
`build/export_matrix_<backend>.json`, so the docs' table comes from a run,
not from memory. A cell whose runtime is not installed is skipped with the
missing module named (`pip install "keras_norms[deploy]" -c
constraints.txt` installs them all).
"""

import importlib.util
import json
import os
import re
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest

import keras_norms as kn
from keras_norms import _artifact
from keras_norms import _check
from keras_norms import _formats
from keras_norms import deploy
from tests.helpers import BACKEND
from tests.helpers import Interrupted
from tests.helpers import interrupt_moves
from tests.helpers import set_random_weights

SUFFIX = {
    "tf_saved_model": "",
    "onnx": ".onnx",
    "litert": ".tflite",
    "openvino": ".xml",
    "torch": ".pt2",
}
FILE_FORMATS = ("onnx", "litert", "openvino", "torch")


def _missing(format):
    """The first exporter or runtime module this format lacks here, or None."""
    if format == "tf_saved_model":
        needed = ["tensorflow"]
    else:
        needed = list(_formats.EXPORTER.get((format, BACKEND), ()))
        needed.append(_formats.RUNTIME[format][0])
    for name in needed:
        if importlib.util.find_spec(name) is None:
            return name
    return None


def _small_model():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, padding="same")(inputs)
    x = kn.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU()(x)
    x = kn.LayerNormalization(name="ln")(x)
    x = kn.GroupNormalization(groups=2, name="gn")(x)
    x = kn.InstanceNormalization(name="in")(x)
    x = kn.RMSNormalization(name="rms")(x)
    x = kn.FilterResponseNormalization(name="frn")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(3)(x)
    model = keras.Model(inputs, outputs)
    for i, layer in enumerate(model.layers):
        if layer.name in ("bn", "ln", "gn", "in", "rms", "frn"):
            set_random_weights(layer, seed=i)
    return model


# ----------------------------------------------------------------------
# Argument errors: no runtime needed
# ----------------------------------------------------------------------
def test_unknown_format(tmp_path):
    with pytest.raises(ValueError, match=r"`format`.*format='pb'"):
        deploy.export(_small_model(), tmp_path / "m", format="pb")


def test_unbuilt_model(tmp_path):
    model = keras.Sequential([keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="not built.*built=False"):
        deploy.export(model, tmp_path / "m.onnx", format="onnx")


class _Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(2)
        self.norm = kn.LayerNormalization()

    def call(self, x):
        return self.norm(self.dense(x))


def test_subclassed_model_with_fold(tmp_path):
    model = _Subclassed()
    model(np.zeros((1, 4), "float32"))
    with pytest.raises(ValueError, match="fold=False.*Received: fold=True"):
        deploy.export(model, tmp_path / "m.onnx", format="onnx")


def test_wrong_suffix(tmp_path):
    # ONNX: a format every backend writes, so the suffix is what is wrong.
    with pytest.raises(ValueError, match=r"end with '\.onnx'"):
        deploy.export(_small_model(), tmp_path / "m.tflite", format="onnx")


@pytest.mark.parametrize("format", FILE_FORMATS)
def test_existing_path_without_overwrite(tmp_path, format):
    if (format, BACKEND) in _formats.REFUSED:
        pytest.skip(f"{format} is refused on {BACKEND}")
    target = tmp_path / f"m{SUFFIX[format]}"
    target.write_text("keep me")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        deploy.export(_small_model(), target, format=format)
    assert target.read_text() == "keep me"


@pytest.mark.parametrize(
    "format", sorted({f for f, b in _formats.REFUSED if b == BACKEND})
)
def test_refused_format_says_what_to_use(tmp_path, format):
    with pytest.raises(ValueError, match=f"{BACKEND} backend.*Received"):
        deploy.export(
            _small_model(), tmp_path / f"m{SUFFIX[format]}", format=format
        )
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("batch_size", [0, 2.0, True])
def test_bad_batch_size(tmp_path, batch_size):
    with pytest.raises(ValueError, match="`batch_size`.*Received: batch_size="):
        deploy.export(
            _small_model(),
            tmp_path / "m.onnx",
            format="onnx",
            batch_size=batch_size,
        )


def test_batch_size_not_for_saved_model(tmp_path):
    with pytest.raises(ValueError, match="tf_saved_model.*batch_size=2"):
        deploy.export(_small_model(), tmp_path / "m", batch_size=2)


def test_missing_runtime_names_the_install(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "onnxruntime" else real(name, *a),
    )
    with pytest.raises(ModuleNotFoundError, match=r"keras_norms\[deploy\]"):
        deploy.export(_small_model(), tmp_path / "m.onnx", format="onnx")
    assert not os.listdir(tmp_path)


def test_import_keras_norms_imports_no_runtime():
    code = (
        "import sys, keras_norms; "
        "print([m for m in ('onnx', 'onnxruntime', 'openvino', "
        "'ai_edge_litert', 'tf2onnx', 'jax2onnx', 'litert_torch') "
        "if m in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=os.path.dirname(os.path.dirname(__file__)),
    ).stdout
    assert out.strip().splitlines()[-1] == "[]"


# ----------------------------------------------------------------------
# Each installed format on a CNN with several keras_norms layers
# ----------------------------------------------------------------------
def _options(format):
    """Export options the small CNN needs for `format` on this backend.

    On torch, torch.onnx's TorchScript exporter (Keras' choice for a dynamic
    batch) fails on the channels-last group_norm: a static batch goes
    through the dynamo exporter (`test_torch_onnx_dynamic_batch` checks
    the refusal).
    """
    return {"batch_size": 4} if (format, BACKEND) == ("onnx", "torch") else {}


def _usable(format):
    if (format, BACKEND) in _formats.REFUSED:
        pytest.skip(
            f"refused on {BACKEND}: {_formats.REFUSED[(format, BACKEND)]}"
        )
    missing = _missing(format)
    if missing == "litert_torch":
        pytest.skip("litert_torch is not installed (it needs torch<2.10)")
    if missing:
        pytest.skip(
            f"{missing} is not installed (pip install "
            '"keras_norms[deploy]" -c constraints.txt)'
        )


@pytest.mark.parametrize("format", deploy.FORMATS)
def test_cnn_exports_and_verifies(tmp_path, format):
    _usable(format)
    model = _small_model()
    target = tmp_path / f"m{SUFFIX[format]}"
    report = deploy.export(model, target, format=format, **_options(format))
    assert report.verified and report.folded
    assert report.max_abs_difference <= report.tolerance
    assert os.path.exists(target)
    # Nothing of the staging is left beside the target.
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    # The folded model has no BatchNormalization left to export.
    assert report.format == format and str(target) in str(report)
    # The report says which rows the check ran on, and how many.
    assert report.check_rows == 4
    assert report.checked_on == "4 rows drawn at random (seeded)"
    assert "on 4 rows drawn at random" in str(report)
    assert "'check_rows': 4" in repr(report)
    # A dynamic batch is checked on the sample's 4 rows and on batches of
    # 1 and 5; a static one on its batch only.
    static = _options(format).get("batch_size")
    assert report.static_batch == static
    if format == "tf_saved_model":
        assert report.checked_batch_sizes == [4]
    else:
        assert report.checked_batch_sizes == ([static] if static else [1, 4, 5])


@pytest.mark.parametrize("format", deploy.FORMATS)
def test_non_finite_sample_is_refused_first(tmp_path, format):
    # Before anything else (even a format this backend refuses): the row
    # is named, nothing is written.
    x = np.ones((6, 8, 8, 3), "float32")
    x[2, 0, 1, 2] = np.nan
    x[4, 3, 3, 0] = -np.inf
    target = tmp_path / f"m{SUFFIX[format]}"
    with pytest.raises(
        ValueError,
        match=r"`sample` must hold finite.*Row 2 of sample holds NaN \(2 of "
        r"its 6 rows are not finite: 2, 4\).*Received: sample\[2\] holding",
    ):
        deploy.export(_small_model(), target, format=format, sample=x)
    inputs = [keras.Input((3,)), keras.Input((3,))]
    model = keras.Model(inputs, keras.layers.Add()(inputs))
    pair = [np.zeros((2, 3), "float32"), np.full((2, 3), np.inf, "float32")]
    with pytest.raises(ValueError, match=r"Row 0 of sample\[1\] holds inf"):
        deploy.export(model, target, format=format, sample=pair)
    assert not os.listdir(tmp_path)


def test_model_computing_nan_on_the_sample_is_refused(tmp_path):
    # Finite rows on which the model itself computes NaN: the check would
    # compare NaN with NaN; the error names the row instead.
    format = _first_file_format()
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Lambda(keras.ops.log)(inputs))
    x = np.ones((4, 3), "float32")
    x[2, 1] = -1.0
    target = tmp_path / f"m{SUFFIX[format]}"
    with pytest.raises(
        ValueError,
        match=r"computes NaN or inf on the check's row 2 \(the 4 rows of "
        r"`sample`; output 0, 1 row\(s\) in all\).*verify=False",
    ):
        deploy.export(model, target, format=format, sample=x)
    assert not os.listdir(tmp_path)
    report = deploy.export(
        model, target, format=format, fold=False, sample=np.abs(x)
    )
    assert report.verified and report.check_rows == 4
    assert "on the 4 rows of `sample`" in str(report)


@pytest.mark.parametrize("format", FILE_FORMATS)
def test_unfolded_model_never_called(tmp_path, format):
    # A functional model built from keras.Input but never called: Keras'
    # ONNX exporter refuses such a model; export runs the check's
    # reference call first.
    _usable(format)
    inputs = keras.Input((5,))
    model = keras.Model(
        inputs, kn.LayerNormalization()(keras.layers.Dense(4)(inputs))
    )
    report = deploy.export(
        model,
        tmp_path / f"m{SUFFIX[format]}",
        format=format,
        fold=False,
        **_options(format),
    )
    assert report.verified and not report.folded


@pytest.mark.parametrize("format", FILE_FORMATS)
def test_overwrite_replaces_only_after_verification(
    tmp_path, format, monkeypatch
):
    _usable(format)
    target = tmp_path / f"m{SUFFIX[format]}"
    target.write_text("earlier export")
    # A tolerance nothing passes: the new export fails its check, and the
    # earlier file must still be there, unchanged.
    monkeypatch.setattr(_check, "ATOL", -1.0)
    with pytest.raises(ValueError, match="differs from the (original )?model"):
        deploy.export(
            _small_model(),
            target,
            format=format,
            overwrite=True,
            **_options(format),
        )
    assert target.read_text() == "earlier export"
    assert os.listdir(tmp_path) == [target.name]
    monkeypatch.undo()
    report = deploy.export(
        _small_model(),
        target,
        format=format,
        overwrite=True,
        **_options(format),
    )
    assert report.verified and target.read_bytes() != b"earlier export"


@pytest.mark.skipif(BACKEND != "torch", reason="torch.onnx only")
def test_torch_onnx_dynamic_batch(tmp_path):
    _usable("onnx")
    target = tmp_path / "m.onnx"
    try:
        report = deploy.export(_small_model(), target, format="onnx")
    except ValueError as e:  # refused: says what to do, writes nothing
        assert "Pass batch_size=N" in str(e)
        assert not os.listdir(tmp_path)
    else:  # a torch whose TorchScript exporter handles it
        assert report.static_batch is None and report.verified
    report = deploy.export(
        _small_model(), target, format="onnx", batch_size=2, overwrite=True
    )
    assert report.static_batch == 2 and report.verified


@pytest.mark.parametrize("format", FILE_FORMATS)
def test_static_artifact_with_dynamic_batch_is_refused(tmp_path, format):
    # An exporter told a static batch (here through `input_signature`)
    # may write an artifact that takes that batch only: with
    # batch_size=None the check runs batches of 1, 4 and 5 rows, so such
    # an artifact is refused, saying to pass batch_size, and nothing is
    # written. (OpenVINO's converter from torch keeps the batch dynamic,
    # and so does torch.export given export's dynamic_shapes: then it
    # verifies on all three.)
    _usable(format)
    if (format, BACKEND) == ("onnx", "torch"):
        pytest.skip("torch.onnx needs batch_size for this model")
    signature = [keras.InputSpec(shape=(4, 8, 8, 3), dtype="float32")]
    try:
        report = deploy.export(
            _small_model(),
            tmp_path / f"m{SUFFIX[format]}",
            format=format,
            input_signature=signature,
        )
    except ValueError as error:
        assert re.search(
            r"takes a batch of 4 row\(s\) only.*batches of 1, 4 and 5 "
            r"rows.*Pass batch_size=4.*Received: batch_size=None$",
            str(error),
            re.S,
        ), str(error)
        assert not os.listdir(tmp_path)
    else:
        assert BACKEND == "torch" and format in ("openvino", "torch")
        assert report.static_batch is None
        assert report.checked_batch_sizes == [1, 4, 5]


@pytest.mark.skipif(BACKEND != "torch", reason="torch.export only")
def test_torch_program_takes_any_batch(tmp_path):
    _usable("torch")
    import torch

    model = _small_model()
    target = tmp_path / "m.pt2"
    report = deploy.export(model, target, format="torch")
    assert report.static_batch is None
    assert report.checked_batch_sizes == [1, 4, 5]
    assert "(batches of 1, 4 and 5 rows)" in str(report)
    # Independently of the check: the saved program runs batches of 1, 3
    # and 7, as the model does (folded: float32 rounding apart).
    program = torch.export.load(str(target)).module()
    rng = np.random.RandomState(1)
    for rows in (1, 3, 7):
        x = rng.randn(rows, 8, 8, 3).astype("float32")
        with torch.no_grad():
            got = program(torch.from_numpy(x)).numpy()
        want = keras.ops.convert_to_numpy(model(x))
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    # Keras' own default (no dynamic_shapes: a batch of 1) is refused.
    with pytest.raises(ValueError, match=r"Pass batch_size=1"):
        deploy.export(
            model, target, format="torch", overwrite=True, dynamic_shapes=None
        )
    # A static batch, asked for: fixed, and checked on that batch.
    report = deploy.export(
        model,
        target,
        format="torch",
        overwrite=True,
        batch_size=3,
        sample=rng.randn(6, 8, 8, 3).astype("float32"),
    )
    assert report.static_batch == 3 and report.checked_batch_sizes == [3]
    assert report.check_rows == 6


def test_openvino_reports_its_default_precision(tmp_path):
    _usable("openvino")
    import openvino as ov

    model = _small_model()
    target = tmp_path / "m.xml"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = deploy.export(model, target, format="openvino")
    assert report.precision == "f32"
    compiled = ov.Core().compile_model(str(target), "CPU")
    default = compiled.get_property("INFERENCE_PRECISION_HINT")
    assert report.default_precision == default.get_type_name()
    # The figure, independently: the plugin's default on the 4-row sample
    # (one of the checked batches).
    x = _check.sample_batch(model)
    got = np.asarray(compiled([x])[compiled.outputs[0]])
    want = keras.ops.convert_to_numpy(model(x))
    difference = float(np.max(np.abs(got - want)))
    assert report.default_precision_difference >= difference * (1 - 1e-6)
    assert report.default_precision_difference <= 10 * max(difference, 1e-6)
    notes = [
        str(w.message) for w in caught if "default precision" in str(w.message)
    ]
    if report.default_precision_difference > report.tolerance:
        # bf16 units: measured 0.011-0.016 here against a tolerance of
        # about 2e-4. The warning says how to get what was checked.
        assert len(notes) == 1
        assert "INFERENCE_PRECISION_HINT': 'f32'" in notes[0]
        assert f"({report.default_precision})" in notes[0]
        assert "run in f32 (in the runtime's default precision" in str(report)
    else:
        assert notes == []
    assert report.verified and report.max_abs_difference <= report.tolerance


def test_openvino_ignores_a_precision_hint_stored_in_the_model(tmp_path):
    # The guide says so: a hint in the IR's rt_info does not set the CPU
    # plugin's precision; only the compile configuration does.
    _usable("openvino")
    import openvino as ov

    core = ov.Core()
    if "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        pytest.skip("this processor has no bf16 units (f32 either way)")
    model = _small_model()
    model.export(str(tmp_path / "m.xml"), format="openvino", verbose=False)
    ir = core.read_model(str(tmp_path / "m.xml"))
    ir.set_rt_info("f32", ["runtime_options", "INFERENCE_PRECISION_HINT"])
    ov.save_model(ir, str(tmp_path / "hinted.xml"))
    compiled = core.compile_model(str(tmp_path / "hinted.xml"), "CPU")
    hint = compiled.get_property("INFERENCE_PRECISION_HINT")
    assert hint.get_type_name() == "bf16"
    config = {"INFERENCE_PRECISION_HINT": "f32"}
    compiled = core.compile_model(str(tmp_path / "hinted.xml"), "CPU", config)
    assert compiled.get_property(
        "INFERENCE_PRECISION_HINT"
    ).get_type_name() == ("f32")


def test_quiet_converter_captures_every_stream(capfd):
    with _formats.quiet_converter() as printed:
        print("python stdout")
        print("python stderr", file=sys.stderr)
        os.write(1, b"fd 1\n")
        os.write(2, b"fd 2\n")
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    for line in ("python stdout", "python stderr", "fd 1", "fd 2"):
        assert line in printed.text
    with pytest.raises(KeyError):
        with _formats.quiet_converter() as printed:
            os.write(2, b"".join(b"line %d\n" % i for i in range(100)))
            raise KeyError("failed")
    assert capfd.readouterr() == ("", "")
    tail = printed.tail().splitlines()
    assert tail == [f"line {i}" for i in range(80, 100)]
    with _formats.quiet_converter(verbose=True):
        os.write(2, b"shown after\n")
    assert capfd.readouterr().err == "shown after\n"


@pytest.mark.skipif(BACKEND != "torch", reason="torch.onnx only")
def test_failed_torch_onnx_export_prints_nothing(tmp_path, capfd):
    # torch.onnx's TorchScript exporter fails on a channels-last group
    # norm with a dynamic batch, and dumps its whole graph (about 60 lines)
    # first: the user sees our error only, which quotes the dump's tail.
    _usable("onnx")
    model = keras.Sequential(
        [
            keras.Input((8, 8, 4)),
            keras.layers.Conv2D(4, 3),
            kn.GroupNormalization(groups=2),
        ]
    )
    capfd.readouterr()
    with pytest.raises(ValueError, match="Pass batch_size=N") as error:
        deploy.export(model, tmp_path / "m.onnx", format="onnx")
    out, err = capfd.readouterr()
    assert "Torch IR graph" not in out + err
    assert "TracerWarning" not in out + err
    assert "aten::" not in out + err
    message = str(error.value)
    assert "The converter's last output lines:" in message
    assert "return (" in message  # the dump's last line
    assert message.rstrip().endswith("Received: batch_size=None")
    assert not os.listdir(tmp_path)


def _openvino_outputs(xml, x):
    """OpenVINO's output for `x` of the export at `xml`, or None if it does
    not load."""
    import openvino as ov

    core = ov.Core()
    try:
        model = core.read_model(str(xml))
    except RuntimeError:  # no .xml (or no .bin): it says so
        return None
    compiled = core.compile_model(
        model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}
    )
    return np.asarray(compiled([x])[compiled.outputs[0]])


def _pair_bytes(directory):
    return {
        name: (directory / name).read_bytes()
        for name in ("m.bin", "m.xml")
        if (directory / name).exists()
    }


def _copy_pair(source, directory):
    import shutil

    directory.mkdir(parents=True, exist_ok=True)
    for name in ("m.bin", "m.xml"):
        shutil.copy(source / name, directory / name)


def test_interrupted_openvino_reexport_never_loads_a_mixed_pair(tmp_path):
    """OpenVINO reads the weights from the .bin beside the .xml it is
    given, whatever export that .bin came from. An interruption at any
    move of a re-export leaves the old pair, the new one, or no .xml
    (loading fails), never an old file beside a new one."""
    _usable("openvino")
    x = np.random.RandomState(0).randn(4, 8, 8, 3).astype("float32")
    models, outputs, files = {}, {}, {}
    for seed, name in ((1, "old"), (2, "new")):
        keras.utils.set_random_seed(seed)
        models[name] = _small_model()
        deploy.export(models[name], tmp_path / name / "m.xml", "openvino")
        outputs[name] = _openvino_outputs(tmp_path / name / "m.xml", x)
        files[name] = _pair_bytes(tmp_path / name)
    assert np.abs(outputs["old"] - outputs["new"]).max() > 0.1

    def state(directory):
        got = _openvino_outputs(directory / "m.xml", x)
        if not (directory / "m.xml").exists():
            assert got is None  # loading fails, loudly
            return None
        for name in ("old", "new"):
            if _pair_bytes(directory) == files[name]:
                np.testing.assert_allclose(got, outputs[name], atol=1e-6)
                return name
        raise AssertionError(f"{directory} holds a mixed pair")

    # Four moves: old .xml aside, old .bin aside, new .bin in, new .xml in.
    for killed in (False, True):
        for at in range(1, 6):
            work = tmp_path / f"{killed}{at}"
            _copy_pair(tmp_path / "old", work)
            _copy_pair(tmp_path / "new", work / ".staging")
            moves = [
                (str(work / ".staging" / n), str(work / n))
                for n in ("m.bin", "m.xml")
            ]
            with pytest.MonkeyPatch.context() as patch:
                interrupt_moves(patch, at, killed)
                try:
                    _artifact.replace(moves)
                except Interrupted:
                    assert at <= 4
            if at == 5:  # nothing interrupted
                assert state(work) == "new"
            elif killed and at > 1:  # stopped with the old .xml aside
                assert state(work) is None
            else:  # nothing moved yet, or the moves undone
                assert state(work) == "old"

    # Through kn.export: killed at the last move, then exported again.
    target = tmp_path / "target" / "m.xml"
    _copy_pair(tmp_path / "old", target.parent)
    real = _artifact.replace

    def killed_at_the_xml(moves):
        with pytest.MonkeyPatch.context() as patch:
            interrupt_moves(patch, 4, killed=True)
            real(moves)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_artifact, "replace", killed_at_the_xml)
        with pytest.raises(Interrupted):
            deploy.export(models["new"], target, "openvino", overwrite=True)
    assert state(target.parent) is None
    with pytest.raises(FileExistsError, match="overwrite=True"):
        deploy.export(models["new"], target, "openvino")
    report = deploy.export(models["new"], target, "openvino", overwrite=True)
    assert report.verified
    got = _openvino_outputs(target, x)
    np.testing.assert_allclose(got, outputs["new"], atol=1e-5)


# ----------------------------------------------------------------------
# Mixed precision and dict inputs, every format this backend writes
# ----------------------------------------------------------------------
# The spacing of floats at 1 from the formats' mantissa bits.
EPS = {"float16": 2.0**-10, "bfloat16": 2.0**-7}


def _mixed_model(policy):
    """A Conv-BN net built under the global `policy` (restored after)."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        inputs = keras.Input((8, 8, 3))
        x = keras.layers.Conv2D(8, 3, padding="same")(inputs)
        x = kn.BatchNormalization(name="bn")(x)
        x = keras.layers.ReLU()(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
        model = keras.Model(inputs, keras.layers.Dense(3)(x))
    finally:
        keras.config.set_dtype_policy(previous)
    set_random_weights(model.get_layer("bn"), seed=2)
    return model


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("format", deploy.FORMATS)
def test_mixed_precision_exports_and_verifies(tmp_path, format, policy):
    _usable(format)
    compute = policy.removeprefix("mixed_")
    model = _mixed_model(policy)
    sample = np.random.RandomState(0).randn(4, 8, 8, 3).astype("float32")
    report = deploy.export(
        model,
        tmp_path / f"m{SUFFIX[format]}",
        format=format,
        sample=sample,
        **_options(format),
    )
    assert report.verified
    # Where the format or runtime cannot take the dtype, a float32 copy.
    float32 = compute in _formats.FLOAT32_ONLY.get((format, BACKEND), ())
    assert report.dtype == ("float32" if float32 else compute)
    # The tolerance: 16 eps of the model's compute dtype, of the output
    # (the one rule of every check: atol + rtol * max|output|).
    # (The output's maximum, in the compute dtype, is only known to its
    # resolution: a call through another path may round it elsewhere.)
    scale = np.max(np.abs(np.asarray(model.predict(sample, verbose=0))))
    scale = 1 + scale
    np.testing.assert_allclose(
        report.tolerance, 16 * EPS[compute] * scale, rtol=EPS[compute]
    )
    assert report.max_abs_difference <= report.tolerance
    assert compute in report.rule


@pytest.mark.parametrize("format", deploy.FORMATS)
def test_mixed_precision_float32_on_request(tmp_path, format):
    _usable(format)
    report = deploy.export(
        _mixed_model("mixed_float16"),
        tmp_path / f"m{SUFFIX[format]}",
        format=format,
        dtype="float32",
        **_options(format),
    )
    assert report.verified and report.dtype == "float32"
    # Checked against the float16 model: its tolerance.
    assert report.rtol == 16 * EPS["float16"]


def test_float32_model_report_unchanged(tmp_path):
    _usable("tf_saved_model")
    report = deploy.export(_mixed_model("float32"), tmp_path / "m")
    assert report.dtype == "float32" and report.rule.startswith("1e-05 + ")


def test_bad_dtype(tmp_path):
    with pytest.raises(ValueError, match="`dtype`.*Received: dtype='float16'"):
        deploy.export(
            _small_model(), tmp_path / "m.onnx", format="onnx", dtype="float16"
        )
    assert not os.listdir(tmp_path)


def _dict_model():
    """Two same-shaped inputs (a swap changes the output), dict keys that
    sort otherwise than inserted."""
    z = keras.Input((6, 6, 3), name="z")
    a = keras.Input((6, 6, 3), name="a")
    x = keras.layers.Conv2D(4, 3)(z)
    x = kn.BatchNormalization(name="bn")(x)
    y = keras.layers.Conv2D(4, 3)(keras.layers.Rescaling(3.0)(a))
    x = keras.layers.Concatenate()([x, y])
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model({"z": z, "a": a}, keras.layers.Dense(3)(x))
    set_random_weights(model.get_layer("bn"), seed=4)
    return model


@pytest.mark.parametrize("fold", [True, False])
@pytest.mark.parametrize("format", deploy.FORMATS)
def test_dict_inputs_export_and_verify(tmp_path, format, fold):
    _usable(format)
    target = tmp_path / f"m{SUFFIX[format]}"
    # The default sample (a dict), and a dict given as `sample=`.
    report = deploy.export(
        _dict_model(), target, format=format, fold=fold, **_options(format)
    )
    assert report.verified and report.max_abs_difference <= report.tolerance
    rng = np.random.RandomState(1)
    sample = {
        "z": rng.randn(4, 6, 6, 3).astype("float32"),
        "a": rng.randn(4, 6, 6, 3).astype("float32"),
    }
    report = deploy.export(
        _dict_model(),
        target,
        format=format,
        fold=fold,
        sample=sample,
        overwrite=True,
        **_options(format),
    )
    assert report.verified and report.max_abs_difference <= report.tolerance


def test_dict_inputs_swapped_are_caught(tmp_path, monkeypatch):
    # The check ships each input under its place in the structure: an
    # artifact fed the two inputs swapped would differ (here, the
    # check's program swaps them by hand).
    format = _first_file_format()
    real = deploy._describe_inputs

    def swapped(model):
        found = real(model)
        found["names"] = found["names"][::-1]
        found["paths"] = found["paths"][::-1]
        (structure,) = found["structure"]
        found["structure"] = [{"a": structure["z"], "z": structure["a"]}]
        return found

    monkeypatch.setattr(deploy, "_describe_inputs", swapped)
    with pytest.raises(ValueError, match="differs from the (original )?model"):
        deploy.export(
            _dict_model(),
            tmp_path / f"m{SUFFIX[format]}",
            format=format,
            **_options(format),
        )


# ----------------------------------------------------------------------
# FoldAndExport(format=...): the same export from `fit`
# ----------------------------------------------------------------------
def _first_file_format():
    """A format this backend writes with what is installed here."""
    for format in ("onnx", "torch", "litert", "openvino"):
        if (format, BACKEND) not in _formats.REFUSED and not _missing(format):
            return format
    pytest.skip("no file format's exporter and runtime installed here")


def _fit_with(model, callback, epochs=1):
    model.compile("sgd", "mse")
    rng = np.random.RandomState(0)
    x = rng.randn(16, 8, 8, 3).astype("float32")
    y = rng.randn(16, 3).astype("float32")
    model.fit(
        x, y, epochs=epochs, batch_size=8, verbose=0, callbacks=[callback]
    )


def test_fold_and_export_writes_a_verified_file(tmp_path):
    format = _first_file_format()
    target = tmp_path / f"best{SUFFIX[format]}"
    callback = kn.FoldAndExport(
        target, format=format, verbose=0, **_options(format)
    )
    _fit_with(_small_model(), callback)
    assert callback.exported == [str(target)] and not callback.failed
    assert os.listdir(tmp_path) == [target.name]


def test_fold_and_export_tolerance_applies_to_every_format(tmp_path, capsys):
    # One check for every export: FoldAndExport's atol / rtol reach the
    # artifact's check in its runtime, as for the SavedModel.
    format = _first_file_format()
    target = tmp_path / f"best{SUFFIX[format]}"
    callback = kn.FoldAndExport(
        target, format=format, atol=0.25, rtol=0.5, **_options(format)
    )
    _fit_with(_small_model(), callback)
    assert callback.exported == [str(target)]
    assert "0.25 + 0.5 * max|output|" in capsys.readouterr().out


def test_fold_and_export_mismatch_keeps_the_previous_file(
    tmp_path, monkeypatch
):
    format = _first_file_format()
    target = tmp_path / f"best{SUFFIX[format]}"
    target.write_text("earlier export")
    monkeypatch.setattr(_check, "ATOL", -1.0)
    callback = kn.FoldAndExport(
        target, format=format, verbose=0, **_options(format)
    )
    with pytest.warns(UserWarning, match="differs from the (original )?model"):
        _fit_with(_small_model(), callback)
    assert target.read_text() == "earlier export"
    assert callback.exported == [] and len(callback.failed) == 1
    raising = kn.FoldAndExport(
        target, format=format, on_mismatch="raise", **_options(format)
    )
    with pytest.raises(ValueError, match="differs from the (original )?model"):
        _fit_with(_small_model(), raising)
    assert target.read_text() == "earlier export"


def test_fold_and_export_refuses_before_training(tmp_path):
    with pytest.raises(ValueError, match="format='pb'"):
        kn.FoldAndExport(tmp_path / "m.pb", format="pb")
    for format in sorted({f for f, b in _formats.REFUSED if b == BACKEND}):
        with pytest.raises(ValueError, match=f"{BACKEND} backend"):
            kn.FoldAndExport(tmp_path / f"m{SUFFIX[format]}", format=format)
    # The check's tolerance applies to every format.
    assert kn.FoldAndExport(tmp_path / "m.onnx", format="onnx", atol=0.1).atol
    with pytest.raises(ValueError, match="Received: jit_compile=False"):
        kn.FoldAndExport(tmp_path / "m.onnx", format="onnx", jit_compile=False)
    with pytest.raises(TypeError, match="Received: batch_size=2"):
        kn.FoldAndExport(tmp_path / "m", batch_size=2)
    with pytest.raises(TypeError, match="sets `overwrite` itself"):
        kn.FoldAndExport(tmp_path / "m.onnx", format="onnx", overwrite=False)
    # A directory where the file goes: refused when training starts.
    (tmp_path / "m.onnx").mkdir()
    callback = kn.FoldAndExport(tmp_path / "m.onnx", format="onnx")
    with pytest.raises(FileExistsError, match="is a directory"):
        _fit_with(_small_model(), callback)
    with pytest.raises(ValueError, match=r"end with '\.onnx'"):
        _fit_with(
            _small_model(), kn.FoldAndExport(tmp_path / "m", format="onnx")
        )


# ----------------------------------------------------------------------
# The matrix: one public layer per model, every format, this backend
# ----------------------------------------------------------------------
def _conv(**kwargs):
    return keras.layers.Conv2D(4, 3, padding="valid", **kwargs)


# Each public layer after a Conv2D (the wrappers around it; Normalization
# before it), as one cell's layer. A two-input layer takes its second
# input (a style image, a condition vector) from a second model input.
_AFTER_CONV = {
    "BatchNormalization": lambda: kn.BatchNormalization(),
    "BatchNormalization(virtual_batch_size=2)": (
        lambda: kn.BatchNormalization(virtual_batch_size=2)
    ),
    "SyncBatchNormalization": lambda: kn.SyncBatchNormalization(),
    "LayerNormalization": lambda: kn.LayerNormalization(),
    "InstanceNormalization": lambda: kn.InstanceNormalization(),
    "GroupNormalization": lambda: kn.GroupNormalization(groups=2),
    "BatchInstanceNormalization": lambda: kn.BatchInstanceNormalization(),
    "SwitchableNormalization": lambda: kn.SwitchableNormalization(),
    "RMSNormalization": lambda: kn.RMSNormalization(),
    "FilterResponseNormalization": lambda: kn.FilterResponseNormalization(),
    "EvoNormS0": lambda: kn.EvoNormS0(groups=2),
    "EvoNormB0": lambda: kn.EvoNormB0(),
    "LocalResponseNormalization": (
        lambda: kn.LocalResponseNormalization(depth_radius=1)
    ),
    "Affine": lambda: kn.Affine(),
}
_WRAPPING_CONV = {
    "WeightNormalization": kn.WeightNormalization,
    "WeightStandardization": kn.WeightStandardization,
}
_TWO_INPUTS = {
    "AdaptiveInstanceNormalization": (
        (6, 6, 4),
        lambda: kn.AdaptiveInstanceNormalization(),
    ),
    "ConditionalNormalization": (
        (5,),
        lambda: kn.ConditionalNormalization(
            kn.LayerNormalization(center=False, scale=False)
        ),
    ),
}
MATRIX_LAYERS = (
    tuple(_AFTER_CONV) + tuple(_WRAPPING_CONV) + tuple(_TWO_INPUTS)
) + ("Normalization",)


def _norm_model(name):
    """Input(6, 6, 3) -> a block around one layer -> pooled Dense(3)."""
    inputs = [keras.Input((6, 6, 3))]
    x = inputs[0]
    target = None
    if name == "Normalization":
        norm = keras.layers.Normalization()
        norm.adapt(np.random.RandomState(0).randn(32, 6, 6, 3) * 2 + 1)
        x = _conv()(norm(x))
    elif name in _WRAPPING_CONV:
        target = _WRAPPING_CONV[name](_conv())
        x = target(x)
    elif name in _TWO_INPUTS:
        shape, make = _TWO_INPUTS[name]
        inputs.append(keras.Input(shape))
        target = make()
        x = target([_conv()(x), inputs[1]])
    else:
        target = _AFTER_CONV[name]()
        x = target(_conv()(x))
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(3)(x))
    if target is not None:
        set_random_weights(target, seed=3)
    return model


def _public_layers():
    """The names of `keras_norms.__all__` that are Keras layer classes."""
    return {
        name
        for name in kn.__all__
        if isinstance(getattr(kn, name), type)
        and issubclass(getattr(kn, name), keras.layers.Layer)
    }


def test_matrix_covers_every_public_layer():
    # Derived from the public API: a new layer fails here until it has a
    # cell configuration (and the slow matrix regenerates the docs page).
    covered = {name.split("(")[0] for name in MATRIX_LAYERS}
    missing = sorted(_public_layers() - covered)
    assert not missing, (
        f"Public layers without an export-matrix configuration: {missing}. "
        "Add each to _AFTER_CONV, _WRAPPING_CONV or _TWO_INPUTS in "
        "tests/test_deploy.py, run `pytest tests/test_deploy.py --slow -k "
        "matrix` on every backend and `python scripts/export_matrix_table.py "
        "build --write`."
    )
    # Nothing else: the public layers and Keras' adapted Normalization.
    assert covered - _public_layers() == {"Normalization"}


def test_matrix_page_lists_every_matrix_layer():
    # docs/export_matrix.md (generated from the slow matrix's results) has
    # one row per configuration on every backend: a configuration added
    # without regenerating the page fails here, in the fast tier.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "docs", "export_matrix.md")) as f:
        page = f.read()
    tables = {}
    for section in page.split("\n## ")[1:]:
        title, _, body = section.partition("\n")
        rows = [line for line in body.splitlines() if line.startswith("| ")]
        tables[title.strip()] = {row.split("|")[1].strip() for row in rows}
    for backend in ("tensorflow", "jax", "torch"):
        rows = tables[backend] - {"layer"}
        assert rows == set(MATRIX_LAYERS), (
            backend,
            sorted(set(MATRIX_LAYERS) - rows),
            sorted(rows - set(MATRIX_LAYERS)),
        )


def _versions():
    """The versions of Keras, the backends and the runtimes installed."""
    from importlib import metadata

    found = {}
    for name in (
        "keras",
        "tensorflow-cpu",
        "tensorflow",
        "jax",
        "torch",
        "onnxruntime",
        "ai-edge-litert",
        "openvino",
    ):
        try:
            found[name.replace("-cpu", "")] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


@pytest.fixture(scope="module")
def matrix():
    cells = {}
    yield cells
    if not cells:
        return
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    os.makedirs(os.path.join(root, "build"), exist_ok=True)
    path = os.path.join(root, "build", f"export_matrix_{BACKEND}.json")
    previous = {}
    if os.path.exists(path):  # a partial run keeps the other cells
        with open(path) as f:
            previous = json.load(f)
    previous.update(cells)
    previous["_versions"] = _versions()
    with open(path, "w") as f:
        json.dump(previous, f, indent=1, sort_keys=True)


@pytest.mark.slow
@pytest.mark.parametrize("format", deploy.FORMATS)
@pytest.mark.parametrize("layer", MATRIX_LAYERS)
def test_matrix(tmp_path, matrix, layer, format):
    key = f"{layer}|{BACKEND}|{format}"
    if (format, BACKEND) in _formats.REFUSED:
        with pytest.raises(ValueError, match="Received: format=") as refusal:
            deploy.export(
                _norm_model(layer),
                tmp_path / f"m{SUFFIX[format]}",
                format=format,
            )
        matrix[key] = {"result": "refused", "why": str(refusal.value)}
        return
    missing = _missing(format)
    if missing:
        matrix[key] = {"result": "skipped", "why": f"{missing} not installed"}
        pytest.skip(f"{missing} is not installed")
    try:
        try:
            report = deploy.export(
                _norm_model(layer),
                tmp_path / f"m{SUFFIX[format]}",
                format=format,
            )
        except ValueError as e:
            if "Cannot export layer" in str(e):  # a known converter defect
                matrix[key] = {"result": "refused", "why": str(e)}
                return
            if "Pass batch_size=N" not in str(e):
                raise
            # Refused with a dynamic batch, saying to fix the batch: the
            # cell records that, and whether the static batch verifies.
            matrix[key] = {"result": "refused", "why": str(e)}
            key = f"{key}[batch_size=4]"
            report = deploy.export(
                _norm_model(layer),
                tmp_path / f"m{SUFFIX[format]}",
                format=format,
                batch_size=4,
            )
            assert report.static_batch == 4
    except Exception as e:  # recorded, and shown as an expected failure
        why = f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:300]}"
        matrix[key] = {"result": "fails", "why": why}
        pytest.xfail(why)
    matrix[key] = {
        "result": "verified",
        "max_abs_difference": report.max_abs_difference,
        "tolerance": report.tolerance,
        "runtime": report.runtime,
        "static_batch": report.static_batch,
    }
    assert report.max_abs_difference <= report.tolerance
