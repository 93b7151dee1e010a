"""Precise statistics over torch.distributed: 2 processes on gloo.

Launched by tests/test_precise_statistics.py with
`sys.executable precise_worker.py INPUTS.npz OUT_DIR`. Each process holds a
model with a SyncBatchNormalization layer and its half of the data, and:

- `all`: both processes call `recompute_batch_norm_statistics` (one batch
  each): the statistics must be those of the global batch, on both;
- `alone`: only rank 0 calls it (with a short join timeout): it must raise
  a RuntimeError at once instead of blocking in the collective, and leave
  the statistics as they were.

Writes OUT_DIR/rank{r}.npz.
"""

import os
import sys
import time

os.environ["KERAS_BACKEND"] = "torch"

WORLD_SIZE = 2


def worker(rank, port, inputs_path, out_dir):
    import _common
    import numpy as np
    import torch.distributed as dist

    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD_SIZE,
    )
    try:
        import keras

        from keras_norms import precise
        from keras_norms.layers.sync_batch_normalization import (
            SyncBatchNormalization,
        )

        with np.load(inputs_path) as data:
            x = data["x"]
        half = len(x) // WORLD_SIZE
        shard = x[rank * half : (rank + 1) * half]
        model = keras.Sequential(
            [keras.Input(x.shape[1:]), SyncBatchNormalization(name="sbn")]
        )
        layer = model.layers[0]
        results = {}
        precise.recompute_batch_norm_statistics(
            model, shard, batch_size=half, verbose=0
        )
        results["all/moving_mean"] = np.asarray(layer.moving_mean.numpy())
        results["all/moving_variance"] = np.asarray(
            layer.moving_variance.numpy()
        )
        dist.barrier()
        precise.DISTRIBUTED_JOIN_TIMEOUT = 2.0
        if rank == 0:
            start = time.monotonic()
            try:
                precise.recompute_batch_norm_statistics(
                    model, shard, batch_size=half, verbose=0
                )
                results["alone/error"] = ""
            except RuntimeError as e:
                results["alone/error"] = str(e)
            results["alone/seconds"] = time.monotonic() - start
            results["alone/moving_mean"] = np.asarray(layer.moving_mean.numpy())
        dist.barrier()
        _common.save(out_dir, f"rank{rank}", results)
    finally:
        dist.destroy_process_group()


def main(inputs_path, out_dir):
    import _common

    _common.spawn_local_processes(worker, WORLD_SIZE, inputs_path, out_dir)


if __name__ == "__main__":
    main(*sys.argv[1:3])
