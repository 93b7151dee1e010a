"""Inference time of a Conv-BN-ReLU ResNet: unfolded, folded, folded + XLA.

Prints, in one process, the median time of one batch (32 images of
64x64x3) through:

- the Keras model with its BatchNormalization layers (inference mode),
- the same model after `fold_batch_norms`,
- the folded model exported with `export_saved_model` (XLA-compiled
  `serving_default`) and reloaded with `tf.saved_model.load`,

as medians over interleaved rounds (each round times every variant once,
so drifts in machine load hit all of them alike), and the ratios.

The two Keras models run as compiled functions of their backend
(`tf.function` without XLA on TensorFlow, `jax.jit` on JAX, eager on torch),
the fair baseline for "what folding alone buys".

Run: `KERAS_BACKEND=tensorflow python benchmarks/bench_folding.py`
(`--rounds`, `--blocks`). Never run as a test.
"""

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_norms.saved_model import export_saved_model  # noqa: E402
from keras_norms.folding import fold_batch_norms  # noqa: E402

L = keras.layers


def resnet(blocks=3, width=32):
    """Conv-BN-ReLU stem and residual blocks, no biases before the BNs."""
    inputs = keras.Input((64, 64, 3))
    x = L.Conv2D(width, 3, strides=2, padding="same", use_bias=False)(inputs)
    x = L.ReLU()(L.BatchNormalization()(x))
    for i in range(blocks):
        y = L.Conv2D(width, 3, padding="same", use_bias=False)(x)
        y = L.ReLU()(L.BatchNormalization()(y))
        y = L.Conv2D(width, 3, padding="same", use_bias=False)(y)
        y = L.BatchNormalization()(y)
        x = L.ReLU()(L.Add()([x, y]))
        if i == blocks // 2:
            x = L.Conv2D(width * 2, 1, strides=2, use_bias=False)(x)
            x = L.BatchNormalization()(x)
            width *= 2
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, L.Dense(10)(x))


def randomize_statistics(model, seed=0):
    rng = np.random.RandomState(seed)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            c = layer.moving_mean.shape
            layer.moving_mean.assign(0.1 * rng.randn(*c).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 2, c).astype("float32"))


def compiled(model):
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        fn = tf.function(lambda x: model(x, training=False), jit_compile=False)
        return lambda x: fn(x).numpy()
    if backend == "jax":
        import jax

        fn = jax.jit(
            lambda tv, ntv, x: model.stateless_call(tv, ntv, x, training=False)[0]
        )
        tv = [v.value for v in model.trainable_variables]
        ntv = [v.value for v in model.non_trainable_variables]
        return lambda x: np.asarray(fn(tv, ntv, x))
    import torch

    def run(x):
        with torch.no_grad():
            return keras.ops.convert_to_numpy(model(x, training=False))

    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--blocks", type=int, default=3)
    args = parser.parse_args()

    model = resnet(args.blocks)
    randomize_statistics(model)
    folded = fold_batch_norms(model, verbose=0)
    x = np.random.RandomState(0).randn(32, 64, 64, 3).astype("float32")

    variants = {"unfolded": compiled(model), "folded": compiled(folded)}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "served")
        export_saved_model(folded, path, fold=False, verbose=0)
        if keras.backend.backend() != "torch":
            import tensorflow as tf

            serve = tf.saved_model.load(path).signatures["serving_default"]
            xt = tf.constant(x)
            variants["folded+XLA SavedModel"] = lambda _: (
                next(iter(serve(xt).values())).numpy()
            )
        reference = variants["unfolded"](x)
        for name, fn in variants.items():
            err = np.abs(fn(x) - reference).max()  # also warms up
            fn(x)
            print(f"{name:>24}: max abs difference {err:.1e}")
        times = {name: [] for name in variants}
        for _ in range(args.rounds):
            for name, fn in variants.items():
                start = time.perf_counter()
                fn(x)
                times[name].append(time.perf_counter() - start)

    print(
        f"\nbackend {keras.backend.backend()}, batch 32 of 64x64x3, "
        f"{args.blocks} residual blocks, median of {args.rounds} "
        "interleaved rounds:"
    )
    medians = {name: statistics.median(t) for name, t in times.items()}
    base = medians["unfolded"]
    for name, m in medians.items():
        print(f"{name:>24}: {1e3 * m:8.2f} ms   speedup x{base / m:.2f}")


if __name__ == "__main__":
    main()
