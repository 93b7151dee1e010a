"""Export a (BatchNorm-folded) model as an XLA-compiled TensorFlow SavedModel.

The SavedModel's `serving_default` signature runs `model(x, training=False)`
as one `tf.function(jit_compile=True)`, so TensorFlow compiles the whole
inference graph with XLA. It loads with `tf.saved_model.load` alone: no
Keras and no keras_norms are needed to serve it.

How each backend writes it:

- TensorFlow: `keras.export.ExportArchive` with a
  `tf.function(jit_compile=True)` endpoint.
- JAX: `keras.export.ExportArchive` converts the model with `jax2tf`
  (endpoint `serve_jax2tf`, without gradients: serving needs none, and a
  converted gradient is a `tf.custom_gradient` that a SavedModel does not
  store, so TensorFlow would warn "Importing a function ... with ops with
  unsaved custom gradients" on loading); `serving_default` is a
  `tf.function(jit_compile=True)` calling it.
- torch: Keras' SavedModel export needs `torch_xla`, so the model is saved as
  a `.keras` file and re-loaded and exported by a child Python process under
  the TensorFlow backend. Custom layers in the model must then be
  registered (`keras.saving.register_keras_serializable`) in a module that
  the child imports; keras_norms layers are.

Every backend needs TensorFlow installed to write and read a SavedModel
(`pip install "keras_norms[tensorflow]" -c constraints.txt`); without it
the export stops at once with a `ModuleNotFoundError` saying so.
"""

import importlib.util
import inspect
import json
import os
import shutil
import subprocess
import sys
import tempfile

import keras
import numpy as np

from keras_norms import _compat
from keras_norms import _validation
from keras_norms import inference

__all__ = ["export_saved_model", "run_saved_model"]

SERVING_KEY = "serving_default"
# Written into every export, so `overwrite=True` recognizes one of ours.
MARKER = "keras_norms_export.json"
# What a SavedModel directory holds: `overwrite=True` also replaces a
# directory holding nothing else (an export written before the marker).
_SAVED_MODEL_ENTRIES = {
    "saved_model.pb",
    "saved_model.pbtxt",
    "fingerprint.pb",
    "variables",
    "assets",
    MARKER,
}
_INSTALL_HINT = 'pip install "keras_norms[tensorflow]" -c constraints.txt'


def require_tensorflow(what):
    """Raise a `ModuleNotFoundError` saying what to install, if TF is absent.

    Checked before any work (on torch, before the child process starts).
    """
    if importlib.util.find_spec("tensorflow") is None:
        raise ModuleNotFoundError(
            f"{what} needs TensorFlow, also on the "
            f"{keras.backend.backend()} backend (the SavedModel is written "
            f"and read by TensorFlow). Install the extra: {_INSTALL_HINT} "
            "(or `pip install tensorflow-cpu`).",
            name="tensorflow",
        )


