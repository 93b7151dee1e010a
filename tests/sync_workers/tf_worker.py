"""SyncBatchNormalization under tf.distribute.MirroredStrategy, 2 CPUs."""

import os
import sys

os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402

_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    _cpu,
    [
        tf.config.LogicalDeviceConfiguration(),
        tf.config.LogicalDeviceConfiguration(),
    ],
)

import _common  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_norms.layers.batch_normalization import BatchNormalization  # noqa: E402
from keras_norms.layers.sync_batch_normalization import SyncBatchNormalization  # noqa: E402


def distribute(strategy, parts):
    return strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.constant(parts[ctx.replica_id_in_sync_group])
    )


def local(strategy, value):
    return [np.asarray(v) for v in strategy.experimental_local_results(value)]


def run_case(strategy, inputs, sizes, x_key="x", with_plain=True, eager=False):
    x_parts = _common.shards(inputs[x_key], sizes)
    up_parts = _common.shards(inputs["up_" + x_key], sizes)
    with strategy.scope():
        sync = SyncBatchNormalization(momentum=_common.MOMENTUM)
        plain = BatchNormalization(momentum=_common.MOMENTUM)
        for layer in (sync, plain):
            layer.build((None,) + inputs[x_key].shape[1:])
            _common.set_weights(layer, inputs)

    def step(x, up):
        def replica_fn(x, up):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = sync(x, training=True)
                loss = tf.reduce_sum(y * up)
            dx, dgamma, dbeta = tape.gradient(
                loss, [x, sync.gamma.value, sync.beta.value]
            )
            bn_y = plain(x, training=True) if with_plain else y
            return y, dx, dgamma, dbeta, bn_y

        return strategy.run(replica_fn, args=(x, up))

    if not eager:
        step = tf.function(step)
    out = step(distribute(strategy, x_parts), distribute(strategy, up_parts))
    results = {}
    for name, value in zip(("y", "dx", "dgamma", "dbeta", "bn_y"), out):
        for r, v in enumerate(local(strategy, value)):
            results[f"{r}/{name}"] = v
    for name in ("moving_mean", "moving_variance"):
        for r, v in enumerate(local(strategy, getattr(sync, name).value)):
            results[f"{r}/{name}"] = v
    return results


def run_fit(strategy, inputs):
    """One `train_on_batch` of a model holding SyncBN, under the strategy."""
    x = inputs["x"]
    with strategy.scope():
        model = keras.Sequential(
            [keras.Input(x.shape[1:]), SyncBatchNormalization(momentum=0.5)]
        )
        _common.set_weights(model.layers[0], inputs)
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    model.train_on_batch(x, inputs["target"])
    layer = model.layers[0]
    results = {}
    for name in ("gamma", "beta", "moving_mean", "moving_variance"):
        for r, v in enumerate(local(strategy, getattr(layer, name).value)):
            results[f"{r}/{name}"] = v
    return results


def _op_types(graph, counts):
    for op in graph.get_operations():
        counts[op.type] = counts.get(op.type, 0) + 1
    for function in graph._functions.values():  # nested (cond) bodies
        if hasattr(function, "graph"):
            _op_types(function.graph, counts)
    return counts


def count_collectives(strategy, inputs):
    """Collective ops per replica in the traced forward and training step."""
    with strategy.scope():
        sync = SyncBatchNormalization()
        sync.build((None,) + inputs["x"].shape[1:])
    x = distribute(strategy, _common.shards(inputs["x"], (4, 4)))
    results = {}
    for what, with_grad in (("forward", False), ("train_step", True)):

        def replica_fn(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = sync(x, training=True)
                loss = tf.reduce_sum(y * y)
            return tape.gradient(loss, x) if with_grad else y

        fn = tf.function(lambda x: strategy.run(replica_fn, args=(x,)))
        counts = _op_types(fn.get_concrete_function(x).graph, {})
        total = sum(
            v for k, v in counts.items() if k.startswith(("Collective", "Nccl"))
        )
        results[f"collectives/{what}"] = total / strategy.num_replicas_in_sync
    return results


def main(inputs_path, out_dir):
    inputs = _common.load_inputs(inputs_path)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    results = {}
    for case, sizes in _common.CASES.items():
        for k, v in run_case(strategy, inputs, sizes).items():
            results[f"{case}/{k}"] = v
    # One value per channel, and none, over both replicas: eagerly and in
    # a graph (where the global count is known at run time only).
    for case, sizes in _common.EDGE_CASES.items():
        for mode, eager in (("eager", True), ("graph", False)):
            edge = run_case(
                strategy,
                inputs,
                sizes,
                x_key="x1",
                with_plain=False,
                eager=eager,
            )
            for k, v in edge.items():
                results[f"{case}_{mode}/{k}"] = v
    results.update(count_collectives(strategy, inputs))
    for k, v in run_fit(strategy, inputs).items():
        results[f"fit/{k}"] = v
    _common.save(out_dir, "results", results)


if __name__ == "__main__":
    main(*sys.argv[1:3])
