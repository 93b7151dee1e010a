"""The runtime modules (`keras_norms._runtimes`), their file protocol, and
the one launcher of child processes (`keras_norms._launch`).

Each runtime this backend can write an artifact for (with Keras' own
`model.export`, or `export_in_process` / the TensorFlow child for a
SavedModel) loads it in a fresh process holding that runtime alone, and
must match the Keras model on a batch, for a model of one input, of a list
of inputs, and of a dict of inputs. The launcher's failures (an exit
status, a signal, a timeout) are each a RuntimeError naming what happened.
"""

import importlib.util
import json
import os
import signal
import time

import keras
import numpy as np
import pytest

import keras_norms as kn
from keras_norms import _compat
from keras_norms import _launch
from keras_norms import _runtimes
from keras_norms._runtimes import _protocol
from keras_norms._runtimes import keras_saved_model_export
from tests.helpers import BACKEND

PACKAGE_DIR = os.path.dirname(os.path.abspath(kn.__file__))
SUFFIX = {
    "onnx": ".onnx",
    "litert": ".tflite",
    "openvino": ".xml",
    "torch": ".pt2",
}
# What Keras' `model.export` writes from each backend (and the runtime
# module that reads it); "tf_saved_model" is written by keras_norms.
KERAS_EXPORTS = {
    "tensorflow": ("onnx", "litert", "openvino"),
    "jax": ("onnx",),
    "torch": ("onnx", "openvino", "torch"),
}
# The exporter and the runtime modules each format needs here.
NEEDS = {
    ("onnx", "tensorflow"): ("tf2onnx", "onnxruntime"),
    ("onnx", "jax"): ("jax2onnx", "onnxruntime"),
    ("onnx", "torch"): ("onnxscript", "onnxruntime"),
    ("litert", "tensorflow"): ("ai_edge_litert",),
    ("openvino", "tensorflow"): ("openvino",),
    ("openvino", "torch"): ("openvino",),
    ("torch", "torch"): ("torch",),
}
KINDS = ("single", "list", "dict")
ATOL = 1e-5


def _require(*modules):
    for name in modules:
        if importlib.util.find_spec(name) is None:
            pytest.skip(f"{name} is not installed")


# ----------------------------------------------------------------------
# The protocol (NumPy only)
# ----------------------------------------------------------------------
class _Spec:
    def __init__(self, name):
        self.name = name


def test_describe_inputs_flat_order_and_structure():
    # Dicts are flattened by sorted key (keras.tree.flatten's order) and
    # keep their own key order in the structure.
    signature = [{"b": _Spec("b"), "a": _Spec("a")}, [_Spec("c"), _Spec("")]]
    described = _protocol.describe_inputs(signature)
    assert described["names"] == ["a", "b", "c", ""]
    assert described["structure"] == [{"b": 1, "a": 0}, [2, 3]]
    assert list(described["structure"][0]) == ["b", "a"]
    assert keras.tree.flatten({"b": 1, "a": 2}) == _protocol.flatten(
        {"b": 1, "a": 2}
    )
    # pack is flatten's inverse on the structure.
    values = ["A", "B", "C", "D"]
    assert _protocol.pack(values, described["structure"]) == [
        {"b": "B", "a": "A"},
        ["C", "D"],
    ]


def test_files_round_trip_list_and_dict_structures(tmp_path):
    rng = np.random.RandomState(0)
    nested = [{"b": rng.randn(2, 3), "a": rng.randn(2, 1).astype("f4")}]
    signature = [{"b": _Spec("b"), "a": _Spec("a")}]
    inputs = _protocol.describe_inputs(signature)
    io = str(tmp_path / "io")
    _protocol.write_inputs(io, _protocol.flatten(nested), inputs)
    xs, back = _protocol.read_inputs(io)
    assert back == json.loads(json.dumps(inputs))
    packed = _protocol.pack(xs, back["structure"])
    for key in ("a", "b"):
        np.testing.assert_array_equal(packed[0][key], nested[0][key])
        assert packed[0][key].dtype == nested[0][key].dtype
    outputs = [np.arange(6.0).reshape(2, 3), np.ones(2, "int32")]
    _protocol.write_outputs(io, outputs, {"version": "1", "static_batch": 2})
    got, meta = _protocol.read_outputs(io)
    assert meta == {"version": "1", "static_batch": 2}
    for g, o in zip(got, outputs):
        np.testing.assert_array_equal(g, o)
        assert g.dtype == o.dtype


