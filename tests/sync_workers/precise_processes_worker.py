"""Precise statistics across processes: one process of a 2-process run.

Launched by tests/test_precise_statistics.py, as users launch multi-process
training, once per process:
`sys.executable precise_processes_worker.py BACKEND RANK PORTS INPUTS OUT`

- torch: `torch.distributed` on gloo, rendezvous at 127.0.0.1:PORTS[0];
- jax: `keras.distribution.initialize` (coordinator 127.0.0.1:PORTS[0],
  gloo CPU collectives) and a `DataParallel` distribution;
- tensorflow: `TF_CONFIG` naming one worker per port and a
  `MultiWorkerMirroredStrategy`.

Each process holds the same model (plain BatchNormalization layers) and
its own shard of `x` (the first SIZES[0] samples on rank 0, the next
SIZES[1] on rank 1), and records, to OUT/rank{RANK}.npz:
`report/{layer}` (`batch_norm_statistics_report`'s mean shift before any
recomputation), `recompute/{layer}/{statistic}` and the counts,
`callback/{layer}/{statistic}` (`PreciseBatchNorm` after one epoch, the
statistics scrambled before), and on TensorFlow `outside_scope/error`.
"""

import json
import os
import sys

BACKEND, RANK, PORTS, INPUTS, OUT = sys.argv[1:6]
RANK = int(RANK)
PORTS = [int(p) for p in PORTS.split(",")]
WORLD = 2
SIZES = (8, 12)
BATCH_SIZE = 4
LAYERS = ("bn1", "bn2")
STATISTICS = ("moving_mean", "moving_variance")

os.environ["KERAS_BACKEND"] = BACKEND
if BACKEND == "tensorflow":
    os.environ["TF_CONFIG"] = json.dumps(
        {
            "cluster": {"worker": [f"127.0.0.1:{p}" for p in PORTS]},
            "task": {"type": "worker", "index": RANK},
        }
    )

import contextlib  # noqa: E402

import numpy as np  # noqa: E402


def setup():
    """Join the other process; the scope the model lives in."""
    if BACKEND == "torch":
        import datetime

        import torch.distributed as dist

        dist.init_process_group(
            "gloo",
            init_method=f"tcp://127.0.0.1:{PORTS[0]}",
            rank=RANK,
            world_size=WORLD,
            timeout=datetime.timedelta(seconds=60),
        )
        return contextlib.nullcontext, dist.destroy_process_group
    if BACKEND == "jax":
        import jax

        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        import keras

        keras.distribution.initialize(
            job_addresses=f"127.0.0.1:{PORTS[0]}",
            num_processes=WORLD,
            process_id=RANK,
        )
        keras.distribution.set_distribution(keras.distribution.DataParallel())
        return contextlib.nullcontext, lambda: None
    import tensorflow as tf

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    return strategy.scope, lambda: None


def local(variable):
    """This process's copy of a (possibly global) variable's value."""
    value = variable.value
    if hasattr(value, "addressable_data"):  # a JAX global array
        value = value.addressable_data(0)
    import keras

    return np.array(keras.ops.convert_to_numpy(value))


def main():
    scope, teardown = setup()
    import keras

    from keras_norms import callbacks
    from keras_norms import precise
    from keras_norms.layers.batch_normalization import BatchNormalization

    with np.load(INPUTS) as data:
        inputs = {k: data[k] for k in data.files}
    start = sum(SIZES[:RANK])
    shard = inputs["x"][start : start + SIZES[RANK]]
    with scope():
        model = keras.Sequential(
            [
                keras.Input(inputs["x"].shape[1:]),
                keras.layers.Dense(4, name="dense1"),
                BatchNormalization(name="bn1"),
                keras.layers.Dense(3, name="dense2"),
                BatchNormalization(name="bn2"),
            ]
        )
        for name in ("dense1", "dense2"):
            model.get_layer(name).set_weights(
                [inputs[f"{name}/kernel"], inputs[f"{name}/bias"]]
            )
    results = {}
    try:
        if BACKEND == "tensorflow":  # no strategy in scope: refused
            try:
                precise.recompute_batch_norm_statistics(
                    model, shard, batch_size=BATCH_SIZE, verbose=0
                )
                results["outside_scope/error"] = ""
            except RuntimeError as error:
                results["outside_scope/error"] = str(error)
        with scope():
            report = precise.batch_norm_statistics_report(
                model, shard, batch_size=BATCH_SIZE, print_fn=False
            )
            for layer in LAYERS:
                results[f"report/{layer}"] = report[layer]["mean_shift"]
            result = precise.recompute_batch_norm_statistics(
                model, shard, batch_size=BATCH_SIZE, verbose=0
            )
            results["recompute/num_samples"] = result["num_samples"]
            results["recompute/num_batches"] = result["num_batches"]
            for layer in LAYERS:
                for name in STATISTICS:
                    var = getattr(model.get_layer(layer), name)
                    results[f"recompute/{layer}/{name}"] = local(var)
                    var.assign(np.full(var.shape, 7.0, "float32"))
            callback = callbacks.PreciseBatchNorm(
                shard, batch_size=BATCH_SIZE, verbose=0
            )
            callback.set_model(model)
            callback.on_train_begin()
            callback.on_epoch_begin(0)
            callback.on_epoch_end(0)
            for layer in LAYERS:
                for name in STATISTICS:
                    var = getattr(model.get_layer(layer), name)
                    results[f"callback/{layer}/{name}"] = local(var)
        np.savez(
            os.path.join(OUT, f"rank{RANK}.npz"),
            **{k: np.asarray(v) for k, v in results.items()},
        )
    finally:
        teardown()


if __name__ == "__main__":
    main()