def export_saved_model(
    model,
    filepath,
    *,
    fold=True,
    jit_compile=True,
    overwrite=False,
    sample=None,
    atol=None,
    rtol=None,
    on_mismatch="raise",
    verbose="auto",
    dtype=None,
):
    """Write `model` as a TensorFlow SavedModel with an XLA-compiled server.

    The `serving_default` signature computes `model(x, training=False)`;
    with `fold=True` the model is first put in its inference form by
    `keras_norms.inference.optimize_for_inference` (BatchNormalization
    folded, WeightNormalization / WeightStandardization unwrapped, a
    leading `keras.layers.Normalization` folded into the first layer
    where float32 keeps it exact). The batch size stays dynamic (it is
    whatever the model's inputs declare, `None` for `keras.Input`).
    Reload it anywhere with TensorFlow alone. A signature takes keyword
    arguments only, named after the model's input (read the name from
    the signature); the restored `serving_default` function takes the
    input positionally:

    ```python
    import numpy as np
    import tensorflow as tf

    loaded = tf.saved_model.load(filepath)
    serve = loaded.signatures["serving_default"]
    ((name, spec),) = serve.structured_input_signature[1].items()
    x = np.zeros((2, *spec.shape[1:]), spec.dtype.as_numpy_dtype)  # a batch
    outputs = serve(**{name: tf.constant(x)})["output_0"]
    outputs = loaded.serving_default(x)  # the same, positionally
    ```

    Works on every backend, but always needs TensorFlow installed
    (`pip install "keras_norms[tensorflow]" -c constraints.txt`). On JAX
    the model goes through `jax2tf` without gradients (the SavedModel
    serves inference only: asking it for a gradient fails). On torch
    the export runs in a child process under the TensorFlow backend.

    **Nothing is lost.** The SavedModel is written into a temporary
    directory beside `filepath`, checked, and only then renamed into
    place. `overwrite=True` replaces only an earlier export (a directory
    holding this function's marker file, `keras_norms_export.json`, or
    only SavedModel files), as one unit (`replace_artifact`): the old
    export is moved aside, the new one moved in, and the old one deleted
    after that succeeded. A failure at any step leaves `filepath` as it
    was; a process killed between the two moves leaves no directory at
    `filepath` (never a mix of old and new files), the old export in a
    hidden `.NAME.*.old` folder beside it.

    **Checked.** The written SavedModel, run by TensorFlow, is compared
    with `model(sample, training=False)` (the original model, before any
    folding), output by output:

        max |exported - original| <= atol + rtol * max |original|

    (so float32 reassociation passes on outputs of any scale, a wrong
    export does not). With `fold=True` the optimized Keras model is
    checked the same way first. A mixed precision model (`mixed_float16`,
    `mixed_bfloat16`) is exported in its dtypes (`dtype="float32"`
    exports a float32 copy instead) and checked with a tolerance that
    follows its compute dtype (see `optimize_for_inference`).

    Args:
        model: A built Keras model. With `fold=True` it must be a
            Sequential or functional model; subclassed models need
            `fold=False`.
        filepath: Directory to write the SavedModel to. Its parent is
            created if needed.
        fold: Apply `optimize_for_inference` first (the model itself is
            not modified).
        jit_compile: Compile the serving function with XLA.
        overwrite: Replace an existing export at `filepath` (never a file,
            nor a directory holding anything else).
        sample: Input batch for the check, in the structure the model
            takes (an array, or a list, dict or nested structure of
            arrays); `None` builds a deterministic batch of 4 from the
            model's inputs (see `optimize_for_inference`).
        atol: Absolute part of the check's tolerance; `None`: `1e-5` for
            a float32 model, `16 * eps` of a float16 (`eps = 2**-10`) or
            bfloat16 (`eps = 2**-7`) compute dtype.
        rtol: Part of the check's tolerance relative to the largest
            absolute output of the original model; `None`: `1e-4`, or
            `16 * eps` as for `atol`.
        on_mismatch: `"raise"`: a failed check raises a `ValueError`
            (`keras_norms.inference.OutputMismatchError`) with the
            figures, and `filepath` is left as it was. `"warn"`: it warns
            with the figures and the export is kept at `filepath`.
        verbose: `"auto"` or `1` prints the inference report (with
            `fold=True`) and one line with the path and the check's
            figure; `0` is silent.
        dtype: `None` exports the model in its own dtypes; `"float32"`
            exports a float32 copy of a mixed precision model (policies
            float32, weights cast), checked against the model as it is.

    Returns:
        `filepath`.

    Raises:
        FileExistsError: If `filepath` is a file, or exists and
            `overwrite=False`, or is a directory holding anything other
            than an earlier export.
        ModuleNotFoundError: If TensorFlow is not installed.
        TypeError: If `model` is not a `keras.Model`.
        ValueError: If the model is not built (or, with `fold=True`, is a
            subclassed model whose graph cannot be read), or, with
            `on_mismatch="raise"`, if the check fails.
    """
    return export(
        model,
        filepath,
        fold=fold,
        jit_compile=jit_compile,
        overwrite=overwrite,
        sample=sample,
        atol=atol,
        rtol=rtol,
        on_mismatch=on_mismatch,
        verbose=verbose,
        dtype=dtype,
    ).filepath


class ExportResult:
    """What `export` wrote: `filepath`, `check` (an `inference.Check`) and
    `dtype` (the compute dtype of the exported model)."""

    def __init__(self, filepath, check, dtype="float32"):
        self.filepath = filepath
        self.check = check
        self.dtype = dtype

    def summary(self):
        """One line: where it is, and how far it is from the model."""
        return f"Exported {self.filepath}: {self.check}."


