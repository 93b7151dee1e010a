"""What each export format needs, and refuses, per backend.

The tables `kn.export` consults before writing anything: the file name
ending each format requires (`SUFFIX`), the modules its exporter and its
runtime need (`EXPORTER`, `RUNTIME`), the formats Keras cannot write from
a backend and what to use instead (`REFUSED`), the compute dtypes a
format cannot take (`FLOAT32_ONLY`), the converter defects the export
matrix found (`DEFECTS`), and the exporter failures with a known way
around them (`explain_export_error`); and `quiet_converter`, which keeps
what a converter prints out of the user's terminal.
"""

import contextlib
import importlib.util
import os
import sys
import tempfile

from keras_norms import _compat

FORMATS = ("tf_saved_model", "onnx", "litert", "openvino", "torch")
# The file name ending Keras' exporter requires per format (None: a
# directory).
SUFFIX = {
    "tf_saved_model": None,
    "onnx": ".onnx",
    "litert": ".tflite",
    "openvino": ".xml",
    "torch": ".pt2",
}
INSTALL_HINT = 'pip install "keras_norms[deploy]" -c constraints.txt'

# Modules the exporter (in this process) and the runtime (in the check's
# process) import, per (format, backend); the runtime's first.
RUNTIME = {
    "onnx": ("onnxruntime", "onnxruntime"),
    "litert": ("ai_edge_litert", "LiteRT interpreter (ai_edge_litert)"),
    "openvino": ("openvino", "OpenVINO runtime"),
    "torch": ("torch", "torch.export"),
}
EXPORTER = {
    ("onnx", "tensorflow"): ("tf2onnx", "onnx"),
    ("onnx", "jax"): ("jax2onnx", "onnx"),
    ("onnx", "torch"): ("onnx", "onnxscript"),
    ("litert", "tensorflow"): ("tensorflow",),
    ("litert", "torch"): ("litert_torch",),
    ("openvino", "tensorflow"): ("openvino",),
    ("openvino", "torch"): ("openvino",),
    ("torch", "torch"): (),
}
# The compute dtypes a (format, backend) cannot export or run, measured
# on Conv-BN nets (tests/test_deploy.py): `export(dtype=None)` writes a
# float32 copy of such a model (`_float32.float32_copy`), checked like
# any other against the model.
FLOAT32_ONLY = {
    # tf2onnx and torch.onnx write bfloat16 Conv inputs, which ONNX's Conv
    # does not take (onnxruntime: "invalid model").
    ("onnx", "tensorflow"): ("bfloat16",),
    ("onnx", "torch"): ("bfloat16",),
    # jax2onnx types a float16/bfloat16 ReduceMean's output float32:
    # onnxruntime refuses the graph.
    ("onnx", "jax"): ("float16", "bfloat16"),
    # TensorFlow's LiteRT converter keeps float16/bfloat16 convolutions as
    # Flex (select TensorFlow) ops, which the LiteRT interpreter lacks.
    ("litert", "tensorflow"): ("float16", "bfloat16"),
    # OpenVINO's CPU plugin cannot compile the bfloat16 Convert from the
    # TensorFlow frontend, and computes a bfloat16 model from torch wrong
    # (max abs difference 1.2 on unit-scale outputs).
    ("openvino", "tensorflow"): ("bfloat16",),
    ("openvino", "torch"): ("bfloat16",),
}
# Formats Keras cannot write from a backend, and what to do instead.
REFUSED = {
    ("litert", "jax"): (
        "Keras writes LiteRT only from the TensorFlow and torch backends. "
        "Export from the TensorFlow backend (save the model as .keras and "
        "load it there; keras_norms layers are registered), or use "
        "format='onnx' or 'tf_saved_model' from JAX."
    ),
    ("openvino", "jax"): (
        "Keras converts a JAX model for OpenVINO through jax2tf, whose "
        "graph is one XlaCallModule op that OpenVINO has no conversion rule "
        "for. Use format='onnx' (OpenVINO reads .onnx files directly: "
        "openvino.Core().read_model('model.onnx')), or export from the "
        "TensorFlow or torch backend."
    ),
    ("torch", "tensorflow"): (
        "Keras writes a torch ExportedProgram (.pt2) only from the torch "
        "backend. Export from the torch backend (KERAS_BACKEND=torch, load "
        "the .keras file there), or use format='onnx'."
    ),
    ("torch", "jax"): (
        "Keras writes a torch ExportedProgram (.pt2) only from the torch "
        "backend. Export from the torch backend (KERAS_BACKEND=torch, load "
        "the .keras file there), or use format='onnx'."
    ),
}


def _odd_depth_radius_lrn(layer):
    return (
        type(layer).__name__ == "LocalResponseNormalization"
        and layer.depth_radius % 2 == 1
    )


# Converter defects found by the export matrix (tests/test_deploy.py):
# (format, backend, which layers, why, what to use instead). `export`
# refuses such a model before writing anything; the check would catch the
# wrong artifact anyway, but without saying why.
DEFECTS = (
    (
        "openvino",
        "tensorflow",
        _odd_depth_radius_lrn,
        "OpenVINO's TensorFlow frontend (2026.4) converts tf.nn.lrn with an "
        "odd depth_radius to an LRN over 2 * (depth_radius - 1) + 1 "
        "channels instead of 2 * depth_radius + 1 (measured: max abs "
        "difference 0.2-0.4 on unit-scale inputs; even radii convert "
        "exactly).",
        "Export format='onnx' and read the .onnx with OpenVINO "
        "(openvino.Core().read_model('model.onnx')), or export from the "
        "torch backend.",
    ),
)