def test_object_input_refused(tmp_path):
    with pytest.raises(TypeError, match="Input 0 is not a numeric array"):
        _protocol.write_inputs(str(tmp_path / "io"), [{"a": np.ones(2)}])
    assert not os.listdir(tmp_path)


def test_output_order_by_number():
    keys = ["output_10", "output_2", "output_0", "output_1"]
    assert sorted(keys, key=_protocol.output_order) == [
        "output_0",
        "output_1",
        "output_2",
        "output_10",
    ]


def test_inputs_matched_by_name_else_by_position():
    xs = ["xa", "xb"]
    # By name: the artifact lists b first.
    assert _protocol.in_artifact_order(xs, ["a", "b"], ["b", "a"]) == [
        "xb",
        "xa",
    ]
    # Names the artifact did not keep: by position.
    assert _protocol.in_artifact_order(xs, ["a", "b"], ["in0", "in1"]) == xs
    assert _protocol.in_artifact_order(xs, None, ["b", "a"]) == xs
    with pytest.raises(ValueError, match=r"takes 1 input\(s\)"):
        _protocol.in_artifact_order(xs, ["a", "b"], ["a"])


class _Doubling(_protocol.Runtime):
    def __init__(self, static):
        super().__init__("0", ["x"], static, None)
        self.batches = []

    def run(self, xs):
        self.batches.append(len(xs[0]))
        return [2 * xs[0]]


def test_run_batches_in_slices_of_a_static_batch():
    x = np.arange(6.0)[:, None]
    runtime = _Doubling(static=2)
    (out,) = _protocol.run_batches(runtime, [x])
    np.testing.assert_array_equal(out, 2 * x)
    assert runtime.batches == [2, 2, 2]
    dynamic = _Doubling(static=None)
    _protocol.run_batches(dynamic, [x])
    assert dynamic.batches == [6]
    with pytest.raises(ValueError, match="not a multiple"):
        _protocol.run_batches(_Doubling(static=4), [x])


def test_run_batches_each_batch_as_one_call():
    x = np.arange(10.0)[:, None]
    runtime = _Doubling(static=None)
    (out,) = _protocol.run_batches(runtime, [x], [4, 1, 5])
    np.testing.assert_array_equal(out, 2 * x)
    assert runtime.batches == [4, 1, 5]
    # A static batch takes only batches of its size.
    assert _protocol.takes_batches(_Doubling(static=5), [5, 5])
    assert not _protocol.takes_batches(_Doubling(static=1), [4, 1, 5])
    assert _protocol.takes_batches(runtime, [4, 1, 5])
    for batches in ([4, 1], [4, 0, 6], [-1, 11]):
        with pytest.raises(ValueError, match=r"Received: batches="):
            _protocol.run_batches(runtime, [x], batches)
        with pytest.raises(ValueError, match=r"Received: batches="):
            _runtimes.run_in_child("onnx", "m.onnx", [x], batches=batches)


def test_outputs_of_variants_round_trip(tmp_path):
    io = str(tmp_path / "io")
    outputs = [np.ones((2, 3), "float32")]
    default = [np.full((2, 3), 2.0, "float32")]
    _protocol.write_outputs(
        io,
        outputs,
        {"version": "1", "static_batch": None},
        {"default": (default, {"precision": "bf16"})},
    )
    got, meta = _protocol.read_outputs(io)
    assert len(got) == 1
    np.testing.assert_array_equal(got[0], outputs[0])
    variant = meta["variants"]["default"]
    assert variant["precision"] == "bf16"
    np.testing.assert_array_equal(variant["outputs"][0], default[0])


@pytest.mark.parametrize("name", ["threads", "batch"])
@pytest.mark.parametrize("value", [0, -1, 1.5, True, "2"])
def test_bad_threads_or_batch(name, value):
    with pytest.raises(ValueError, match=rf"Received: {name}="):
        _protocol.check_options(**{"threads": None, "batch": None, name: value})
    with pytest.raises(ValueError, match=rf"Received: {name}="):
        _runtimes.run_in_child("onnx", "m.onnx", [np.ones(2)], **{name: value})


def test_unknown_format():
    with pytest.raises(ValueError, match="Received: format='tflite'"):
        _runtimes.module_name("tflite")