def export(
    model,
    filepath,
    *,
    fold=True,
    jit_compile=True,
    overwrite=False,
    sample=None,
    atol=None,
    rtol=None,
    on_mismatch="raise",
    verbose="auto",
    dtype=None,
):
    """`export_saved_model`, returning an `ExportResult` (for callbacks)."""
    filepath = os.fspath(filepath)
    verbose = _validation.check_verbose(verbose)
    atol, rtol, on_mismatch = inference.check_tolerance(atol, rtol, on_mismatch)
    target = check_target(filepath, overwrite)
    if not isinstance(model, keras.Model) or not model.built:
        error = TypeError if not isinstance(model, keras.Model) else ValueError
        raise error(
            "Argument `model` must be a built keras.Model (call it once, or "
            f"create it with an Input). Received: model={model!r}"
        )
    if dtype not in (None, "float32"):
        raise ValueError(
            "Argument `dtype` must be None (export the model in its own "
            'dtype) or "float32" (export a float32 copy of a mixed '
            f"precision model). Received: dtype={dtype!r}"
        )
    require_tensorflow("SavedModel export")
    atol, rtol = inference.tolerances(model, atol, rtol)
    exported = model
    if fold:
        exported, report = inference.optimize_unchecked(model)
    sample, expected = inference.reference_outputs(model, sample)
    if fold:
        report.check = inference.Check.run(
            inference.model_outputs(exported, sample),
            expected,
            atol=atol,
            rtol=rtol,
            what=f"The optimized model '{exported.name}'",
        )
        if verbose:
            print(report)
        report.check.enforce(
            on_mismatch,
            " Nothing was exported (pass fold=False to export the model as "
            "it is)."
            if on_mismatch == "raise"
            else "",
        )
    if dtype == "float32":
        exported = inference.float32_copy(exported)
    # The flattened inputs (dict keys sorted, as TensorFlow flattens the
    # serving function's input structure).
    inputs = [np.asarray(x) for x in keras.tree.flatten(sample)]
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(
        prefix=f".{os.path.basename(target)}.", suffix=".tmp", dir=parent
    )
    try:
        try:
            got = _write_and_run(exported, staging, jit_compile, inputs)
        except Exception as e:
            _explain_layout_error(e, jit_compile)
            raise
        with open(os.path.join(staging, MARKER), "w") as f:
            json.dump(
                {
                    "format": "keras_norms SavedModel export",
                    "backend": keras.backend.backend(),
                    "fold": bool(fold),
                    "jit_compile": bool(jit_compile),
                },
                f,
            )
        check = inference.Check.run(
            got,
            expected,
            atol=atol,
            rtol=rtol,
            what="The SavedModel",
        )
        if on_mismatch == "raise":
            check.enforce(
                "raise",
                f" Nothing was written to {filepath!r} (an earlier export "
                "there is unchanged); pass on_mismatch='warn' to keep it.",
            )
        check_target(filepath, overwrite)  # again: it may have changed
        replace_artifact([(staging, target)])
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    result = ExportResult(filepath, check, inference.compute_dtype(exported))
    if not check.passed:  # on_mismatch="warn"
        check.enforce(
            "warn", f" The export is kept at {os.path.abspath(filepath)!r}."
        )
    if verbose:
        print(result.summary())
    return result


_NCHW_REFUSED = ("only supports the NHWC", "only supports NHWC")


def _explain_layout_error(error, jit_compile):
    """Raise a clear error for TensorFlow's CPU refusing NCHW op by op."""
    if jit_compile or not any(s in str(error) for s in _NCHW_REFUSED):
        return
    raise ValueError(
        "The SavedModel runs a channels-first (NCHW) convolution op by op "
        "(jit_compile=False), and this TensorFlow's CPU kernels accept only "
        "NHWC outside XLA: oneDNN, which adds NCHW kernels, is off "
        "(TensorFlow turns it on by default only on CPUs with "
        "AVX-512-class features; TF_ENABLE_ONEDNN_OPTS=0 turns it off). "
        "Export with jit_compile=True (XLA runs NCHW on any CPU), or build "
        "the model channels_last. Received: jit_compile=False"
    ) from error


def _write_and_run(model, directory, jit_compile, inputs):
    """Write the SavedModel into `directory`; its outputs on `inputs`."""
    if keras.backend.backend() == "torch":
        return _export_in_child(model, directory, jit_compile, inputs)
    export_in_process(model, directory, jit_compile)
    outputs, _ = load_and_run(directory, inputs)
    return outputs


def _is_export(path, entries):
    """Whether directory `path` (with `entries`) is an earlier export."""
    if MARKER in entries:
        return True
    return "saved_model.pb" in entries and set(entries) <= _SAVED_MODEL_ENTRIES


