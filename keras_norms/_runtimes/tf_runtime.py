"""Run a TensorFlow SavedModel's `serving_default` with TensorFlow alone.

`tf.saved_model.load`, never Keras. A single-input model runs through the
`serving_default` signature (its keyword argument named after the input,
its outputs `output_0`, `output_1`, ... ordered by their numbers); a model
of several inputs through the restored `serving_default` function, the
flat inputs packed into its input signature (a list, or a dict). Also
tells whether the serving function reaches XLA (`xla`). Imports NumPy and
TensorFlow only (`import tensorflow` itself imports Keras, for
`tf.keras`). As a program (through `keras_norms._launch`):
`_protocol.main`.
"""

from keras_norms._runtimes import _protocol

SERVING_KEY = "serving_default"


class TFRuntime(_protocol.Runtime):
    """The loaded SavedModel (`loaded`) and its signature (`signature`).

    Attributes:
        xla: Whether the serving function is compiled by XLA (a function
            it calls, at any depth, has `_XlaMustCompile`).
    """

    def __init__(self, loaded, tf, inputs):
        self.loaded = loaded
        self._tf = tf
        if SERVING_KEY not in loaded.signatures:
            raise ValueError(
                f"The SavedModel has no {SERVING_KEY!r} signature. Its "
                f"signatures: {sorted(loaded.signatures)}"
            )
        self.signature = loaded.signatures[SERVING_KEY]
        _, self._kwarg_specs = self.signature.structured_input_signature
        first = tf.nest.flatten(self._kwarg_specs)[0].shape
        static = None if first.rank is None else first[0]
        graph_def = self.signature.graph.as_graph_def()
        library = {f.signature.name: f for f in graph_def.library.function}
        self.xla = reaches_xla(graph_def.node, library, set())
        super().__init__(
            tf.__version__, list(self._kwarg_specs), static, inputs
        )

    def run(self, xs):
        tf = self._tf
        if len(xs) == 1 and len(self._kwarg_specs) == 1:
            ((name, spec),) = self._kwarg_specs.items()
            result = self.signature(**{name: tf.constant(xs[0], spec.dtype)})
            outputs = [
                result[k] for k in sorted(result, key=_protocol.output_order)
            ]
        else:
            # The inputs in the structure the serving function takes (a
            # functional model of several inputs: one list argument).
            serve = self.loaded.serving_default
            specs = tf.nest.flatten(serve.input_signature)
            if len(xs) != len(specs):
                raise ValueError(
                    f"The SavedModel takes {len(specs)} input(s). Received: "
                    f"{len(xs)} input(s)"
                )
            args = tf.nest.pack_sequence_as(
                serve.input_signature,
                [tf.constant(x, s.dtype) for x, s in zip(xs, specs)],
            )
            outputs = tf.nest.flatten(serve(*args))
        # bfloat16 outputs as float32, which holds them exactly (NumPy has
        # no bfloat16 of its own).
        return [
            (tf.cast(o, tf.float32) if o.dtype == tf.bfloat16 else o).numpy()
            for o in outputs
        ]

    def meta(self):
        return dict(super().meta(), xla=bool(self.xla))


def reaches_xla(nodes, library, seen):
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
                if reaches_xla(function.node_def, library, seen):
                    return True
    return False


def load(path, *, threads=None, batch=None, inputs=None):
    """Load a SavedModel directory with `tf.saved_model.load`.

    Args:
        path: The SavedModel directory.
        threads: TensorFlow's intra-op threads, and one inter-op thread
            (process-wide, and only before TensorFlow first runs
            anything); `None`: TensorFlow's default.
        batch: The batch the caller will run; the serving function runs
            any batch of a dynamic-batch model, so it is only checked
            against a static one.
        inputs: The model's `{"names", "structure"}`; the serving
            function's own signature gives the structure, so it only
            names the model's inputs (kept in `model_names`).

    Returns:
        A `TFRuntime`: `run(xs)` takes and returns flat lists of arrays
        in the model's order; `xla` says whether it runs through XLA.

    Raises:
        ValueError: If `threads` or `batch` is not a positive integer,
            `batch` differs from a static batch, or the SavedModel has no
            `serving_default` signature.
        RuntimeError: If TensorFlow already runs with other thread counts.
    """
    _protocol.check_options(threads, batch)
    import tensorflow as tf

    if threads is not None:
        threading = tf.config.threading
        try:
            if threading.get_intra_op_parallelism_threads() != threads:
                threading.set_intra_op_parallelism_threads(threads)
            if threading.get_inter_op_parallelism_threads() != 1:
                threading.set_inter_op_parallelism_threads(1)
        except RuntimeError as error:
            raise RuntimeError(
                "TensorFlow already runs in this process with other thread "
                "counts, which it cannot change: load with threads=None, "
                f"or in a fresh process. Received: threads={threads}"
            ) from error
    runtime = TFRuntime(tf.saved_model.load(path), tf, inputs)
    _protocol.check_batch(batch, runtime.static_batch, "TensorFlow")
    return runtime


if __name__ == "__main__":
    _protocol.main(load)