# ----------------------------------------------------------------------
# The launcher
# ----------------------------------------------------------------------
def _program(tmp_path, name, source):
    """A module `name` in `tmp_path`, and the env that finds it."""
    (tmp_path / f"{name}.py").write_text(source)
    path = os.pathsep.join(
        p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p
    )
    return {"PYTHONPATH": path}


def test_child_exit_status(tmp_path):
    env = _program(
        tmp_path,
        "kn_exit",
        "import sys\nsys.stderr.write('bad input here\\n')\nsys.exit(3)\n",
    )
    with pytest.raises(RuntimeError, match="exited with status 3") as info:
        _launch.run_module("kn_exit", env=env, what="The probe")
    assert isinstance(info.value, _launch.ChildProcessFailed)
    assert info.value.returncode == 3
    message = str(info.value)
    assert message.startswith("The probe failed")
    assert message.rstrip().endswith("bad input here")


@pytest.mark.parametrize(
    "number, name", [(signal.SIGSEGV, "SIGSEGV"), (signal.SIGKILL, "SIGKILL")]
)
def test_child_killed_by_signal(tmp_path, number, name):
    env = _program(
        tmp_path,
        "kn_signal",
        "import faulthandler, os\nfaulthandler.disable()\n"
        f"os.kill(os.getpid(), {int(number)})\n",
    )
    with pytest.raises(
        RuntimeError, match=rf"killed by signal {int(number)} \({name}\)"
    ) as info:
        _launch.run_module("kn_signal", env=env)
    assert info.value.returncode == -int(number)


def test_child_past_its_timeout_is_stopped_with_what_it_started(tmp_path):
    # The child starts a grandchild that holds its stderr open; both are
    # stopped, and the error comes at the timeout, not when they end.
    pid_file = tmp_path / "grandchild.pid"
    env = _program(
        tmp_path,
        "kn_sleep",
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', "
        "'import time; time.sleep(120)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "sys.stderr.write('started\\n'); sys.stderr.flush()\n"
        "time.sleep(120)\n",
    )
    start = time.monotonic()
    with pytest.raises(
        RuntimeError, match=r"did not finish within 3 s: the child process"
    ) as info:
        _launch.run_module("kn_sleep", env=env, timeout=3)
    assert time.monotonic() - start < 60
    assert info.value.returncode is None
    assert "started" in str(info.value)
    grandchild = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _running(grandchild):
        time.sleep(0.1)
    assert not _running(grandchild)


def _running(pid):
    """Whether `pid` runs (a zombie, waiting to be reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("timeout", [0, -1, "10", None])
def test_bad_timeout(timeout):
    with pytest.raises(ValueError, match="Received: timeout="):
        _launch.run_module("json.tool", timeout=timeout)


_PROBE = """
import json, sys
import keras_norms
report = {
    "modules": sorted(sys.modules),
    "path": list(keras_norms.__path__),
    "argv": sys.argv[1:],
}
if "keras" in sys.modules:
    import keras
    report["backend"] = keras.backend.backend()