def check_target(filepath, overwrite):
    """The absolute target path, or an error if exporting there is unsafe.

    Refuses a file, an existing path without `overwrite`, a directory
    holding anything but an earlier export, and the working directory or
    one of its parents.
    """
    target = os.path.abspath(filepath)
    if not os.path.lexists(target):
        return target
    if not os.path.isdir(target) or os.path.islink(target):
        raise FileExistsError(
            f"The export path {filepath!r} is an existing file, not a "
            "directory: a SavedModel is a directory. Choose another path. "
            f"Received: filepath={filepath!r}"
        )
    if not overwrite:
        raise FileExistsError(
            f"The export path {filepath!r} already exists. Pass "
            "overwrite=True to replace an earlier export there, or choose "
            f"another path. Received: filepath={filepath!r}"
        )
    cwd = os.path.abspath(os.getcwd())
    if cwd == target or cwd.startswith(target.rstrip(os.sep) + os.sep):
        raise FileExistsError(
            f"The export path {filepath!r} is the working directory or one "
            "of its parents; an export replaces its directory as a whole. "
            "Export into a new subdirectory, e.g. filepath='exported'. "
            f"Received: filepath={filepath!r}"
        )
    entries = os.listdir(target)
    if entries and not _is_export(target, entries):
        others = sorted(set(entries) - _SAVED_MODEL_ENTRIES)[:5]
        raise FileExistsError(
            f"The export path {filepath!r} is a directory holding files "
            f"that are not a SavedModel export ({', '.join(others)}); "
            "overwrite=True replaces only an earlier export. Export into a "
            "new or empty directory (e.g. a subdirectory), or remove it "
            f"yourself. Received: filepath={filepath!r}"
        )
    return target


def replace_artifact(moves):
    """Move a staged export into place as one unit.

    `moves` lists `(staged, target)` pairs, the path a runtime opens last
    (OpenVINO's `.xml` after its `.bin`; a SavedModel directory alone).
    A single file replaces its target atomically (`os.replace`).
    Otherwise every existing target is first moved aside into a new
    hidden folder beside it (`.NAME.*.old`), the opened one first; then
    the staged paths are moved in, the opened one last; then the folder
    aside is removed. So at every moment the opened path is either
    absent (loading fails) or part of a complete export, the old one or
    the new one: an interruption never leaves a loadable mix of old and
    new files.

    On an error the new paths are moved back and the old ones restored.
    If that fails too (the disk is gone), the previous export is left in
    the folder aside, and the error says where: nothing but an earlier
    export, once the new one is in place, is ever removed.

    Args:
        moves: A list of `(staged, target)` path pairs, the opened one
            last.

    Raises:
        OSError: A move failed (after the rollback above).
    """
    staged, opened = moves[-1]
    if len(moves) == 1 and not os.path.isdir(staged):
        os.replace(staged, opened)
        return
    present = [t for _, t in reversed(moves) if os.path.lexists(t)]
    aside = None
    if present:
        aside = tempfile.mkdtemp(
            prefix=f".{os.path.basename(opened)}.",
            suffix=".old",
            dir=os.path.dirname(opened),
        )
    set_aside, placed = [], []
    try:
        for target in present:  # the opened one first
            old = os.path.join(aside, os.path.basename(target))
            os.replace(target, old)
            set_aside.append((old, target))
        for source, target in moves:  # the opened one last
            os.replace(source, target)
            placed.append((source, target))
    except BaseException as error:
        _roll_back(placed, set_aside, aside, error)
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def _roll_back(placed, set_aside, aside, error):
    """Undo `replace_artifact`'s moves; on failure, say where the old is."""
    try:
        for source, target in reversed(placed):
            os.replace(target, source)
        for old, target in reversed(set_aside):  # the opened one last
            os.replace(old, target)
    except OSError:
        error.add_note(
            f"The previous export could not be moved back; it is kept in "
            f"{aside!r}."
        )
        return
    if aside is not None:
        os.rmdir(aside)


def _input_signature(model):
    import tensorflow as tf

    def to_spec(spec):
        return tf.TensorSpec(
            shape=spec.shape, dtype=spec.dtype, name=getattr(spec, "name", None)
        )

    return keras.tree.map_structure(to_spec, _compat.input_signature(model))


