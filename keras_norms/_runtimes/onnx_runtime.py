"""Run an ONNX file with onnxruntime (CPUExecutionProvider).

Imports NumPy and onnxruntime only. As a program (through
`keras_norms._launch`): `_protocol.main`.
"""

from keras_norms._runtimes import _protocol


class OnnxRuntime(_protocol.Runtime):
    """An `onnxruntime.InferenceSession` (`session`) of the artifact."""

    def __init__(self, session, version, inputs):
        self.session = session
        first = session.get_inputs()[0].shape[0]
        super().__init__(
            version,
            [i.name for i in session.get_inputs()],
            first if isinstance(first, int) else None,
            inputs,
        )

    def run(self, xs):
        feed = dict(zip(self.input_names, self.ordered(xs)))
        return self.session.run(None, feed)


def load(path, *, threads=None, batch=None, inputs=None):
    """Load an `.onnx` file in onnxruntime on the CPU.

    Args:
        path: The `.onnx` file.
        threads: Intra-op threads (with them, one inter-op thread);
            `None`: onnxruntime's default.
        batch: The batch the caller will run; onnxruntime runs any batch
            of a dynamic-batch model, so it is only checked against a
            static one.
        inputs: The model's `{"names", "structure"}`
            (`_protocol.describe_inputs`), to match inputs by name;
            `None`: by position.

    Returns:
        An `OnnxRuntime`: `run(xs)` takes and returns flat lists of
        arrays in the model's order.

    Raises:
        ValueError: If `threads` or `batch` is not a positive integer, or
            `batch` differs from the artifact's static batch.
    """
    _protocol.check_options(threads, batch)
    import onnxruntime as rt

    options = rt.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    session = rt.InferenceSession(
        path, options, providers=["CPUExecutionProvider"]
    )
    runtime = OnnxRuntime(session, rt.__version__, inputs)
    _protocol.check_batch(batch, runtime.static_batch, "onnxruntime")
    return runtime


if __name__ == "__main__":
    _protocol.main(load)
