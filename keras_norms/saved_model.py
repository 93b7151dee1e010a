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
import tempfile

import keras
import numpy as np

from keras_norms import _artifact
from keras_norms import _check
from keras_norms import _compat
from keras_norms import _float32
from keras_norms import _formats
from keras_norms import _graph
from keras_norms import _inference_rewrite
from keras_norms import _validation

__all__ = ["export_saved_model", "run_saved_model"]

SERVING_KEY = "serving_default"
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
    only SavedModel files), as one unit: the old
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
    """What `export` wrote: `filepath`, `check` (a `_check.Check`) and
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
    verbose = _validation.check_verbose(verbose)
    atol, rtol, on_mismatch = _check.check_tolerance(atol, rtol, on_mismatch)
    target = _artifact.target(filepath, None, overwrite)
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
    tolerance = _check.Tolerance.for_model(model, atol, rtol)
    if fold:
        _graph.check_graph_model(model, "optimize for inference")
    # The reference first: weights changing from here on (a training
    # thread) are then told apart from a wrong export.
    sample, expected = _check.reference_outputs(model, sample)
    exported = model
    if fold:
        exported, report = _inference_rewrite.rewrite(model)
    if fold:
        report.check = _check.Check.run(
            _check.model_outputs(exported, sample),
            expected,
            tolerance,
            what=f"The optimized model '{exported.name}'",
        )
        if verbose:
            print(report)
        _check.enforce_against(
            report.check,
            model,
            sample,
            expected,
            on_mismatch,
            " Nothing was exported (pass fold=False to export the model as "
            "it is)."
            if on_mismatch == "raise"
            else "",
        )
    if dtype == "float32":
        exported = _float32.float32_copy(exported)
    # The flattened inputs (dict keys sorted, as TensorFlow flattens the
    # serving function's input structure).
    xs = [np.asarray(x) for x in keras.tree.flatten(sample)]

    def produce(staged):
        os.makedirs(staged)
        try:
            got = _write_and_run(exported, staged, jit_compile, xs)
        except Exception as e:  # TensorFlow's or jax2tf's failure
            _explain_layout_error(e, jit_compile)
            if isinstance(e, RuntimeError):  # e.g. the child's, explained
                raise
            raise _formats.ExportError(
                "Writing the SavedModel failed on the "
                f"{keras.backend.backend()} backend: {type(e).__name__}: "
                f"{str(e).strip()[-500:]}"
            ) from e
        with open(os.path.join(staged, _artifact.MARKER), "w") as f:
            json.dump(
                {
                    "format": "keras_norms SavedModel export",
                    "backend": keras.backend.backend(),
                    "fold": bool(fold),
                    "jit_compile": bool(jit_compile),
                },
                f,
            )
        check = _check.Check.run(got, expected, tolerance, "The SavedModel")
        if on_mismatch == "raise":
            _check.enforce_against(
                check,
                model,
                sample,
                expected,
                "raise",
                f" Nothing was written to {target.filepath!r} (an earlier "
                "export there is unchanged); pass on_mismatch='warn' to keep "
                "it.",
            )
        return check

    check = _artifact.write(target, produce)
    result = ExportResult(
        target.filepath, check, _check.compute_dtype(exported)
    )
    if not check.passed:  # on_mismatch="warn"
        check.enforce("warn", f" The export is kept at {target.path!r}.")
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


def _write_and_run(model, directory, jit_compile, xs):
    """Write the SavedModel into `directory`; its flat outputs on `xs`."""
    from keras_norms._runtimes import tf_runtime

    if keras.backend.backend() == "torch":
        return _export_in_child(model, directory, jit_compile, xs)
    export_in_process(model, directory, jit_compile)
    return tf_runtime.load(directory).run(xs)


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


def _export_in_child(model, directory, jit_compile, xs):
    """torch: save as .keras, export under TensorFlow in a child process
    (`keras_norms._runtimes.keras_saved_model_export`), which also runs
    the export on `xs`; its flat outputs."""
    from keras_norms._runtimes import _protocol
    from keras_norms._runtimes import keras_saved_model_export

    with tempfile.TemporaryDirectory() as tmp:
        source = os.path.join(tmp, "model.keras")
        model.save(source)
        outputs, _ = keras_saved_model_export.export_in_child(
            source,
            directory,
            jit_compile,
            xs,
            _protocol.describe_inputs(_compat.input_signature(model)),
        )
    return outputs


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
    from keras_norms import _runtimes
    from keras_norms._runtimes import tf_runtime

    xs = [np.asarray(x) for x in keras.tree.flatten(inputs)]
    if in_subprocess is None:
        in_subprocess = keras.backend.backend() == "torch"
    filepath = os.path.abspath(os.fspath(filepath))
    if in_subprocess:
        outputs, meta = _runtimes.run_in_child(
            "tf_saved_model", filepath, xs, what="Running the SavedModel"
        )
        xla = meta["xla"]
    else:
        runtime = tf_runtime.load(filepath)
        outputs, xla = runtime.run(xs), runtime.xla
    outputs = outputs[0] if len(outputs) == 1 else outputs
    return (outputs, xla) if return_xla else outputs