def check_defects(model, format, backend):
    """A ValueError naming the layer if a known converter defect hits it."""
    for defect_format, defect_backend, hit, why, instead in DEFECTS:
        if (format, backend) != (defect_format, defect_backend):
            continue
        for layer in _compat.flatten_layers(model):
            if hit(layer):
                raise ValueError(
                    f"Cannot export layer '{layer.name}' "
                    f"({type(layer).__name__}) as format={format!r} from "
                    f"the {backend} backend: {why} {instead} "
                    f"Received: format={format!r}"
                )


def check_format_value(format, backend):
    if format not in FORMATS:
        raise ValueError(
            f"Argument `format` must be one of {list(FORMATS)}. "
            f"Received: format={format!r}"
        )
    if (format, backend) in REFUSED:
        raise ValueError(
            f"Cannot export format={format!r} from the {backend} backend: "
            f"{REFUSED[(format, backend)]} Received: format={format!r}"
        )


def require(format, backend, verify):
    """A ModuleNotFoundError naming the install, before anything is written."""
    needed = list(EXPORTER[(format, backend)])
    if verify:
        needed.append(RUNTIME[format][0])
    missing = [m for m in needed if importlib.util.find_spec(m) is None]
    if "litert_torch" in missing:
        raise ModuleNotFoundError(
            "Exporting format='litert' from the torch backend needs "
            "litert_torch (pip install litert-torch), not installed here and "
            "not part of keras_norms[deploy]: litert-torch 0.8 requires "
            "torch<2.10. Export LiteRT from the TensorFlow backend (load the "
            ".keras file there; keras_norms layers are registered), or use "
            "format='onnx' or 'torch'.",
            name="litert_torch",
        )
    if missing:
        raise ModuleNotFoundError(
            f"Exporting format={format!r} from the {backend} backend needs "
            f"{', '.join(sorted(set(missing)))}, not installed here. "
            f"Install the deploy runtimes: {INSTALL_HINT}",
            name=missing[0],
        )


# How much of a converter's output an error shows (its last lines).
OUTPUT_TAIL_LINES = 20
OUTPUT_TAIL_CHARS = 3000


class ConverterOutput:
    """What a converter printed inside `quiet_converter` (its stdout and
    stderr, Python's and its C++ libraries', in one text)."""

    def __init__(self):
        self.text = ""

    def tail(self):
        """Its last `OUTPUT_TAIL_LINES` lines (at most
        `OUTPUT_TAIL_CHARS` characters), `""` if it printed nothing."""
        lines = self.text.rstrip().splitlines()[-OUTPUT_TAIL_LINES:]
        return "\n".join(lines)[-OUTPUT_TAIL_CHARS:]


@contextlib.contextmanager
def quiet_converter(verbose=False):
    """Capture everything the block prints, at the file-descriptor level.

    Converters print from C++ (TensorFlow's LiteRT converter, OpenVINO)
    and from Python (torch.onnx's graph dump on a failure, tracer
    warnings) to the process's stdout and stderr: inside this block both
    file descriptors 1 and 2, and `sys.stdout` / `sys.stderr`, write to
    one temporary file instead. The text is in the yielded
    `ConverterOutput` afterwards (also after an error, for the error's
    message: `explain_export_error(..., output=...)`).

    Args:
        verbose: Write the captured text to stderr once the block is
            done (it still never interleaves with the converter's run).

    Yields:
        A `ConverterOutput`, filled when the block exits.
    """
    output = ConverterOutput()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    with tempfile.TemporaryFile(mode="w+b") as log:
        text = open(os.dup(log.fileno()), "w", buffering=1)
        try:
            for fd in saved:
                os.dup2(log.fileno(), fd)
            with contextlib.redirect_stdout(text):
                with contextlib.redirect_stderr(text):
                    yield output
        finally:
            text.close()
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
            log.seek(0)
            output.text = log.read().decode(errors="replace")
            if verbose and output.text:
                sys.stderr.write(output.text)


class ExportError(RuntimeError):
    """An exporter (Keras', a converter's) failed to write the artifact."""


def explain_export_error(
    error, format, backend, batch_size, quantize, output=""
):
    """Raise a clear error for an exporter failure: a `ValueError` saying
    what to do where there is a known way around it, else an
    `ExportError` with the exporter's error as its cause.

    `output`: the tail of what the converter printed
    (`ConverterOutput.tail`), quoted in the message after the exporter's
    error.
    """
    cause = f"{type(error).__name__}: {str(error).strip()[-300:]}"
    if output:
        cause += f"\nThe converter's last output lines:\n{output}"
    if quantize == "int8":
        raise ValueError(
            "TensorFlow's LiteRT converter could not quantize the model to "
            "int8 (every op must have an int8 kernel, "
            f"TFLITE_BUILTINS_INT8): {cause}\n"
            "Use quantize='float16', or export in float (quantize=None). "
            "Received: quantize='int8'"
        ) from error
    if format == "onnx" and backend == "torch" and batch_size is None:
        raise ValueError(
            "torch.onnx could not export the model with a dynamic batch "
            "(Keras uses torch.onnx's TorchScript exporter for a dynamic "
            "batch on torch, and it fails on some graphs, e.g. "
            f"channels-last group_norm): {cause}\n"
            "Pass batch_size=N for an artifact with a static batch of N "
            "(torch.onnx's dynamo exporter), or export from the TensorFlow "
            "or JAX backend for a dynamic batch. Received: batch_size=None"
        ) from error
    if format == "torch" and batch_size is None:
        raise ValueError(
            "torch.export could not export the model with a dynamic batch "
            f"dimension (torch.export.Dim on every input's batch): {cause}\n"
            "Pass batch_size=N for a program with a static batch of N. "
            "Received: batch_size=None"
        ) from error
    raise ExportError(
        f"Keras' {format!r} exporter failed on the {backend} backend: {cause}"
    ) from error
