"""The input data of a statistics pass, batched as `model.predict` batches
it (arrays, datasets, generators, torch data loaders)."""

import types

import keras

from keras_norms import _compat
from keras_norms import _validation


def count_samples(x):
    leaves = keras.tree.flatten(x)
    if not leaves:
        return 0
    shape = getattr(leaves[0], "shape", None)
    if shape is None or len(shape) == 0:
        return 1
    return int(shape[0])


def input_batches(x, batch_size, steps):
    """`(num_batches or None, iterator of input batches)` as predict sees x."""
    if isinstance(x, types.GeneratorType):
        # Keras wants tuples from generators; a bare batch is the inputs.
        try:
            adapter = _compat.data_adapter(
                (b if isinstance(b, tuple) else (b,) for b in x)
            )
        except ValueError as e:
            if "empty generator" not in str(e):
                raise
            raise ValueError(
                "`x` holds no samples. Received: x=<empty generator>"
            ) from None
    else:
        try:
            adapter = _compat.data_adapter(
                x,
                # Keras' array adapter would otherwise spread the samples
                # over `steps` batches: keep `predict`'s default of 32.
                batch_size=batch_size or 32,
                steps=steps,
            )
        except (ZeroDivisionError, IndexError) as e:
            raise ValueError(
                f"`x` holds no samples. Received: x={_validation.describe(x)}"
            ) from e
    total = adapter.num_batches
    if steps is not None:
        total = steps if total is None else min(total, steps)

    def iterate():
        adapter.on_epoch_begin()
        try:
            for i, data in enumerate(adapter.get_numpy_iterator()):
                if steps is not None and i >= steps:
                    break
                yield _compat.unpack_inputs(data)
        finally:
            adapter.on_epoch_end()

    return total, iterate()


def to_tensors(inputs):
    return keras.tree.map_structure(keras.ops.convert_to_tensor, inputs)
