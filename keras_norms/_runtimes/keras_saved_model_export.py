"""Export a `.keras` model as a SavedModel under TensorFlow, in a child.

Keras writes a SavedModel only from the TensorFlow and JAX backends (on
torch it needs `torch_xla`), so a torch process saves the model as a
`.keras` file and `export_in_child` exports it here, in a fresh process
with `KERAS_BACKEND=tensorflow`, through
`keras_norms.saved_model.export_in_process`; the same process runs the
written SavedModel on the check's inputs with `tf_runtime` and hands the
outputs back through the files of `_protocol`.

The program (`python -m`, through `keras_norms._launch`, importing Keras
and keras_norms): `SOURCE TARGET JIT_COMPILE IO`, with `JIT_COMPILE` `1`
or `0`; reads `<IO>_in.npz` and `<IO>_inputs.json`, writes `<IO>_out.npz`
and `<IO>_meta.json` (with `xla`).

Importing this module (the parent side) imports neither Keras nor
TensorFlow.
"""

import os
import sys
import tempfile

from keras_norms._runtimes import _protocol


def export_in_child(
    source,
    target,
    jit_compile,
    xs,
    inputs=None,
    *,
    timeout=None,
    what="The SavedModel export (TensorFlow backend)",
    env=None,
):
    """Export the `.keras` file `source` to the SavedModel `target`.

    Runs this module in a fresh process under the TensorFlow backend
    (`keras_norms._launch.run_module`), which also runs the SavedModel on
    `xs`.

    Args:
        source: A `.keras` file (custom layers must be registered in a
            module the child imports; keras_norms layers are).
        target: The SavedModel directory to write (the child writes it
            with `export_in_process`: an empty or absent directory).
        jit_compile: Compile the serving function with XLA.
        xs: The check's inputs, flat, in the model's order.
        inputs: `_protocol.describe_inputs` of the model, or `None`.
        timeout: Seconds the child may run (default:
            `keras_norms._launch.DEFAULT_TIMEOUT`).
        what: What the child does, for error messages.
        env: More environment variables for the child (`KERAS_BACKEND`
            is always `"tensorflow"`).

    Returns:
        `(outputs, meta)`: the SavedModel's flat outputs on `xs`, and
        `tf_runtime`'s meta (`version`, `static_batch`, `input_names`,
        `xla`).

    Raises:
        keras_norms._launch.ChildProcessFailed: A `RuntimeError`, if the
            export or the run fails, is killed or runs past its timeout.
    """
    from keras_norms import _launch

    with tempfile.TemporaryDirectory(prefix="keras_norms_export_") as tmp:
        io = os.path.join(tmp, "io")
        _protocol.write_inputs(io, xs, inputs)
        _launch.run_module(
            __name__,
            [
                os.path.abspath(os.fspath(source)),
                os.path.abspath(os.fspath(target)),
                "1" if jit_compile else "0",
                io,
            ],
            bare=False,
            env=dict(env or {}, KERAS_BACKEND="tensorflow"),
            timeout=_launch.DEFAULT_TIMEOUT if timeout is None else timeout,
            what=what,
        )
        return _protocol.read_outputs(io)


def main(argv=None):
    """The child's program (see the module docstring)."""
    source, target, jit_compile, io = sys.argv[1:] if argv is None else argv
    import keras

    import keras_norms  # noqa: F401 (registers the keras_norms layers)
    import keras_norms.layers.affine  # noqa: F401
    from keras_norms._runtimes import tf_runtime
    from keras_norms.saved_model import export_in_process

    if keras.backend.backend() != "tensorflow":
        raise SystemExit(
            "The SavedModel export child needs KERAS_BACKEND=tensorflow. "
            f"Received: backend={keras.backend.backend()}"
        )
    model = keras.saving.load_model(source, compile=False)
    export_in_process(model, target, jit_compile == "1")
    xs, inputs = _protocol.read_inputs(io)
    runtime = tf_runtime.load(target, inputs=inputs)
    _protocol.write_outputs(
        io, _protocol.run_batches(runtime, xs), runtime.meta()
    )


if __name__ == "__main__":
    main()
