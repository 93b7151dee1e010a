"""Export a (BatchNorm-folded) model as an XLA-compiled TensorFlow SavedModel.

The SavedModel's `serving_default` signature runs `model(x, training=False)`
as one `tf.function(jit_compile=True)`, so TensorFlow compiles the whole
inference graph with XLA. It loads with `tf.saved_model.load` alone: no
Keras and no keras_norms are needed to serve it.

How each backend writes it:

- TensorFlow: `keras.export.ExportArchive` with a
  `tf.function(jit_compile=True)` endpoint.
- JAX: `keras.export.ExportArchive` converts the model with `jax2tf`
  (endpoint `serve_jax2tf`); `serving_default` is a
  `tf.function(jit_compile=True)` calling it.
- torch: Keras' SavedModel export needs `torch_xla`, so the model is saved as
  a `.keras` file and re-loaded and exported by a child Python process under
  the TensorFlow backend. Custom layers in the model must then be
  registered (`keras.saving.register_keras_serializable`) in a module that
  the child imports; keras_norms layers are.
"""

import inspect
import json
import os
import shutil
import subprocess
import sys
import tempfile

import keras
import numpy as np

from keras_norms import inference
from keras_norms.layers import _validation

__all__ = ["export_saved_model", "run_saved_model"]

SERVING_KEY = "serving_default"


def export_saved_model(
    model,
    filepath,
    *,
    fold=True,
    jit_compile=True,
    overwrite=False,
    verbose="auto",
):
    """Write `model` as a TensorFlow SavedModel with an XLA-compiled server.

    The `serving_default` signature computes `model(x, training=False)`
    (float32 outputs within about 1e-5 of the Keras model; with `fold=True`
    the model is first put in its inference form by
    `keras_norms.inference.optimize_for_inference`: BatchNormalization
    folded, WeightNormalization / WeightStandardization unwrapped, a
    leading `keras.layers.Normalization` folded into the first layer).
    The batch size stays dynamic (it is whatever the model's inputs
    declare, `None` for `keras.Input`).
    Reload it anywhere with TensorFlow alone:

    ```python
    loaded = tf.saved_model.load(filepath)
    outputs = loaded.signatures["serving_default"](x)  # {"output_0": ...}
    ```

    Works on every backend (see the module docstring; on torch the export
    runs in a child process under the TensorFlow backend).

    Args:
        model: A built Keras model. With `fold=True` it must be a
            Sequential or functional model; subclassed models need
            `fold=False`.
        filepath: Directory to write the SavedModel to.
        fold: Apply `optimize_for_inference` first (the model itself is
            not modified).
        jit_compile: Compile the serving function with XLA.
        overwrite: Replace an existing `filepath`; otherwise an existing
            path is refused.
        verbose: `"auto"` or `1` prints the inference report and the
            exported endpoints, `0` is silent.

    Returns:
        `filepath`.

    Raises:
        FileExistsError: If `filepath` exists and `overwrite=False`.
        ValueError: If the model is not built (or, with `fold=True`, is a
            subclassed model whose graph cannot be read).
    """
    filepath = os.fspath(filepath)
    if os.path.exists(filepath) and not overwrite:
        raise FileExistsError(
            f"The export path {filepath!r} already exists. Pass "
            f"overwrite=True to replace it. Received: filepath={filepath!r}"
        )
    verbose = _validation.check_verbose(verbose)
    if not isinstance(model, keras.Model) or not model.built:
        raise ValueError(
            "Argument `model` must be a built keras.Model (call it once, or "
            f"create it with an Input). Received: model={model!r}"
        )
    if fold:
        model = inference.optimize_for_inference(
            model, verbose=int(verbose)
        )
    if os.path.exists(filepath):
        shutil.rmtree(filepath) if os.path.isdir(filepath) else os.remove(
            filepath
        )
    if keras.backend.backend() == "torch":
        _export_in_child(model, filepath, jit_compile, verbose)
    else:
        _export_here(model, filepath, jit_compile, verbose)
    return filepath


