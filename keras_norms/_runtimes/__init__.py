"""The runtimes keras_norms checks its exports in, one module each.

Each module (`onnx_runtime`, `litert_runtime`, `openvino_runtime`,
`torch_runtime`, `tf_runtime`) imports NumPy and its runtime alone (never
Keras, never the rest of keras_norms), and has the same interface:

- `load(path, *, threads=None, batch=None, inputs=None, **options)`
  returns a runtime object with `version`, `input_names` (the artifact's
  order), `static_batch` (an int, or `None`), and `run(xs)`, which takes
  the flat inputs in the model's order and returns the flat outputs in
  the model's order;
- run as a program (`run_in_child`, through `keras_norms._launch`), it
  reads its inputs from files and writes its outputs to files
  (`_protocol`).

This package's `__init__` imports nothing: it runs in those programs too.
"""

import os
import tempfile

# The runtime module of each export format.
MODULES = {
    "tf_saved_model": "tf_runtime",
    "onnx": "onnx_runtime",
    "litert": "litert_runtime",
    "openvino": "openvino_runtime",
    "torch": "torch_runtime",
}

# Environment a runtime's child needs: `import tensorflow` imports Keras,
# which would import the backend of the parent's KERAS_BACKEND (torch, in
# a torch process) beside TensorFlow.
_CHILD_ENV = {"tf_saved_model": {"KERAS_BACKEND": "tensorflow"}}


def module_name(format):
    """The dotted name of `format`'s runtime module."""
    if format not in MODULES:
        raise ValueError(
            f"Argument `format` must be one of {tuple(MODULES)}. "
            f"Received: format={format!r}"
        )
    return f"{__name__}.{MODULES[format]}"


def load(format, path, **kwargs):
    """`load(path, **kwargs)` of `format`'s runtime module, in this process.

    Imports that runtime here; see each module's `load` for `kwargs`.
    """
    import importlib

    return importlib.import_module(module_name(format)).load(path, **kwargs)


def run_in_child(
    format,
    path,
    xs,
    inputs=None,
    *,
    threads=None,
    batch=None,
    batches=None,
    options=None,
    env=None,
    timeout=None,
    what=None,
    report_modules=False,
):
    """Run an artifact on `xs` in a fresh process holding its runtime alone.

    The child process (`keras_norms._launch.run_module`, which keeps
    `keras_norms/__init__` and so Keras out of it) loads `path` with
    `format`'s runtime module and runs the inputs, in slices of the
    artifact's static batch where it has one.

    Args:
        format: One of `MODULES` (`"onnx"`, `"litert"`, `"openvino"`,
            `"torch"`, `"tf_saved_model"`).
        path: The artifact.
        xs: The model's inputs, flat (one numeric array each, in the
            model's order: `_protocol.flatten` of a nested batch).
        inputs: `_protocol.describe_inputs` of the model (names to match
            the artifact's inputs by, the structure of its arguments), or
            `None` (by position, each input one argument).
        threads: The runtime's intra-op threads (`None`: its default).
        batch: The batch to fix where the runtime needs it (see the
            module's `load`).
        batches: `None` (the inputs in one call, or in slices of the
            artifact's static batch), or row counts summing to the rows
            of `xs`: each slice of that many rows runs as one call, and
            an artifact with a static batch that is not every one of
            them is not run (no outputs; `meta["static_batch"]` says
            its batch).
        options: The module's own `load` options, a JSON-ready dict
            (e.g. `{"precision": None}` for OpenVINO).
        env: Environment variables for the child (over this process's;
            a TensorFlow child gets `KERAS_BACKEND=tensorflow` unless
            `env` says otherwise).
        timeout: Seconds the child may run (default:
            `keras_norms._launch.DEFAULT_TIMEOUT`).
        what: What the run is, for error messages.
        report_modules: Add `modules` (every module the child imported)
            to the returned meta.

    Returns:
        `(outputs, meta)`: the flat outputs in the model's order, and
        what the runtime said about the artifact (`version`,
        `static_batch`, `input_names`; `xla` for TensorFlow,
        `precision` for OpenVINO; under `variants`, each variant's meta
        and its `outputs`, e.g. OpenVINO's `"default"`).

    Raises:
        ValueError: If `format` is unknown, `threads` or `batch` is
            not a positive integer, or `batches` do not add up to the
            rows of `xs`.
        TypeError: If an input is not a numeric array.
        keras_norms._launch.ChildProcessFailed: A `RuntimeError`, if the
            child fails (the runtime could not load or run the artifact),
            is killed or runs past `timeout`.
    """
    import json

    from keras_norms import _launch
    from keras_norms._runtimes import _protocol

    module = module_name(format)
    _protocol.check_options(threads, batch)
    if batches is not None:
        batches = _protocol.check_batches(batches, len(xs[0]) if xs else 0)
    args = [os.path.abspath(os.fspath(path))]
    with tempfile.TemporaryDirectory(prefix="keras_norms_run_") as tmp:
        io = os.path.join(tmp, "io")
        _protocol.write_inputs(io, xs, inputs)
        args.append(io)
        if threads is not None:
            args += ["--threads", threads]
        if batch is not None:
            args += ["--batch", batch]
        if batches is not None:
            args += ["--batches", json.dumps(batches)]
        if options:
            args += ["--options", json.dumps(options)]
        if report_modules:
            args.append("--report-modules")
        _launch.run_module(
            module,
            args,
            env={**_CHILD_ENV.get(format, {}), **(env or {})},
            timeout=_launch.DEFAULT_TIMEOUT if timeout is None else timeout,
            what=what or f"Running {os.fspath(path)!r} with {MODULES[format]}",
        )
        return _protocol.read_outputs(io)
