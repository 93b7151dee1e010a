"""Run a LiteRT (`.tflite`) file with ai_edge_litert's Interpreter.

The artifact runs through its (first) named signature, whose inputs and
outputs are named: the interpreter's flat tensor lists need not be in the
model's order. Imports NumPy and ai_edge_litert only. As a program
(through `keras_norms._launch`): `_protocol.main`.
"""

from keras_norms._runtimes import _protocol


class LiteRTRuntime(_protocol.Runtime):
    """An `Interpreter` (`interpreter`) and its signature runner (`runner`)."""

    def __init__(self, interpreter, version, inputs, batch):
        self.interpreter = interpreter
        signatures = interpreter.get_signature_list()
        if not signatures:
            raise ValueError(
                "The LiteRT file has no signature (its inputs and outputs "
                "are not named); export it with a serving signature "
                "(Keras' LiteRT export writes one)."
            )
        if batch is not None:
            # Sized once here (before the runner holds the tensors), so
            # that no call reallocates.
            for detail in interpreter.get_input_details():
                shape = [batch] + [int(d) for d in detail["shape"][1:]]
                interpreter.resize_tensor_input(detail["index"], shape)
            interpreter.allocate_tensors()
        key, signature = next(iter(signatures.items()))
        self.runner = interpreter.get_signature_runner(key)
        self.outputs = sorted(signature["outputs"], key=_protocol.output_order)
        names = list(signature["inputs"])
        if batch is not None:
            static = batch
        else:
            detail = self.runner.get_input_details()[names[0]]
            first = detail.get("shape_signature", detail["shape"])[0]
            static = None if first == -1 else int(first)
        super().__init__(version, names, static, inputs)

    def run(self, xs):
        result = self.runner(**dict(zip(self.input_names, self.ordered(xs))))
        return [result[name] for name in self.outputs]


def load(path, *, threads=None, batch=None, inputs=None):
    """Load a `.tflite` file in the LiteRT interpreter.

    Args:
        path: The `.tflite` file.
        threads: The interpreter's `num_threads`; `None`: its default.
        batch: Resize every input to this batch once, here (a dynamic or
            static batch); `None`: each call runs the batch it is given
            where the artifact's batch is dynamic.
        inputs: The model's `{"names", "structure"}`
            (`_protocol.describe_inputs`), to match inputs by name;
            `None`: by position.

    Returns:
        A `LiteRTRuntime`: `run(xs)` takes and returns flat lists of
        arrays in the model's order (outputs sorted by the number in
        their signature names, `output_0`, `output_1`, ...).

    Raises:
        ValueError: If `threads` or `batch` is not a positive integer, or
            the file has no signature.
    """
    _protocol.check_options(threads, batch)
    import ai_edge_litert
    from ai_edge_litert.interpreter import Interpreter

    kwargs = {} if threads is None else {"num_threads": threads}
    interpreter = Interpreter(model_path=path, **kwargs)
    return LiteRTRuntime(
        interpreter,
        getattr(ai_edge_litert, "__version__", ""),
        inputs,
        batch,
    )


if __name__ == "__main__":
    _protocol.main(load)
