"""Train with SyncBatchNormalization under tf.distribute.MirroredStrategy.

Two logical CPU devices stand in for two GPUs: `model.fit` splits every
global batch of 64 digits into two shards of 32, and each
SyncBatchNormalization layer normalizes both shards with the statistics of
the whole batch of 64 (one all-reduce per layer per step), so the moving
statistics stay identical on the two replicas.

    python examples/sync_batchnorm.py --epochs 2

The data (8x8 handwritten digits) ships with scikit-learn.
"""

import argparse
import os

os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402

# Logical devices must be configured before TensorFlow initializes them.
_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    _cpu,
    [
        tf.config.LogicalDeviceConfiguration(),
        tf.config.LogicalDeviceConfiguration(),
    ],
)

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

from keras_norms.layers.sync_batch_normalization import SyncBatchNormalization  # noqa: E402


def build_model():
    return keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(64, use_bias=False),
            SyncBatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.Dense(32, use_bias=False),
            SyncBatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.Dense(10),
        ]
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)

    keras.utils.set_random_seed(0)
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, random_state=0
    )

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    print(f"replicas in sync: {strategy.num_replicas_in_sync}")
    with strategy.scope():
        model = build_model()
        model.compile(
            optimizer=keras.optimizers.Adam(1e-2),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
    model.fit(
        x_train,
        y_train,
        batch_size=args.batch_size,
        epochs=args.epochs,
        verbose=2,
    )
    loss, accuracy = model.evaluate(x_test, y_test, verbose=0)
    print(f"test accuracy: {accuracy:.3f} (loss {loss:.3f})")

    # The moving statistics are updated with the global-batch statistics,
    # so every replica holds the same values.
    for layer in model.layers:
        if isinstance(layer, SyncBatchNormalization):
            copies = strategy.experimental_local_results(
                layer.moving_variance.value
            )
            same = all(
                np.array_equal(np.asarray(copies[0]), np.asarray(c))
                for c in copies
            )
            print(
                f"{layer.name}: moving statistics identical on replicas: {same}"
            )
    return accuracy


if __name__ == "__main__":
    main()
