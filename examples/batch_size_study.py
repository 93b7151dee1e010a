"""Batch size study: BatchNorm against GroupNorm (and BIN, SN) on the digits.

The Group Normalization paper (Wu & He, 2018, Fig. 1) shows that the error
of BatchNorm grows as the batch per worker shrinks, while GroupNorm, whose
statistics never look across the batch, does not care. This script
reproduces that finding on a small scale: the same small CNN is trained on
scikit-learn's bundled 8x8 digits (no download) with each normalization at
batch sizes 32, 8, 4 and 2, and the test accuracy is plotted against the
batch size.

Protocol (the GN paper's): every run sees the **same number of epochs**
(the same number of training samples, so a smaller batch takes more,
noisier steps), and the SGD learning rate is scaled linearly with the batch
size (`lr = 0.1 * batch_size / 32`, Goyal et al., 2017), so that each
sample moves the weights by about as much at every batch size. Same
epochs rather than same steps, because at same steps the batch-2 run
would see 16 times fewer images than the batch-32 run and lose for that
reason alone. The input is normalized with `keras.layers.Normalization`
adapted on the training split only. Every run starts from the same seed;
`--seeds 3` averages three.

    python examples/batch_size_study.py                # the real setting
    python examples/batch_size_study.py --quick        # CI: seconds
    KERAS_BACKEND=jax python examples/batch_size_study.py --epochs 10

Prints a table and writes `batch_size_study.png` and `batch_size_study.json`
under `--out` (default `outputs/`). Runs on whichever Keras backend
`KERAS_BACKEND` names.
"""

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

from keras_norms.layers.batch_instance_normalization import (  # noqa: E402
    BatchInstanceNormalization,
)
from keras_norms.layers.batch_normalization import BatchNormalization  # noqa: E402
from keras_norms.layers.group_normalization import GroupNormalization  # noqa: E402
from keras_norms.layers.switchable_normalization import SwitchableNormalization  # noqa: E402

NORMS = {
    "BN": ("BatchNormalization", lambda: BatchNormalization()),
    "GN": (
        "GroupNormalization(groups=4)",
        lambda: GroupNormalization(groups=4),
    ),
    "BIN": ("BatchInstanceNormalization", lambda: BatchInstanceNormalization()),
    "SN": ("SwitchableNormalization", lambda: SwitchableNormalization()),
}


def load_data(train_size=None, seed=0):
    """Digits as (N, 8, 8, 1) float32 images, split 75/25, stratified."""
    digits = load_digits()
    x = digits.images.astype("float32")[..., None]
    y = digits.target.astype("int32")
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, random_state=seed, stratify=y
    )
    if train_size is not None:
        x_train, y_train = x_train[:train_size], y_train[:train_size]
    return x_train, x_test, y_train, y_test


def build_model(make_norm, x_train):
    """Conv-Norm-ReLU x2, pool, Conv-Norm-ReLU, global pool, softmax."""
    data_norm = keras.layers.Normalization(axis=-1)
    data_norm.adapt(x_train)  # training split only: no test leakage
    L = keras.layers
    return keras.Sequential(
        [
            keras.Input(x_train.shape[1:]),
            data_norm,
            L.Conv2D(16, 3, padding="same", use_bias=False),
            make_norm(),
            L.ReLU(),
            L.Conv2D(32, 3, padding="same", use_bias=False),
            make_norm(),
            L.ReLU(),
            L.MaxPooling2D(),
            L.Conv2D(32, 3, padding="same", use_bias=False),
            make_norm(),
            L.ReLU(),
            L.GlobalAveragePooling2D(),
            L.Dense(10, activation="softmax"),
        ]
    )


def run_one(norm, batch_size, data, epochs, base_lr, seed):
    x_train, x_test, y_train, y_test = data
    keras.utils.set_random_seed(seed)
    model = build_model(NORMS[norm][1], x_train)
    model.compile(
        keras.optimizers.SGD(base_lr * batch_size / 32, momentum=0.9),
        "sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.fit(
        x_train,
        y_train,
        epochs=epochs,
        batch_size=batch_size,
        shuffle=True,
        verbose=0,
    )
    # Inference mode: BN/BIN/SN use their moving statistics, GN needs none.
    _, accuracy = model.evaluate(x_test, y_test, batch_size=256, verbose=0)
    return float(accuracy)


