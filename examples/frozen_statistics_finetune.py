"""Fine-tuning with frozen BatchNorm statistics (`use_global_stats=True`).

1. pretrains a small Conv-BN-ReLU network on the digits 0-4 of
   scikit-learn's bundled 8x8 digits (no download), at batch size 32;
2. fine-tunes a copy of it on a small set of the digits 5-9 with small
   batches (`--batch-size 2` by default), three ways:

   - `batch statistics`: our `BatchNormalization` as usual: every step
     normalizes with the statistics of its 2 images and moves the moving
     statistics towards them;
   - `use_global_stats=True` (MXNet's name for it): normalize with the
     pretrained moving statistics in training too and never update them,
     while `gamma` and `beta` keep learning (the Gluon tutorial's advice for
     a pretrained backbone inside a model trained with small batches);
   - `trainable=False` BN: Keras' own recipe, which freezes the statistics
     *and* `gamma`/`beta` (a layer with `trainable=False` runs in
     inference mode);

3. prints the test accuracy on the digits 5-9 of each.

With 2 images a step, batch statistics are noisy and differ from the moving
statistics used at test time; frozen statistics make training and test
normalize alike, but with the statistics of the *pretraining* data. Which
effect wins depends on how far the new data's feature statistics are from
the old: here (digits 0-4 -> 5-9) they move enough that the batch
statistics run wins; see docs/guide/frozen_statistics.md for the numbers.

    python examples/frozen_statistics_finetune.py
    python examples/frozen_statistics_finetune.py --quick   # CI setting

Writes `frozen_statistics_finetune.png` under `--out` (default `outputs/`).
Runs on whichever Keras backend `KERAS_BACKEND` names.
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

from keras_norms.layers.batch_normalization import BatchNormalization  # noqa: E402

L = keras.layers


def load_data(seed=0):
    digits = load_digits()
    x = digits.images.astype("float32")[..., None]
    y = digits.target.astype("int32")
    return train_test_split(x, y, test_size=0.3, random_state=seed, stratify=y)


def build_model(x_adapt, use_global_stats=False):
    data_norm = L.Normalization(axis=-1)
    data_norm.adapt(x_adapt)  # pretraining split only
    layers = [keras.Input((8, 8, 1)), data_norm]
    for filters in (16, 32):
        layers += [
            L.Conv2D(filters, 3, padding="same", use_bias=False),
            BatchNormalization(use_global_stats=use_global_stats),
            L.ReLU(),
        ]
    layers += [
        L.MaxPooling2D(),
        L.Conv2D(32, 3, padding="same", use_bias=False),
        BatchNormalization(use_global_stats=use_global_stats),
        L.ReLU(),
        L.GlobalAveragePooling2D(),
        L.Dense(10, activation="softmax"),
    ]
    return keras.Sequential(layers)


def compile_model(model, learning_rate):
    model.compile(
        keras.optimizers.Adam(learning_rate),
        "sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrain-epochs", type=int, default=10)
    parser.add_argument(
        "--epochs", type=int, default=5, help="fine-tuning epochs"
    )
    parser.add_argument(
        "--batch-size", type=int, default=2, help="fine-tuning batch size"
    )
    parser.add_argument(
        "--finetune-size",
        type=int,
        default=200,
        help="number of 5-9 training images to fine-tune on",
    )
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="CI setting: 1 pretraining and 1 fine-tuning epoch on 40 images",
    )
    parser.add_argument("--out", default="outputs")
    args = parser.parse_args(argv)
    if args.quick:
        args.pretrain_epochs, args.epochs, args.finetune_size = 1, 1, 40

    print(f"keras {keras.__version__}, backend {keras.backend.backend()}")
    x_train, x_test, y_train, y_test = load_data(args.seed)
    old, new = y_train < 5, y_train >= 5
    x_old, y_old = x_train[old], y_train[old]
    x_new = x_train[new][: args.finetune_size]
    y_new = y_train[new][: args.finetune_size]
    test_new = y_test >= 5

    keras.utils.set_random_seed(args.seed)
    pretrained = build_model(x_old)
    compile_model(pretrained, 3e-3)
    pretrained.fit(
        x_old, y_old, epochs=args.pretrain_epochs, batch_size=32, verbose=0
    )
    _, acc_old = pretrained.evaluate(
        x_test[~test_new], y_test[~test_new], verbose=0
    )
    _, acc_before = pretrained.evaluate(
        x_test[test_new], y_test[test_new], verbose=0
    )
    print(
        f"pretrained on 0-4: test accuracy on 0-4 {acc_old:.4f}, "
        f"on 5-9 {acc_before:.4f}"
    )
    weights = pretrained.get_weights()

    variants = {
        "batch statistics": dict(use_global_stats=False, freeze=False),
        "use_global_stats=True": dict(use_global_stats=True, freeze=False),
        "BN trainable=False": dict(use_global_stats=False, freeze=True),
    }
    results = {}
    for name, variant in variants.items():
        keras.utils.set_random_seed(args.seed + 1)
        model = build_model(x_old, variant["use_global_stats"])
        model.set_weights(weights)
        if variant["freeze"]:
            for layer in model.layers:
                if isinstance(layer, BatchNormalization):
                    layer.trainable = False
        compile_model(model, args.learning_rate)
        model.fit(
            x_new,
            y_new,
            epochs=args.epochs,
            batch_size=args.batch_size,
            verbose=0,
        )
        _, accuracy = model.evaluate(
            x_test[test_new], y_test[test_new], verbose=0
        )
        results[name] = float(accuracy)

    print(
        f"\nfine-tuned on {len(x_new)} images of 5-9, batch size "
        f"{args.batch_size}, {args.epochs} epochs"
    )
    print(f"{'BatchNorm during fine-tuning':<28}{'test accuracy on 5-9':>22}")
    for name, accuracy in results.items():
        print(f"{name:<28}{accuracy:>22.4f}")

    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "frozen_statistics_finetune.png")
    fig, ax = plt.subplots(figsize=(5.5, 3))
    ax.barh(list(results), list(results.values()), color="tab:blue")
    ax.set_xlim(0, 1)
    ax.set_xlabel("test accuracy on digits 5-9")
    ax.set_title(f"fine-tuning at batch size {args.batch_size}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