def _input_signature(model):
    import tensorflow as tf
    from keras.src.export.export_utils import get_input_signature

    def to_spec(spec):
        return tf.TensorSpec(
            shape=spec.shape, dtype=spec.dtype, name=getattr(spec, "name", None)
        )

    return keras.tree.map_structure(to_spec, get_input_signature(model))


def _export_here(model, filepath, jit_compile, verbose):
    """Export from the TensorFlow or JAX backend, in this process."""
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
        if not jit_compile:
            archive.add_endpoint(SERVING_KEY, serve, input_signature=signature)
        else:
            converted = archive.add_endpoint(
                "serve_jax2tf", serve, input_signature=signature
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
    archive.write_out(filepath, verbose=verbose)


_CHILD_EXPORT = """
import sys
import keras
import keras_norms  # registers the keras_norms layers
import keras_norms.layers.affine  # noqa: F401
from keras_norms.export import export_saved_model

source, target, jit_compile, verbose = sys.argv[1:5]
model = keras.saving.load_model(source, compile=False)
export_saved_model(
    model, target, fold=False, jit_compile=jit_compile == "1",
    overwrite=True, verbose=int(verbose),
)
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


def _export_in_child(model, filepath, jit_compile, verbose):
    """torch: save as .keras, export under TensorFlow in a child process."""
    with tempfile.TemporaryDirectory() as tmp:
        source = os.path.join(tmp, "model.keras")
        model.save(source)
        out = _run_child(
            [
                _CHILD_EXPORT,
                source,
                os.path.abspath(filepath),
                "1" if jit_compile else "0",
                "1" if verbose else "0",
            ],
            "SavedModel export",
        )
    if verbose and out:
        print(out, end="")


# ----------------------------------------------------------------------
# Running an exported SavedModel with TensorFlow alone
# ----------------------------------------------------------------------
def _load_and_run(filepath, inputs):
    """`(outputs, xla)` of the serving signature; needs TensorFlow only.

    Kept free of Keras and keras_norms: its source also runs in a child
    process that imports nothing else.
    """
    import tensorflow as tf

    loaded = tf.saved_model.load(filepath)
    signature = loaded.signatures["serving_default"]
    _, kwarg_specs = signature.structured_input_signature
    if len(inputs) == 1 and len(kwarg_specs) == 1:
        (name,) = kwarg_specs
        result = signature(**{name: tf.constant(inputs[0])})
        outputs = [result[k] for k in sorted(result, key=_output_index)]
    else:
        result = loaded.serving_default(*[tf.constant(x) for x in inputs])
        outputs = tf.nest.flatten(result)
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
outputs, xla = _load_and_run(sys.argv[3], inputs)
np.savez(target, *outputs)
print(json.dumps({"xla": bool(xla), "n": len(outputs)}))
"""


def run_saved_model(filepath, inputs, *, in_subprocess=None, return_xla=False):
    """Run the `serving_default` signature of a SavedModel on `inputs`.

    Uses TensorFlow only (`tf.saved_model.load`), never Keras.

    Args:
        filepath: The SavedModel directory.
        inputs: A NumPy array, or a list of arrays for a multi-input model.
        in_subprocess: Run in a child Python process. Defaults to `True` on
            the torch backend (to keep TensorFlow out of a torch process),
            `False` otherwise.
        return_xla: Also return whether the serving function is
            XLA-compiled (`_XlaMustCompile` on a function it calls).

    Returns:
        The output array (a list of arrays for several outputs), and with
        `return_xla=True` a pair `(outputs, xla_compiled)`.
    """
    single = not isinstance(inputs, (list, tuple))
    inputs = [np.asarray(x) for x in ([inputs] if single else inputs)]
    if in_subprocess is None:
        in_subprocess = keras.backend.backend() == "torch"
    filepath = os.path.abspath(os.fspath(filepath))
    if in_subprocess:
        source = "\n\n".join(
            inspect.getsource(f)
            for f in (_load_and_run, _output_index, _reaches_xla)
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
        outputs, xla = _load_and_run(filepath, inputs)
    outputs = outputs[0] if len(outputs) == 1 else outputs
    return (outputs, xla) if return_xla else outputs
