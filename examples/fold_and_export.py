"""Train a small CNN on sklearn digits, fold its BatchNorms, export with XLA.

1. trains a Conv-BN-ReLU network on the 8x8 digits of
   `sklearn.datasets.load_digits` for `--epochs` epochs;
2. folds every BatchNormalization into the convolution before it
   (`keras_norms.folding.fold_batch_norms`);
3. exports the folded model as a TensorFlow SavedModel with an
   XLA-compiled `serving_default` (`keras_norms.saved_model.export_saved_model`);
4. reloads it with plain TensorFlow (`tf.saved_model.load`; a child process
   on the torch backend) and checks its predictions against the model;
5. prints the inference speedup from folding.

Run: `KERAS_BACKEND=jax python examples/fold_and_export.py --epochs 3`
"""

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from keras_norms.saved_model import export_saved_model  # noqa: E402
from keras_norms.saved_model import run_saved_model  # noqa: E402
from keras_norms.folding import fold_batch_norms  # noqa: E402
from keras_norms.layers.batch_normalization import BatchNormalization  # noqa: E402

L = keras.layers


def make_model():
    inputs = keras.Input((8, 8, 1))
    x = inputs
    for filters in (16, 32):
        x = L.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = BatchNormalization(momentum=0.9)(x)
        x = L.ReLU()(x)
    x = L.MaxPooling2D()(x)
    x = L.Conv2D(32, 3, padding="same", use_bias=False)(x)
    x = BatchNormalization(momentum=0.9)(x)
    x = L.ReLU()(x)
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, L.Dense(10)(x))


def median_time(fn, x, repeats=20):
    fn(x)  # warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        keras.ops.convert_to_numpy(fn(x))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()

    digits = load_digits()
    x = (digits.images[..., None] / 16.0).astype("float32")
    y = digits.target
    rng = np.random.RandomState(0)
    order = rng.permutation(len(x))
    x, y = x[order], y[order]
    x_train, y_train, x_test, y_test = x[:1400], y[:1400], x[1400:], y[1400:]

    keras.utils.set_random_seed(0)
    model = make_model()
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(x_train, y_train, epochs=args.epochs, batch_size=64, verbose=2)
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    print(f"test accuracy: {accuracy:.3f}")

    folded = fold_batch_norms(model)  # prints what it folded
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "digits_savedmodel")
        export_saved_model(folded, path, fold=False, verbose=0)
        served, xla = run_saved_model(path, x_test, return_xla=True)
    expected = keras.ops.convert_to_numpy(model(x_test, training=False))
    err = float(np.abs(served - expected).max())
    same = float(np.mean(served.argmax(-1) == expected.argmax(-1)))
    print(
        f"SavedModel (XLA-compiled: {xla}) vs model: max abs difference "
        f"{err:.1e}, same predicted class for {100 * same:.1f}% of the test set"
    )
    assert err < 1e-4 and same == 1.0

    batch = x_test[:256]
    t_model = median_time(lambda b: model(b, training=False), batch)
    t_folded = median_time(lambda b: folded(b, training=False), batch)
    print(
        f"inference on {len(batch)} digits ({keras.backend.backend()}, "
        f"eager): {1e3 * t_model:.2f} ms with BatchNorm, "
        f"{1e3 * t_folded:.2f} ms folded, speedup x{t_model / t_folded:.2f}"
    )


if __name__ == "__main__":
    main()
