"""Precise BatchNorm statistics on the sklearn digits: moving vs precise.

1. trains a small Conv-BN-ReLU network (our `BatchNormalization`, Keras'
   default `momentum=0.99`) on the 8x8 digits of
   `sklearn.datasets.load_digits` for a short run (`--epochs`): with ~22
   steps an epoch, the moving averages still remember the statistics of
   the network's first steps;
2. prints `batch_norm_statistics_report` (how far each layer's moving
   statistics are from precise ones on the training images) and the test
   accuracy with the moving statistics;
3. replaces them by precise statistics
   (`recompute_batch_norm_statistics`: the average of training-mode batch
   statistics of the final network over the training images, in training
   size batches) and prints the report and the test accuracy again;
4. folds the BatchNormalizations into the convolutions
   (`keras_norms.folding.fold_batch_norms`), exports an XLA-compiled
   SavedModel (`keras_norms.saved_model.export_saved_model`), and prints the
   accuracy of both (`--no-export` skips the SavedModel);
5. with `--out figure.png`, draws the accuracies and the per-layer mean
   shifts (matplotlib, Agg).

Run: `KERAS_BACKEND=jax python examples/precise_batchnorm.py --epochs 3`
(`--epochs 1` is the quick CI setting).
"""

import argparse
import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from keras_norms.layers.batch_normalization import BatchNormalization  # noqa: E402
from keras_norms.precise import batch_norm_statistics_report  # noqa: E402
from keras_norms.precise import recompute_batch_norm_statistics  # noqa: E402

L = keras.layers
BATCH_SIZE = 64


def load_data():
    digits = load_digits()
    x = (digits.images[..., None] / 16.0).astype("float32")
    y = digits.target.astype("int32")
    order = np.random.RandomState(0).permutation(len(x))
    x, y = x[order], y[order]
    return x[:1400], y[:1400], x[1400:], y[1400:]


def make_model(momentum):
    inputs = keras.Input((8, 8, 1))
    x = inputs
    for i, filters in enumerate((16, 32)):
        x = L.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = BatchNormalization(momentum=momentum, name=f"bn{i + 1}")(x)
        x = L.ReLU()(x)
    x = L.MaxPooling2D()(x)
    x = L.Conv2D(32, 3, padding="same", use_bias=False)(x)
    x = BatchNormalization(momentum=momentum, name="bn3")(x)
    x = L.ReLU()(x)
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, L.Dense(10)(x))


def accuracy(logits, y):
    return float(np.mean(np.argmax(logits, -1) == y))


def fold_and_export(model, x_test, y_test, export):
    """Accuracies of the folded model and of its SavedModel (or None)."""
    try:
        from keras_norms.folding import fold_batch_norms
    except ImportError:  # folding not available in this checkout
        return {}
    folded = fold_batch_norms(model, verbose=0)
    out = {"folded": accuracy(keras.ops.convert_to_numpy(
        folded(x_test, training=False)), y_test)}
    if export:
        from keras_norms.saved_model import export_saved_model
        from keras_norms.saved_model import run_saved_model

        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "digits_precise")
            export_saved_model(folded, path, fold=False, verbose=0)
            out["SavedModel (XLA)"] = accuracy(
                run_saved_model(path, x_test), y_test
            )
    return out


def draw(path, accuracies, before, after):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.2))
    names = list(accuracies)
    ax1.bar(names, [accuracies[n] for n in names], color="C0")
    ax1.set_ylim(0, 1)
    ax1.set_ylabel("test accuracy")
    ax1.tick_params(axis="x", labelrotation=20)
    layers = list(before)
    pos = np.arange(len(layers))
    ax2.bar(pos - 0.2, [before[n]["mean_shift"] for n in layers], 0.4,
            label="moving")
    ax2.bar(pos + 0.2, [after[n]["mean_shift"] for n in layers], 0.4,
            label="precise")
    ax2.set_xticks(pos, layers)
    ax2.set_ylabel("largest mean shift (std units)")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"figure written to {path}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--momentum", type=float, default=0.99)
    parser.add_argument("--no-export", action="store_true")
    parser.add_argument("--out", default=None, help="figure path (.png)")
    args = parser.parse_args(argv)
    print(f"keras {keras.__version__}, backend {keras.backend.backend()}")

    x_train, y_train, x_test, y_test = load_data()
    keras.utils.set_random_seed(0)
    model = make_model(args.momentum)
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(x_train, y_train, epochs=args.epochs, batch_size=BATCH_SIZE,
              verbose=2)

    print("\nWith the moving statistics:")
    before = batch_norm_statistics_report(model, x_train, batch_size=BATCH_SIZE)
    accuracies = {"moving": model.evaluate(x_test, y_test, verbose=0)[1]}

    print("\nRecomputing precise statistics on the training images:")
    recompute_batch_norm_statistics(model, x_train, batch_size=BATCH_SIZE)
    after = batch_norm_statistics_report(model, x_train, batch_size=BATCH_SIZE)
    accuracies["precise"] = model.evaluate(x_test, y_test, verbose=0)[1]
    accuracies.update(
        fold_and_export(model, x_test, y_test, export=not args.no_export)
    )

    print(f"\ntest accuracy after {args.epochs} epoch(s), "
          f"momentum {args.momentum}:")
    for name, value in accuracies.items():
        print(f"  {name:<20}{value:.4f}")
    if args.out:
        draw(args.out, accuracies, before, after)
    return accuracies


if __name__ == "__main__":
    main()