def study(norms, batch_sizes, epochs, base_lr, seeds, train_size):
    data = load_data(train_size)
    results = {norm: {} for norm in norms}
    for norm in norms:
        for batch_size in batch_sizes:
            start = time.perf_counter()
            accuracies = [
                run_one(norm, batch_size, data, epochs, base_lr, seed)
                for seed in range(seeds)
            ]
            results[norm][batch_size] = accuracies
            print(
                f"{norm:<4} batch {batch_size:>3}: test accuracy "
                f"{np.mean(accuracies):.4f} ({time.perf_counter() - start:.1f} s)",
                flush=True,
            )
    return results


def print_table(results, batch_sizes):
    header = "norm" + "".join(f"{'batch ' + str(b):>11}" for b in batch_sizes)
    print("\ntest accuracy (mean over seeds)\n" + header)
    for norm, by_batch in results.items():
        cells = "".join(f"{np.mean(by_batch[b]):>11.4f}" for b in batch_sizes)
        print(f"{norm:<4}{cells}")


def plot(results, batch_sizes, path, title):
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for norm, by_batch in results.items():
        means = [np.mean(by_batch[b]) for b in batch_sizes]
        lows = [np.min(by_batch[b]) for b in batch_sizes]
        highs = [np.max(by_batch[b]) for b in batch_sizes]
        ax.plot(batch_sizes, means, marker="o", label=NORMS[norm][0])
        if len(next(iter(by_batch.values()))) > 1:
            ax.fill_between(batch_sizes, lows, highs, alpha=0.15)
    ax.set_xscale("log", base=2)
    ax.set_xticks(batch_sizes)
    ax.set_xticklabels([str(b) for b in batch_sizes])
    ax.invert_xaxis()  # as in the GN paper: batch shrinks to the right
    ax.set_xlabel("batch size (images per step)")
    ax.set_ylabel("test accuracy")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument(
        "--batch-sizes", type=int, nargs="+", default=[32, 8, 4, 2]
    )
    parser.add_argument(
        "--norms", nargs="+", default=list(NORMS), choices=list(NORMS)
    )
    parser.add_argument(
        "--base-lr",
        type=float,
        default=0.1,
        help="SGD learning rate at batch size 32",
    )
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument(
        "--train-size",
        type=int,
        default=None,
        help="use only the first N training images",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="CI setting: 1 epoch, 128 images, BN and GN, batch sizes 32 and 4",
    )
    parser.add_argument("--out", default="outputs")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.train_size = 1, 128
        args.norms, args.batch_sizes = ["BN", "GN"], [32, 4]
    batch_sizes = sorted(set(args.batch_sizes), reverse=True)
    print(
        f"keras {keras.__version__}, backend {keras.backend.backend()}, "
        f"{args.epochs} epochs, base lr {args.base_lr}, seeds {args.seeds}"
    )
    results = study(
        args.norms,
        batch_sizes,
        args.epochs,
        args.base_lr,
        args.seeds,
        args.train_size,
    )
    print_table(results, batch_sizes)
    os.makedirs(args.out, exist_ok=True)
    figure = os.path.join(args.out, "batch_size_study.png")
    title = (
        f"digits, {args.epochs} epochs at every batch size, "
        f"SGD lr {args.base_lr} x batch/32"
    )
    plot(results, batch_sizes, figure, title)
    with open(os.path.join(args.out, "batch_size_study.json"), "w") as f:
        json.dump(
            {
                "backend": keras.backend.backend(),
                "epochs": args.epochs,
                "base_lr": args.base_lr,
                "seeds": args.seeds,
                "results": {
                    n: {str(b): v for b, v in r.items()}
                    for n, r in results.items()
                },
            },
            f,
            indent=1,
        )
    print(f"wrote {figure}")
    return results


if __name__ == "__main__":
    main()
