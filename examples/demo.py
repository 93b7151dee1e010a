"""keras_norms end to end: train with each norm, then fold and export.

1. Trains the same small CNN on scikit-learn's bundled 8x8 digits images
   (no download) with each of our normalization layers, and prints a table
   of test accuracy per norm. Input statistics (per-channel mean and
   variance) come from the training split only, through
   `keras.layers.Normalization`.
2. Takes the best model with BatchNormalization, recomputes its population
   statistics with the weights frozen (`recompute_batch_norm_statistics`,
   PreciseBN), folds every BatchNormalization into the convolution before
   it and exports an XLA-compiled TensorFlow SavedModel
   (`export_saved_model`).
3. Reloads the SavedModel with plain TensorFlow (no Keras), checks that its
   predictions match the model's, and prints the inference speedup from
   folding.
4. On the TensorFlow backend, exports the folded model to LiteRT in float32
   and in int8 (`kn.export(..., quantize="int8")`, calibrated on training
   images only) and prints both test accuracies, run by the LiteRT
   interpreter, and the file sizes.

    python examples/demo.py            # the README's demo
    python examples/demo.py --epochs 1 # a quick check

Runs on whichever Keras backend `KERAS_BACKEND` names.
"""

import argparse
import importlib.util
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

import keras_norms as kn  # noqa: E402
from keras_norms.saved_model import run_saved_model  # noqa: E402

NORMS = {
    "BatchNormalization": lambda: kn.BatchNormalization(),
    "GroupNormalization(4)": lambda: kn.GroupNormalization(groups=4),
    "InstanceNormalization": lambda: kn.InstanceNormalization(),
    "LayerNormalization": lambda: kn.LayerNormalization(axis=[1, 2, 3]),
    "BatchInstanceNormalization": lambda: kn.BatchInstanceNormalization(),
    "SwitchableNormalization": lambda: kn.SwitchableNormalization(),
    "none": None,
}
# The norms whose model has BatchNormalization statistics to fold.
FOLDABLE = ("BatchNormalization",)


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
        layers.append(
            keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)
        )
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
    return results, (x_train, x_test, y_test)


def print_table(results):
    print(f"\n{'normalization':<28}{'test accuracy':>14}{'train s':>10}")
    for name, (accuracy, seconds, _) in results.items():
        print(f"{name:<28}{accuracy:>14.4f}{seconds:>10.1f}")


def median_seconds(fn, x, repeats=30):
    """Median wall time of `fn(x)` (outputs fetched), after a warm-up."""
    keras.ops.convert_to_numpy(fn(x))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        keras.ops.convert_to_numpy(fn(x))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def fold_and_export(name, model, data, verbose):
    """PreciseBN, fold, export with XLA, reload with TensorFlow, compare."""
    x_train, x_test, y_test = data
    print(f"\nfolding and exporting the best BatchNormalization model: {name}")
    _, before = model.evaluate(x_test, y_test, verbose=0)
    kn.recompute_batch_norm_statistics(
        model, x_train, batch_size=64, verbose=verbose
    )
    _, after = model.evaluate(x_test, y_test, verbose=0)
    print(
        f"test accuracy with moving statistics {before:.4f}, with "
        f"precise (recomputed) statistics {after:.4f}"
    )
    folded = kn.fold_batch_norms(model, verbose=verbose)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "digits_savedmodel")
        kn.export_saved_model(folded, path, fold=False, verbose=0)
        # Plain TensorFlow (a child process on the torch backend).
        served, xla = run_saved_model(path, x_test, return_xla=True)
    expected = keras.ops.convert_to_numpy(model(x_test, training=False))
    error = float(np.abs(served - expected).max())
    same = float(np.mean(served.argmax(-1) == expected.argmax(-1)))
    print(
        f"SavedModel (serving function XLA-compiled: {xla}) reloaded with "
        f"tf.saved_model.load: max |difference| {error:.1e}, same class for "
        f"{100 * same:.1f}% of the test set"
    )
    if not (xla and error < 1e-4 and same == 1.0):
        raise SystemExit("the exported model does not match the Keras model")
    batch = x_test[:256]
    unfolded_s = median_seconds(lambda b: model(b, training=False), batch)
    folded_s = median_seconds(lambda b: folded(b, training=False), batch)
    print(
        f"inference on {len(batch)} images ({keras.backend.backend()}, "
        f"eager): {1e3 * unfolded_s:.2f} ms unfolded, {1e3 * folded_s:.2f} ms "
        f"folded: speedup x{unfolded_s / folded_s:.2f}"
    )


def litert_int8(model, data):
    """Float32 and int8 LiteRT exports: test accuracy and size, side by side."""
    x_train, x_test, y_test = data
    if keras.backend.backend() != "tensorflow":
        print(
            "\nint8 LiteRT: exported from the TensorFlow backend "
            "(KERAS_BACKEND=tensorflow python examples/demo.py)"
        )
        return
    if importlib.util.find_spec("ai_edge_litert") is None:
        print("\nint8 LiteRT: needs ai_edge_litert (keras_norms[deploy])")
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for quantize in (None, "int8"):
            path = os.path.join(tmp, f"digits_{quantize or 'float32'}.tflite")
            kn.export(
                model,
                path,
                format="litert",
                quantize=quantize,
                representative_data=x_train if quantize else None,
            )
            accuracy = litert_accuracy(path, x_test, y_test)
            rows.append(
                (quantize or "float32", accuracy, os.path.getsize(path))
            )
    print("\nLiteRT (folded; int8 calibrated on training images only)")
    print(f"{'':<10}{'test accuracy':>14}{'size KB':>10}")
    for name, accuracy, size in rows:
        print(f"{name:<10}{accuracy:>14.4f}{size / 1024:>10.1f}")


def litert_accuracy(path, x, y):
    """Accuracy of the .tflite classifier at `path`, run by LiteRT."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path)
    (inp,) = interpreter.get_input_details()
    interpreter.resize_tensor_input(inp["index"], x.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], x)
    interpreter.invoke()
    (out,) = interpreter.get_output_details()
    predicted = interpreter.get_tensor(out["index"]).argmax(-1)
    return float(np.mean(predicted == y))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--verbose", type=int, default=1)
    args = parser.parse_args(argv)
    print(f"keras {keras.__version__}, backend {keras.backend.backend()}")
    results, data = train_all(args.epochs, args.batch_size, args.verbose)
    print_table(results)
    name = max(FOLDABLE, key=lambda n: results[n][0])
    fold_and_export(name, results[name][2], data, args.verbose)
    litert_int8(results[name][2], data)
    return results


if __name__ == "__main__":
    main()
