"""torch: an autograd-aware collective over the default process group.

When `torch.distributed` is initialized with a world size above 1, each
process is one replica. Its statistics row is written into its own row of a
zero `(world_size, len(row))` matrix and ONE all-reduce (sum) of that matrix
gives every process every row: an all-gather built from an all-reduce,
because the all-reduce's backward is again one all-reduce on every process
group backend (gloo included), whereas the autograd all-gather's backward
is one scatter per rank on gloo. The collective is autograd-aware
(`torch.distributed._functional_collectives.all_reduce`, which registers a
backward, or `torch.distributed.nn.functional.all_reduce` on older torch),
so input gradients equal those of BatchNormalization on the global batch;
a plain `dist.all_reduce` would cut the gradient.
"""

import time

import torch
import torch.distributed as dist

from keras_norms import _compat


def num_replicas():
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size()


def _differentiable_all_reduce(x):
    fc = _compat.torch_functional_collectives()
    if fc is not None:  # autograd registered
        out = fc.all_reduce(x, "sum", dist.group.WORLD)
        return fc.wait_tensor(out) if hasattr(out, "wait") else out
    from torch.distributed.nn import functional as dist_nn  # pragma: no cover

    return dist_nn.all_reduce(x)  # pragma: no cover


def all_gather_rows(row):
    world = dist.get_world_size()
    rank = dist.get_rank()
    placement = torch.zeros(world, 1, dtype=row.dtype, device=row.device)
    placement[rank] = 1
    return _differentiable_all_reduce(placement * row[None])


def num_processes(what):
    return num_replicas()


def sum_over_processes(vector):
    """One `all_reduce(SUM)` of the float64 vector over the default group
    (on the GPU for NCCL, which reduces CUDA tensors only)."""
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    tensor = torch.from_numpy(vector).to(device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.cpu().numpy()


def named_axes():
    return ()


def join_all_processes(what, timeout):
    """Return once every process of the default group has called this too.

    A rendezvous on the process group's key-value store (no collective, so
    a process that never comes cannot leave the others blocked): each call
    adds 1 to one counter and waits until the counter reaches the next
    multiple of the world size. After `timeout` seconds it takes its own
    arrival back and raises `RuntimeError`. Works with every process group
    backend (gloo, NCCL), since the store is theirs.
    """
    world = num_replicas()
    if world < 2:
        return
    store = _compat.torch_default_store()
    key = "keras_norms/join/" + what
    arrived = store.add(key, 1)
    target = -(-arrived // world) * world
    deadline = time.monotonic() + timeout
    while store.add(key, 0) < target:
        if time.monotonic() > deadline:
            store.add(key, -1)
            raise RuntimeError(
                f"{what} must be called on every process of the "
                f"torch.distributed process group ({world} processes): it "
                "combines the statistics of every process's data through "
                "collectives the other processes must join. This process "
                "waited "
                f"{timeout:g} s for the others; call it on every rank "
                "(each with its shard of the data), as `fit` runs its "
                f"callbacks. Received: rank={dist.get_rank()}, "
                f"world_size={world}"
            )
        time.sleep(0.01)
