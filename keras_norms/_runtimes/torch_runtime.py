"""Run a torch ExportedProgram (`.pt2`) with `torch.export.load`.

The program's module runs eagerly under `torch.no_grad()`, its inputs
packed into the model's call arguments (a functional model of several
inputs takes one list, or one dict). Imports NumPy and torch only. As a
program (through `keras_norms._launch`): `_protocol.main`.
"""

from keras_norms._runtimes import _protocol


class TorchRuntime(_protocol.Runtime):
    """The ExportedProgram (`program`) and its module (`module`)."""

    def __init__(self, program, version, inputs, torch):
        self.program = program
        self.module = program.module()
        self._torch = torch
        # The program takes the model's call arguments: the flat inputs
        # are packed into the model's structure, not matched by name.
        self.structure = None if inputs is None else inputs["structure"]
        users = list(program.graph_signature.user_inputs)
        shapes = {
            node.name: node.meta["val"].shape
            for node in program.graph.nodes
            if node.op == "placeholder" and node.name in users
        }
        # A batch dimension the program was traced with (not a symbol):
        # Keras' exporter fixes it without `dynamic_shapes`.
        first = shapes[users[0]][0] if users and shapes[users[0]] else None
        static = first if isinstance(first, int) else None
        super().__init__(version, users, static, inputs)

    def ordered(self, xs):
        return list(xs)

    def run(self, xs):
        torch = self._torch
        if self.model_names is not None and len(xs) != len(self.model_names):
            raise ValueError(
                f"The model takes {len(self.model_names)} input(s). "
                f"Received: {len(xs)} input(s)"
            )
        tensors = [torch.from_numpy(x) for x in xs]
        structure = self.structure
        if structure is None:  # each input one positional argument
            structure = list(range(len(tensors)))
        with torch.no_grad():
            out = self.module(*_protocol.pack(tensors, structure))
        if isinstance(out, dict):
            out = list(out.values())
        if not isinstance(out, (list, tuple)):
            out = [out]
        # NumPy has no bfloat16: such outputs come back as float32, which
        # holds them exactly.
        return [
            (o.float() if o.dtype == torch.bfloat16 else o).detach().numpy()
            for o in out
        ]


def load(path, *, threads=None, batch=None, inputs=None):
    """Load a `.pt2` file with `torch.export.load(path).module()`.

    Args:
        path: The `.pt2` file.
        threads: `torch.set_num_threads(threads)`, and one inter-op
            thread (both process-wide in torch); `None`: torch's default.
        batch: The batch the caller will run: checked against a batch
            the program was traced with (`static_batch`; a program
            exported with a dynamic batch runs any).
        inputs: The model's `{"names", "structure"}`
            (`_protocol.describe_inputs`): the inputs are packed into
            `structure`. `None`: each input is one positional argument.

    Returns:
        A `TorchRuntime`: `run(xs)` takes and returns flat lists of
        arrays in the model's order.

    Raises:
        ValueError: If `threads` or `batch` is not a positive integer, or
            `batch` differs from the program's static batch.
        RuntimeError: If torch's inter-op threads are already in use
            with another count (torch sets them once per process).
    """
    _protocol.check_options(threads, batch)
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
        if torch.get_num_interop_threads() != 1:
            try:
                torch.set_num_interop_threads(1)
            except RuntimeError as error:
                raise RuntimeError(
                    "torch's inter-op threads are already started in this "
                    f"process ({torch.get_num_interop_threads()}), and "
                    "torch cannot change them: load with threads=None, or "
                    f"in a fresh process. Received: threads={threads}"
                ) from error
    program = torch.export.load(path)
    runtime = TorchRuntime(program, torch.__version__, inputs, torch)
    _protocol.check_batch(batch, runtime.static_batch, "torch.export")
    return runtime


if __name__ == "__main__":
    _protocol.main(load)
