"""keras_norms end to end: train a small CNN with each norm on the digits.

Trains the same small CNN on scikit-learn's bundled 8x8 digits images (no
download) with each of our normalization layers, and prints a table of
test accuracy per norm. Input statistics (per-channel mean and variance)
come from the training split only, through `keras.layers.Normalization`.

    python examples/demo.py            # the README's demo
    python examples/demo.py --epochs 1 # a quick check

Runs on whichever Keras backend `KERAS_BACKEND` names.
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

import keras_norms as kn  # noqa: E402

NORMS = {
    "BatchNormalization": lambda: kn.BatchNormalization(),
    "GroupNormalization(4)": lambda: kn.GroupNormalization(groups=4),
    "InstanceNormalization": lambda: kn.InstanceNormalization(),
    "LayerNormalization": lambda: kn.LayerNormalization(axis=[1, 2, 3]),
    "none": None,
}


def load_data(seed=0):
    """Digits as (N, 8, 8, 1) float32 images, split 75/25, stratified."""
    digits = load_digits()
    x = digits.images.astype("float32")[..., None]
    y = digits.target.astype("int32")
    return train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)


def build_model(make_norm, x_train):
    # Fixed data normalization from the training split only (adapt), as
    # the Gluon tutorial warns: test statistics must not leak in.
    data_norm = keras.layers.Normalization(axis=-1)
    data_norm.adapt(x_train)
    layers = [keras.Input(x_train.shape[1:]), data_norm]
    for filters in (16, 32):
        layers.append(keras.layers.Conv2D(filters, 3, padding="same"))
        if make_norm is not None:
            layers.append(make_norm())
        layers.append(keras.layers.ReLU())
    layers += [
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(32, 3, padding="same"),
        keras.layers.ReLU(),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(10, activation="softmax"),
    ]
    return keras.Sequential(layers)


def train_all(epochs, batch_size, verbose):
    x_train, x_test, y_train, y_test = load_data()
    results = {}
    for name, make_norm in NORMS.items():
        keras.utils.set_random_seed(0)
        model = build_model(make_norm, x_train)
        model.compile(
            keras.optimizers.Adam(3e-3),
            "sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        print(f"\n{name}")
        start = time.perf_counter()
        model.fit(
            x_train,
            y_train,
            epochs=epochs,
            batch_size=batch_size,
            verbose=verbose,
        )
        seconds = time.perf_counter() - start
        _, accuracy = model.evaluate(x_test, y_test, verbose=0)
        results[name] = (accuracy, seconds, model)
    return results, (x_test, y_test)


def print_table(results):
    print(f"\n{'normalization':<24}{'test accuracy':>14}{'train s':>10}")
    for name, (accuracy, seconds, _) in results.items():
        print(f"{name:<24}{accuracy:>14.4f}{seconds:>10.1f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--verbose", type=int, default=1)
    args = parser.parse_args(argv)
    print(f"keras {keras.__version__}, backend {keras.backend.backend()}")
    results, _ = train_all(args.epochs, args.batch_size, args.verbose)
    print_table(results)
    return results


if __name__ == "__main__":
    main()
