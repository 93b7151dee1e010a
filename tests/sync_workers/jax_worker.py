"""SyncBatchNormalization under keras.distribution.DataParallel, 2 CPUs.

JAX has no replica context: Keras jits the train step as one global (GSPMD)
program over the device mesh, the layer sees the global batch, and XLA
partitions the reductions over the sharded batch axis into all-reduces.
This worker checks that on two host devices and counts the collectives in
the compiled HLO.
"""

import os
import re
import sys

os.environ["KERAS_BACKEND"] = "jax"
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=2"
)

import _common  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_norms.layers.batch_normalization import BatchNormalization  # noqa: E402
from keras_norms.layers.sync_batch_normalization import SyncBatchNormalization  # noqa: E402

COLLECTIVES = (
    "all-reduce",
    "all-gather",
    "reduce-scatter",
    "collective-permute",
    "all-to-all",
)


def count_collectives(compiled):
    """Collective instructions (async `-start` halves counted once)."""
    text = compiled.as_text()
    return {
        op: len(re.findall(r"[ )]" + op + r"(?:-start)?\(", text))
        for op in COLLECTIVES
    }


def per_device(array):
    """The per-device pieces of a (possibly sharded) global array."""
    pieces = sorted(array.addressable_shards, key=lambda s: s.device.id)
    return [np.asarray(s.data) for s in pieces]


def make_step(layer, ntv):
    def loss_fn(tv, x, up):
        y, new_ntv = layer.stateless_call(tv, ntv, x, training=True)
        return jnp.sum(y * up), (y, new_ntv)

    def train_step(tv, x, up):
        (_, (y, new_ntv)), (dtv, dx) = jax.value_and_grad(
            loss_fn, argnums=(0, 1), has_aux=True
        )(tv, x, up)
        return y, dx, dtv, new_ntv

    def forward(tv, x):
        return layer.stateless_call(tv, ntv, x, training=True)

    return jax.jit(train_step), jax.jit(forward)


def run_case(distribution, inputs, sizes):
    n = sum(sizes)
    x = inputs["x"][:n]
    up = inputs["up_x"][:n]
    layout = distribution.get_data_layout(x.shape)
    xs = keras.distribution.distribute_tensor(x, layout)
    ups = keras.distribution.distribute_tensor(up, layout)
    results = {}
    # The batch really is split over the two devices.
    results["shard_sizes"] = np.array([p.shape[0] for p in per_device(xs)])
    for cls, prefix in (
        (SyncBatchNormalization, ""),
        (BatchNormalization, "bn_"),
    ):
        layer = cls(momentum=_common.MOMENTUM)
        layer.build((None,) + x.shape[1:])
        _common.set_weights(layer, inputs)
        tv = [v.value for v in layer.trainable_variables]
        ntv = [v.value for v in layer.non_trainable_variables]
        train_step, forward = make_step(layer, ntv)
        y, dx, dtv, new_ntv = train_step(tv, xs, ups)
        for name, arrays in (("y", per_device(y)), ("dx", per_device(dx))):
            for r, a in enumerate(arrays):
                results[f"{r}/{prefix}{name}"] = a
        names = [v.name for v in layer.trainable_variables]
        for name, g in zip(names, dtv):
            # The gradient of the global loss, replicated on every device.
            pieces = per_device(g)
            np.testing.assert_array_equal(pieces[0], pieces[1])
            results[f"global/{prefix}d{name}"] = pieces[0]
        for v, value in zip(layer.non_trainable_variables, new_ntv):
            for r, a in enumerate(per_device(value)):
                results[f"{r}/{prefix}{v.name}"] = a
        if cls is SyncBatchNormalization:
            for what, fn, args in (
                ("forward", forward, (tv, xs)),
                ("train_step", train_step, (tv, xs, ups)),
            ):
                compiled = fn.lower(*args).compile()
                if os.environ.get("SYNC_BN_DUMP_HLO"):
                    print(what, compiled.as_text())
                counts = count_collectives(compiled)
                for op, c in counts.items():
                    results[f"hlo/{what}/{op}"] = c
    return results


def run_fit(inputs):
    """One `train_on_batch` of a model holding SyncBN, data parallel."""
    x = inputs["x"]
    model = keras.Sequential(
        [keras.Input(x.shape[1:]), SyncBatchNormalization(momentum=0.5)]
    )
    _common.set_weights(model.layers[0], inputs)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    model.train_on_batch(x, inputs["target"])
    layer = model.layers[0]
    results = {}
    for name in ("gamma", "beta", "moving_mean", "moving_variance"):
        for r, a in enumerate(per_device(getattr(layer, name).value)):
            results[f"{r}/{name}"] = a
    return results


def main(inputs_path, out_dir):
    inputs = _common.load_inputs(inputs_path)
    devices = jax.devices()
    assert len(devices) == 2, devices
    distribution = keras.distribution.DataParallel(devices=devices)
    keras.distribution.set_distribution(distribution)
    results = {}
    # DataParallel shards the batch evenly: only the equal split applies.
    for k, v in run_case(distribution, inputs, _common.CASES["equal"]).items():
        results[f"equal/{k}" if not k.startswith("hlo/") else k] = v
    for k, v in run_fit(inputs).items():
        results[f"fit/{k}"] = v
    _common.save(out_dir, "results", results)


if __name__ == "__main__":
    main(*sys.argv[1:3])
