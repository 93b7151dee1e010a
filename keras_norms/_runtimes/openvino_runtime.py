"""Run an OpenVINO IR (`.xml` + `.bin`) with OpenVINO's `Core` on the CPU.

Imports NumPy and openvino only. As a program (through
`keras_norms._launch`): `_protocol.main`.
"""

import numpy as np

from keras_norms._runtimes import _protocol

PRECISIONS = ("f32", "f16", "bf16")


class OpenVINORuntime(_protocol.Runtime):
    """A `CompiledModel` (`compiled`) of the artifact on the CPU.

    Attributes:
        precision: The precision the plugin computes in
            (`INFERENCE_PRECISION_HINT` of the compiled model: `"f32"`,
            `"bf16"`, `"f16"`).
        default: `None`, or the artifact compiled with the plugin's
            default precision (an `OpenVINORuntime`; `load(...,
            also_default=True)`), run beside this one as the variant
            `"default"`.
    """

    def __init__(self, compiled, version, static, inputs, default=None):
        self.compiled = compiled
        self.precision = compiled_precision(compiled)
        self.default = default
        super().__init__(
            version,
            [i.get_any_name() for i in compiled.inputs],
            static,
            inputs,
        )

    def run(self, xs):
        result = self.compiled(self.ordered(xs))
        return [np.asarray(result[o]) for o in self.compiled.outputs]

    def variants(self):
        return {} if self.default is None else {"default": self.default}

    def meta(self):
        return {**super().meta(), "precision": self.precision}


def compiled_precision(compiled):
    """The `INFERENCE_PRECISION_HINT` a compiled model runs with, as
    `"f32"`, `"bf16"` or `"f16"` (OpenVINO's name of the element type)."""
    return compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()


def load(
    path,
    *,
    threads=None,
    batch=None,
    inputs=None,
    precision="f32",
    also_default=False,
):
    """Read and compile an OpenVINO IR for the CPU.

    Args:
        path: The `.xml` file (its `.bin` beside it).
        threads: `INFERENCE_NUM_THREADS`, with one stream
            (`NUM_STREAMS=1`) and the latency hint: one caller's
            configuration. `None`: the plugin's default.
        batch: Reshape every input to this batch before compiling (the
            other dimensions as they are); `None`: as the file has it.
        inputs: The model's `{"names", "structure"}`
            (`_protocol.describe_inputs`), to match inputs by name;
            `None`: by position.
        precision: `INFERENCE_PRECISION_HINT`: `"f32"` (the default: the
            CPU plugin would otherwise run bf16 or f16 where the processor
            has it), `"f16"`, `"bf16"`, or `None` for the plugin's default.
            OpenVINO 2026.4 ignores a hint stored in the IR's `rt_info`
            (`runtime_options`): only the compile configuration sets it.
        also_default: Also compile the model with the plugin's default
            precision (the same other options), as the runtime's variant
            `"default"`: a program run writes its outputs and its
            `precision` beside this one's.

    Returns:
        An `OpenVINORuntime`: `run(xs)` takes and returns flat lists of
        arrays in the model's order.

    Raises:
        ValueError: If `threads` or `batch` is not a positive integer, or
            `precision` is not one of the above.
    """
    _protocol.check_options(threads, batch)
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(
            f"Argument `precision` must be one of {PRECISIONS} or None. "
            f"Received: precision={precision!r}"
        )
    import openvino as ov

    core = ov.Core()
    model = core.read_model(path)
    if batch is not None:
        model.reshape(
            {
                i: ov.PartialShape(
                    [ov.Dimension(batch)] + list(i.get_partial_shape())[1:]
                )
                for i in model.inputs
            }
        )
    first = model.inputs[0].get_partial_shape()[0]
    static = None if first.is_dynamic else first.get_length()
    config = {}
    if precision is not None:
        config["INFERENCE_PRECISION_HINT"] = precision
    if threads is not None:
        config.update(
            INFERENCE_NUM_THREADS=threads,
            NUM_STREAMS=1,
            PERFORMANCE_HINT="LATENCY",
        )
    compiled = core.compile_model(model, "CPU", config)
    default = None
    if also_default:
        config.pop("INFERENCE_PRECISION_HINT", None)
        default = OpenVINORuntime(
            core.compile_model(model, "CPU", config),
            ov.__version__,
            static,
            inputs,
        )
    return OpenVINORuntime(compiled, ov.__version__, static, inputs, default)


if __name__ == "__main__":
    _protocol.main(load)
