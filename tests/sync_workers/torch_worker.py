"""SyncBatchNormalization over torch.distributed: 2 processes on gloo.

The launcher picks a free port on 127.0.0.1 and spawns two processes; each
initializes the default process group, runs every case on its own shard of
the global batch and writes its results to OUT_DIR/rank{r}.npz.
"""

import os
import sys

os.environ["KERAS_BACKEND"] = "torch"

WORLD_SIZE = 2


def collective_counter():
    """A dispatch mode recording the c10d collectives issued under it."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Counter(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.collectives = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = str(func)
            if "c10d" in name and not any(
                s in name for s in ("wait_tensor", "_wrap_tensor")
            ):
                self.collectives.append(name)
            return func(*args, **(kwargs or {}))

    return Counter()


def run_case(rank, inputs, sizes, x_key="x", with_plain=True, counts=None):
    import _common
    import torch

    from keras_norms.layers.batch_normalization import BatchNormalization
    from keras_norms.layers.sync_batch_normalization import (
        SyncBatchNormalization,
    )

    x = _common.shards(inputs[x_key], sizes)[rank]
    up = _common.shards(inputs["up_" + x_key], sizes)[rank]
    layers = [SyncBatchNormalization(momentum=_common.MOMENTUM)]
    if with_plain:
        layers.append(BatchNormalization(momentum=_common.MOMENTUM))
    for layer in layers:
        layer.build((None,) + x.shape[1:])
        _common.set_weights(layer, inputs)
    sync = layers[0]
    xt = torch.tensor(x, requires_grad=True)
    counter = collective_counter()
    with counter:
        y = sync(xt, training=True)
        forward = len(counter.collectives)
        torch.sum(y * torch.tensor(up)).backward()
    if counts is not None:
        counts["forward"] = forward
        counts["train_step"] = len(counter.collectives)
        counts["names"] = sorted(set(counter.collectives))
    results = {
        "y": y.detach().numpy(),
        "dx": xt.grad.numpy(),
        "dgamma": sync.gamma.value.grad.numpy(),
        "dbeta": sync.beta.value.grad.numpy(),
        "moving_mean": sync.moving_mean.numpy(),
        "moving_variance": sync.moving_variance.numpy(),
    }
    if with_plain and x.shape[0] > 1:
        bn_y = layers[1](torch.tensor(x), training=True)
        results["bn_y"] = bn_y.detach().numpy()
    return {f"{rank}/{k}": v for k, v in results.items()}


def worker(rank, port, inputs_path, out_dir):
    import torch.distributed as dist

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import _common

    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD_SIZE,
    )
    try:
        inputs = _common.load_inputs(inputs_path)
        results = {}
        for case, sizes in _common.CASES.items():
            counts = {}
            for k, v in run_case(rank, inputs, sizes, counts=counts).items():
                results[f"{case}/{k}"] = v
            if case == "equal" and rank == 0:
                results["collectives/forward"] = counts["forward"]
                results["collectives/train_step"] = counts["train_step"]
                results["collectives/names"] = "; ".join(counts["names"])
        for case, sizes in _common.EDGE_CASES.items():
            edge = run_case(rank, inputs, sizes, x_key="x1", with_plain=False)
            for k, v in edge.items():
                results[f"{case}/{k}"] = v
        _common.save(out_dir, f"rank{rank}", results)
    finally:
        dist.destroy_process_group()


def main(inputs_path, out_dir):
    import _common

    _common.spawn_local_processes(worker, WORLD_SIZE, inputs_path, out_dir)


if __name__ == "__main__":
    main(*sys.argv[1:3])
