"""What does Switchable Normalization learn? Importances on the digits.

Trains a small CNN with three `SwitchableNormalization` layers on
scikit-learn's bundled 8x8 digits images (no download) with `model.fit`,
then reads the learned mixture of each layer with
`keras_norms.inspection.switchable_importances`: how much the instance,
layer and batch moments contribute to the mean and to the variance each
layer normalizes with (Luo et al., 2018, Fig. 1 and 4). Prints the table
and saves a bar plot.

    python examples/switchable_importance.py                 # 30 epochs
    python examples/switchable_importance.py --epochs 1      # quick check
    KERAS_NORMS_EXAMPLE_SMALL=1 python examples/switchable_importance.py

Runs on whichever Keras backend `KERAS_BACKEND` names.
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

from keras_norms import inspection  # noqa: E402
from keras_norms.layers.switchable_normalization import SWITCH_NAMES  # noqa: E402
from keras_norms.layers.switchable_normalization import SwitchableNormalization  # noqa: E402

SMALL = os.environ.get("KERAS_NORMS_EXAMPLE_SMALL", "") not in ("", "0")


def load_data(seed=0):
    """Digits as (N, 8, 8, 1) float32 images in [0, 1], split 75/25."""
    digits = load_digits()
    x = (digits.images.astype("float32") / 16.0)[..., None]
    y = digits.target.astype("int32")
    return train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)


def build_model(input_shape):
    layers = [keras.Input(input_shape)]
    for i, filters in enumerate((16, 32, 32)):
        layers += [
            keras.layers.Conv2D(filters, 3, padding="same", use_bias=False),
            SwitchableNormalization(name=f"sn{i + 1}"),
            keras.layers.ReLU(),
        ]
        if i == 1:
            layers.append(keras.layers.MaxPooling2D())
    layers += [
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(10, activation="softmax"),
    ]
    return keras.Sequential(layers, name="sn_cnn")


def plot_importances(importances, path):
    names = list(importances)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    width = 0.8 / len(SWITCH_NAMES)
    xs = np.arange(len(names))
    for ax, kind in zip(axes, ("mean", "variance")):
        for j, switch in enumerate(SWITCH_NAMES):
            values = [importances[n][kind][switch] for n in names]
            ax.bar(xs + (j - 1) * width, values, width, label=switch)
        ax.axhline(1 / 3, color="gray", lw=0.8, ls="--")
        ax.set_xticks(xs, names)
        ax.set_title(f"{kind} importances")
        ax.set_ylim(0, 1)
    axes[0].set_ylabel("softmax weight")
    axes[0].legend(title="moments", fontsize=8)
    fig.suptitle(
        f"SwitchableNormalization on digits ({keras.backend.backend()})"
    )
    fig.tight_layout()
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1 if SMALL else 30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--out", default="outputs/switchable_importance.png")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    keras.utils.set_random_seed(args.seed)
    x_train, x_test, y_train, y_test = load_data(args.seed)
    model = build_model(x_train.shape[1:])
    model.compile(
        keras.optimizers.Adam(args.learning_rate),
        "sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.fit(
        x_train,
        y_train,
        batch_size=args.batch_size,
        epochs=args.epochs,
        verbose=0,
    )
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    importances = inspection.switchable_importances(model)
    print(
        f"backend {keras.backend.backend()}, {args.epochs} epochs, "
        f"test accuracy {accuracy:.3f}"
    )
    print(inspection.format_importances(importances))
    plot_importances(importances, args.out)
    print(f"saved {args.out}")
    return importances, accuracy


if __name__ == "__main__":
    main()