print(json.dumps(report))
"""


def test_bare_child_never_runs_keras_norms_init(tmp_path):
    env = _program(tmp_path, "kn_probe", _PROBE)
    out = _launch.run_module("kn_probe", ["a b", 1], env=env)
    report = json.loads(out.strip().splitlines()[-1])
    assert report["argv"] == ["a b", "1"]
    assert [m for m in report["modules"] if m.startswith("keras")] == [
        "keras_norms"
    ]
    for framework in ("tensorflow", "jax", "torch"):
        assert framework not in report["modules"]
    # This checkout's package, whatever the child's sys.path holds.
    assert report["path"] == [PACKAGE_DIR]


def test_full_child_imports_keras_norms_with_the_env_backend(tmp_path):
    env = _program(tmp_path, "kn_probe", _PROBE)
    env["KERAS_BACKEND"] = "tensorflow"
    out = _launch.run_module("kn_probe", env=env, bare=False)
    report = json.loads(out.strip().splitlines()[-1])
    assert report["backend"] == "tensorflow"
    assert "keras_norms.layers" in report["modules"]
    assert report["path"] == [PACKAGE_DIR]


def test_runtime_that_cannot_load_says_why(tmp_path):
    _require("onnxruntime")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx file")
    with pytest.raises(RuntimeError, match="exited with status 1") as info:
        _runtimes.run_in_child("onnx", broken, [np.ones((2, 3), "f4")])
    message = str(info.value)
    assert "broken.onnx" in message and "onnx_runtime" in message
    assert "Traceback" in message  # the child's own error, quoted


# ----------------------------------------------------------------------
# Each runtime on this backend's artifacts
# ----------------------------------------------------------------------
def _model(kind):
    keras.utils.set_random_seed(1)
    if kind == "single":
        inputs = keras.Input((6,), name="x")
        x = keras.layers.Dense(5, activation="relu")(inputs)
        return keras.Model(inputs, keras.layers.Dense(4)(x))
    a = keras.Input((3,), name="a")
    b = keras.Input((2,), name="b")
    if kind == "list":  # two outputs, too
        return keras.Model(
            [a, b], [keras.layers.Dense(4)(a), keras.layers.Dense(2)(b)]
        )
    # A dict whose keys are not in sorted order.
    joined = keras.layers.Concatenate()([a, keras.layers.Dense(3)(b)])
    return keras.Model({"b": b, "a": a}, keras.layers.Dense(4)(joined))


def _batch(model, n=5):
    rng = np.random.RandomState(2)
    signature = _compat.input_signature(model)
    return keras.tree.map_structure(
        lambda spec: rng.randn(n, *spec.shape[1:]).astype("float32"),
        signature,
    )


def _case(kind):
    """The model, its arguments, flat inputs, description and outputs."""
    model = _model(kind)
    args = _batch(model)
    expected = model(*args)  # also builds what ONNX export wants called
    expected = [
        keras.ops.convert_to_numpy(e) for e in keras.tree.flatten(expected)
    ]
    described = _protocol.describe_inputs(_compat.input_signature(model))
    return model, _protocol.flatten(args), described, expected


def _assert_matches(got, expected):
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.shape == e.shape
        np.testing.assert_allclose(g, e, atol=ATOL, rtol=ATOL)


def _assert_runtime_alone(meta, format):
    modules = meta["modules"]
    assert [m for m in modules if m.startswith("keras_norms")] == [
        "keras_norms",
        "keras_norms._runtimes",
        "keras_norms._runtimes._protocol",
    ]
    if format == "tf_saved_model":
        return  # `import tensorflow` itself imports Keras (and what it finds)
    assert "keras" not in modules
    # onnxruntime, LiteRT and OpenVINO need none of the frameworks.
    others = {"tensorflow", "jax", "torch"} - {format}
    assert not others & set(modules), others & set(modules)


def _keras_export(model, format, tmp_path):
    _require(*NEEDS[(format, BACKEND)])
    path = str(tmp_path / f"m{SUFFIX[format]}")
    model.export(path, format=format, verbose=False)
    return path


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("format", KERAS_EXPORTS[BACKEND])
def test_runtime_matches_keras_export(tmp_path, format, kind):
    model, xs, described, expected = _case(kind)
    path = _keras_export(model, format, tmp_path)
    got, meta = _runtimes.run_in_child(
        format, path, xs, described, report_modules=True
    )
    _assert_matches(got, expected)
    _assert_runtime_alone(meta, format)
    assert meta["version"]
    # Keras' torch exporter traces a batch of 1 (no dynamic_shapes): the
    # child ran the 5 samples one at a time, as the program declares.
    assert meta["static_batch"] == (1 if format == "torch" else None)
    assert len(meta["input_names"]) == len(xs)


@pytest.mark.parametrize("kind", KINDS)
def test_tf_runtime_matches_saved_model(tmp_path, kind):
    _require("tensorflow")
    model, xs, described, expected = _case(kind)
    path = str(tmp_path / "saved")
    if BACKEND == "torch":
        # The torch backend's path: the TensorFlow child exports, and runs
        # the SavedModel with tf_runtime.
        source = str(tmp_path / "m.keras")
        model.save(source)
        got, meta = keras_saved_model_export.export_in_child(
            source, path, True, xs, described
        )
        assert meta["xla"] is True
        _assert_matches(got, expected)
        if kind != "single":
            return
    else:
        from keras_norms.saved_model import export_in_process

        export_in_process(model, path, jit_compile=kind != "list")
    got, meta = _runtimes.run_in_child(
        "tf_saved_model", path, xs, described, report_modules=True
    )
    _assert_matches(got, expected)
    _assert_runtime_alone(meta, "tf_saved_model")
    # The Keras that `import tensorflow` imports runs on TensorFlow, not
    # on this process's backend.
    assert "keras.src.backend.torch" not in meta["modules"]
    assert meta["xla"] is (BACKEND == "torch" or kind != "list")
    assert sorted(meta["input_names"]) == sorted(described["names"])


# In this process: the objects' interface, `batch=` and `threads=`.
def test_onnx_runtime_in_process(tmp_path):
    model, xs, described, expected = _case("dict")
    path = _keras_export(model, "onnx", tmp_path)
    from keras_norms._runtimes import onnx_runtime

    runtime = onnx_runtime.load(path, threads=1, batch=5, inputs=described)
    assert runtime.input_names == ["a", "b"]
    assert runtime.static_batch is None
    _assert_matches(runtime.run(xs), expected)
    # Without the model's names: by position (the artifact's order here).
    _assert_matches(onnx_runtime.load(path).run(xs), expected)


@pytest.mark.parametrize("format", ["openvino", "litert"])
def test_batch_fixes_a_static_batch(tmp_path, format):
    if format not in KERAS_EXPORTS[BACKEND]:
        pytest.skip(f"Keras writes no {format} from {BACKEND}")
    model, xs, described, expected = _case("list")
    path = _keras_export(model, format, tmp_path)
    got, meta = _runtimes.run_in_child(
        format, path, xs, described, threads=1, batch=5
    )
    assert meta["static_batch"] == 5
    _assert_matches(got, expected)
    # A batch the artifact is not fixed to now: a clear error.
    with pytest.raises(RuntimeError, match="exited with status"):
        _runtimes.run_in_child(
            format, path, [x[:4] for x in xs], described, batch=3
        )


def test_openvino_precision_option(tmp_path):
    if "openvino" not in KERAS_EXPORTS[BACKEND]:
        pytest.skip(f"Keras writes no openvino from {BACKEND}")
    model, xs, described, expected = _case("single")
    path = _keras_export(model, "openvino", tmp_path)
    got, _ = _runtimes.run_in_child(
        "openvino", path, xs, described, options={"precision": "f32"}
    )
    _assert_matches(got, expected)
    from keras_norms._runtimes import openvino_runtime

    with pytest.raises(ValueError, match="Received: precision='fp32'"):
        openvino_runtime.load(path, precision="fp32")


def test_openvino_default_precision_variant(tmp_path):
    # The artifact compiled twice in one child: in f32 (the outputs) and
    # in the CPU plugin's default precision (the variant "default"), each
    # saying which precision the plugin runs.
    if "openvino" not in KERAS_EXPORTS[BACKEND]:
        pytest.skip(f"Keras writes no openvino from {BACKEND}")
    model, xs, described, expected = _case("single")
    path = _keras_export(model, "openvino", tmp_path)
    got, meta = _runtimes.run_in_child(
        "openvino", path, xs, described, options={"also_default": True}
    )
    _assert_matches(got, expected)
    assert meta["precision"] == "f32"
    import openvino as ov

    plugin = ov.Core().compile_model(path, "CPU")
    default = plugin.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    variant = meta["variants"]["default"]
    assert variant["precision"] == default
    reference = np.asarray(plugin(xs)[plugin.outputs[0]])
    np.testing.assert_array_equal(variant["outputs"][0], reference)


@pytest.mark.parametrize("format", KERAS_EXPORTS[BACKEND])
def test_batches_of_several_sizes(tmp_path, format):
    # Each batch runs as one call; a program fixed to one batch size
    # (Keras' torch exporter traces a batch of 1) is not run, and its
    # meta says its batch.
    model, xs, described, expected = _case("list")
    path = _keras_export(model, format, tmp_path)
    got, meta = _runtimes.run_in_child(
        format, path, xs, described, batches=[1, 4]
    )
    if format == "torch":
        assert meta["static_batch"] == 1 and got == []
        return
    assert meta["static_batch"] is None
    _assert_matches(got, expected)


@pytest.mark.skipif(BACKEND != "torch", reason="torch.export only")
def test_torch_program_failing_on_its_batch_is_an_error(tmp_path):
    # A program traced with a batch of 1 cannot run 2 samples at once:
    # asked for batch=2, the runtime refuses instead of re-running row by
    # row.
    model, xs, described, _ = _case("single")
    path = _keras_export(model, "torch", tmp_path)
    from keras_norms._runtimes import torch_runtime

    with pytest.raises(ValueError, match="static batch size of 1"):
        torch_runtime.load(path, batch=2, inputs=described)
    runtime = torch_runtime.load(path, inputs=described)
    with pytest.raises(Exception, match="size"):
        runtime.run([x[:2] for x in xs])