def export_in_process(model, filepath, jit_compile):
    """Export from the TensorFlow or JAX backend, in this process.

    On JAX, `jax2tf` converts without gradients (`with_gradient=False`):
    with them, each converted function carries a `tf.custom_gradient`
    that a SavedModel does not store, and TensorFlow warns when it loads
    one ("Importing a function ... with ops with unsaved custom
    gradients"). A serving signature needs no gradient.
    """
    import tensorflow as tf

    signature = _input_signature(model)

    def serve(*args):
        return model(*args, training=False)

    serve.__signature__ = inspect.Signature(
        [
            inspect.Parameter(f"inputs_{i}", inspect.Parameter.POSITIONAL_ONLY)
            for i in range(len(signature))
        ]
    )
    archive = keras.export.ExportArchive()
    archive.track(model)
    backend = keras.backend.backend()
    if backend == "tensorflow":
        endpoint = tf.function(
            serve,
            input_signature=signature,
            jit_compile=jit_compile,
            autograph=False,
        )
        endpoint.get_concrete_function()
        archive.add_endpoint(SERVING_KEY, endpoint)
    elif backend == "jax":
        jax2tf_kwargs = {"with_gradient": False}
        if not jit_compile:
            archive.add_endpoint(
                SERVING_KEY,
                serve,
                input_signature=signature,
                jax2tf_kwargs=jax2tf_kwargs,
            )
        else:
            converted = archive.add_endpoint(
                "serve_jax2tf",
                serve,
                input_signature=signature,
                jax2tf_kwargs=jax2tf_kwargs,
            )
            endpoint = tf.function(
                lambda *args: converted(*args),
                input_signature=signature,
                jit_compile=True,
                autograph=False,
            )
            endpoint.get_concrete_function()
            archive.add_endpoint(SERVING_KEY, endpoint)
    else:
        raise ValueError(
            f"SavedModel export in this process needs the TensorFlow or JAX "
            f"backend. Received: backend={backend}"
        )
    archive.write_out(filepath, verbose=False)


# Exports into an (empty, staging) directory and runs the export on the
# check's inputs; the parent checks the outputs and moves it into place.
_CHILD_EXPORT = """
import sys
import keras
import numpy as np
import keras_norms  # registers the keras_norms layers
import keras_norms.layers.affine  # noqa: F401
from keras_norms.saved_model import export_in_process, load_and_run

source, target, jit_compile, x_path, y_path = sys.argv[1:6]
model = keras.saving.load_model(source, compile=False)
export_in_process(model, target, jit_compile == "1")
with np.load(x_path) as data:
    inputs = [data[f"x{i}"] for i in range(len(data.files))]
outputs, _ = load_and_run(target, inputs)
np.savez(y_path, *outputs)
"""


def _child_env():
    env = dict(os.environ)
    env["KERAS_BACKEND"] = "tensorflow"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return env


def _run_child(args, what):
    result = subprocess.run(
        [sys.executable, "-c", *args],
        env=_child_env(),
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"{what} failed in the child process (exit code "
            f"{result.returncode}):\n{result.stderr[-4000:]}"
        )
    return result.stdout


def _export_in_child(model, filepath, jit_compile, inputs):
    """torch: save as .keras, export under TensorFlow in a child process.

    Returns the export's outputs on `inputs` (run in the same child).
    """
    with tempfile.TemporaryDirectory() as tmp:
        source = os.path.join(tmp, "model.keras")
        x_path = os.path.join(tmp, "x.npz")
        y_path = os.path.join(tmp, "y.npz")
        model.save(source)
        np.savez(x_path, **{f"x{i}": x for i, x in enumerate(inputs)})
        _run_child(
            [
                _CHILD_EXPORT,
                source,
                os.path.abspath(filepath),
                "1" if jit_compile else "0",
                x_path,
                y_path,
            ],
            "SavedModel export",
        )
        with np.load(y_path) as data:
            return [data[f"arr_{i}"] for i in range(len(data.files))]


