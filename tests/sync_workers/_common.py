"""Shared by the distributed SyncBatchNormalization workers.

A worker is launched by tests/layers/test_sync_batch_normalization.py with
`sys.executable worker.py INPUTS.npz OUT_DIR`, after the test has set
KERAS_BACKEND and whatever the backend needs before it initializes (logical
devices, XLA_FLAGS, a process group). It reads the global batch, splits it
into per-replica shards for each case, runs one training step of
SyncBatchNormalization (and of plain BatchNormalization) with the backend's
own distribution machinery, and writes per-replica results as
`{case}/{replica}/{name}` arrays to an .npz file in OUT_DIR.
"""

import os
import socket

import numpy as np

# The cases every backend tries: name -> per-replica shard sizes of the
# global batch (its first sum(sizes) samples).
CASES = {
    "equal": (4, 4),
    "unequal": (3, 5),
    "empty": (0, 6),
}
# Global batches of the rank-2 input `x1`, run apart from CASES: one value
# per channel (one sample), and none at all (every shard empty). As
# BatchNormalization on the global batch: the output `beta` and the
# moving variance moving towards 0; an empty output and unchanged state.
EDGE_CASES = {"single": (1, 0), "none": (0, 0)}
MOMENTUM = 0.5


def load_inputs(path):
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def shards(x, sizes):
    bounds = np.cumsum((0,) + tuple(sizes))
    return [x[bounds[i] : bounds[i + 1]] for i in range(len(sizes))]


def set_weights(layer, inputs):
    layer.gamma.assign(inputs["gamma"])
    layer.beta.assign(inputs["beta"])


def save(out_dir, name, results):
    np.savez(
        os.path.join(out_dir, f"{name}.npz"),
        **{k: np.asarray(v) for k, v in results.items()},
    )


def spawn_local_processes(worker, nprocs, *args):
    """torch.multiprocessing.spawn of `worker(rank, port, *args)`.

    `port` is a free port on 127.0.0.1 for the process group's rendezvous.
    """
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(worker, args=(port, *args), nprocs=nprocs, join=True)


def free_ports(count):
    """`count` distinct free TCP ports on 127.0.0.1, found now."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def run_processes(commands, env, timeout):
    """Start every command at once; wait at most `timeout` s for them all.

    Returns `[(returncode, output)]`; a process still running at the
    deadline is killed (its return code then says so).
    """
    import subprocess
    import tempfile
    import time

    logs = [tempfile.TemporaryFile() for _ in commands]
    procs = [
        subprocess.Popen(c, env=env, stdout=log, stderr=subprocess.STDOUT)
        for c, log in zip(commands, logs)
    ]
    deadline = time.monotonic() + timeout
    results = []
    for proc, log in zip(procs, logs):
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.seek(0)
        results.append((proc.returncode, log.read().decode(errors="replace")))
        log.close()
    return results
