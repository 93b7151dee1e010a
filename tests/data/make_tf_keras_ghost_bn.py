"""Write tf_keras_ghost_bn.npz: tf_keras ghost batch norms, run by tf_keras.

The peer reference of tests/test_legacy_configs.py's ghost-batch tests:
tf_keras' own `BatchNormalization(virtual_batch_size=4)` on an ordered
batch (samples laid out in blocks, as multi-crop batches are), built and
unbuilt, channels-last and channels-first, one training step and one
inference call. tf_keras needs the `tensorflow` package, which pulls a
second TensorFlow next to `tensorflow-cpu`, so it is not a test
dependency; to regenerate, in a scratch environment:

    pip install tf_keras==2.21.0 tensorflow-cpu==2.21.0 --no-deps ...
    python tests/data/make_tf_keras_ghost_bn.py
"""

import json
import pathlib

import numpy as np
import tf_keras

# (name, constructor axis, input shape, whether the layer is built before
# it is serialized)
CASES = [
    ("built_last", -1, (8, 5, 5, 3), True),
    ("built_first", 1, (8, 3, 5, 5), True),
    ("unbuilt_int3", 3, (8, 5, 5, 3), False),
    ("unbuilt_int1", 1, (8, 3, 5, 5), False),
]


def main():
    out = {}
    configs = {}
    for name, axis, shape, built in CASES:
        rng = np.random.default_rng(0)
        # Blocks of samples with different means: the grouping matters.
        x = rng.normal(size=shape).astype("float32")
        x += np.repeat(np.arange(4.0), 2)[:, None, None, None] * 3.0
        layer = tf_keras.layers.BatchNormalization(
            axis=axis, virtual_batch_size=4, momentum=0.5
        )
        if built:
            layer.build(shape)
        configs[name] = tf_keras.layers.serialize(layer)
        out[f"{name}/x"] = x
        out[f"{name}/train"] = layer(x, training=True).numpy()
        out[f"{name}/moving_mean"] = layer.moving_mean.numpy().ravel()
        out[f"{name}/moving_variance"] = layer.moving_variance.numpy().ravel()
        out[f"{name}/infer"] = layer(x[:3], training=False).numpy()
    here = pathlib.Path(__file__).parent
    np.savez_compressed(here / "tf_keras_ghost_bn.npz", **out)
    (here / "tf_keras_ghost_bn.json").write_text(
        json.dumps(configs, indent=1, sort_keys=True) + "\n"
    )


if __name__ == "__main__":
    main()