# ----------------------------------------------------------------------
# Running an exported SavedModel with TensorFlow alone
# ----------------------------------------------------------------------
def load_and_run(filepath, inputs):
    """`(outputs, xla)` of the serving signature; needs TensorFlow only.

    Kept free of Keras and keras_norms: its source also runs in a child
    process that imports nothing else.
    """
    import tensorflow as tf

    loaded = tf.saved_model.load(filepath)
    signature = loaded.signatures["serving_default"]
    _, kwarg_specs = signature.structured_input_signature
    if len(inputs) == 1 and len(kwarg_specs) == 1:
        ((name, spec),) = kwarg_specs.items()
        result = signature(**{name: tf.constant(inputs[0], spec.dtype)})
        outputs = [result[k] for k in sorted(result, key=_output_index)]
    else:
        # The inputs in the structure the serving function takes (a
        # functional model of several inputs: one list argument).
        serve = loaded.serving_default
        specs = tf.nest.flatten(serve.input_signature)
        args = tf.nest.pack_sequence_as(
            serve.input_signature,
            [tf.constant(x, s.dtype) for x, s in zip(inputs, specs)],
        )
        result = serve(*args)
        outputs = tf.nest.flatten(result)
    # bfloat16 outputs as float32: an array of it does not survive
    # `np.savez` (the child processes), and float32 holds it exactly.
    outputs = [
        tf.cast(o, tf.float32) if o.dtype == tf.bfloat16 else o for o in outputs
    ]
    graph_def = signature.graph.as_graph_def()
    library = {f.signature.name: f for f in graph_def.library.function}
    return [o.numpy() for o in outputs], _reaches_xla(
        graph_def.node, library, set()
    )


def _output_index(key):
    digits = "".join(c for c in key if c.isdigit())
    return (int(digits) if digits else 0, key)


def _reaches_xla(nodes, library, seen):
    """Whether a call reachable from `nodes` must be compiled by XLA."""
    for node in nodes:
        attr = node.attr
        if "_XlaMustCompile" in attr and attr["_XlaMustCompile"].b:
            return True
        for value in attr.values():
            name = value.func.name
            if name and name in library and name not in seen:
                seen.add(name)
                function = library[name]
                must = function.attr.get("_XlaMustCompile")
                if must is not None and must.b:
                    return True
                if _reaches_xla(function.node_def, library, seen):
                    return True
    return False


_CHILD_RUN_MAIN = """
import json, sys
import numpy as np
source, target = sys.argv[1:3]
with np.load(source) as data:
    inputs = [data[f"x{i}"] for i in range(len(data.files))]
outputs, xla = load_and_run(sys.argv[3], inputs)
np.savez(target, *outputs)
print(json.dumps({"xla": bool(xla), "n": len(outputs)}))
"""


def run_saved_model(filepath, inputs, *, in_subprocess=None, return_xla=False):
    """Run the `serving_default` signature of a SavedModel on `inputs`.

    Uses TensorFlow only (`tf.saved_model.load`), never Keras.

    Args:
        filepath: The SavedModel directory.
        inputs: A NumPy array, or the structure of arrays the model takes
            (a list, a dict, or nested: passed flattened, as
            `keras.tree.flatten` orders it).
        in_subprocess: Run in a child Python process. Defaults to `True` on
            the torch backend (to keep TensorFlow out of a torch process),
            `False` otherwise.
        return_xla: Also return whether the serving function is
            XLA-compiled (`_XlaMustCompile` on a function it calls).

    Returns:
        The output array (a list of arrays for several outputs), and with
        `return_xla=True` a pair `(outputs, xla_compiled)`.
    """
    require_tensorflow("Running a SavedModel")
    inputs = [np.asarray(x) for x in keras.tree.flatten(inputs)]
    if in_subprocess is None:
        in_subprocess = keras.backend.backend() == "torch"
    filepath = os.path.abspath(os.fspath(filepath))
    if in_subprocess:
        source = "\n\n".join(
            inspect.getsource(f)
            for f in (load_and_run, _output_index, _reaches_xla)
        )
        with tempfile.TemporaryDirectory() as tmp:
            x_path = os.path.join(tmp, "x.npz")
            y_path = os.path.join(tmp, "y.npz")
            np.savez(x_path, **{f"x{i}": x for i, x in enumerate(inputs)})
            out = _run_child(
                [source + _CHILD_RUN_MAIN, x_path, y_path, filepath],
                "Running the SavedModel",
            )
            info = json.loads(out.strip().splitlines()[-1])
            with np.load(y_path) as data:
                outputs = [data[f"arr_{i}"] for i in range(info["n"])]
            xla = info["xla"]
    else:
        outputs, xla = load_and_run(filepath, inputs)
    outputs = outputs[0] if len(outputs) == 1 else outputs
    return (outputs, xla) if return_xla else outputs
