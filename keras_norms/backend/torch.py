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

import torch
import torch.distributed as dist


def num_replicas():
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size()


def _differentiable_all_reduce(x):
    try:
        from torch.distributed import _functional_collectives as fc

        if hasattr(fc, "all_reduce_backward"):  # autograd registered
            out = fc.all_reduce(x, "sum", dist.group.WORLD)
            return fc.wait_tensor(out) if hasattr(out, "wait") else out
    except ImportError:  # pragma: no cover - older torch
        pass
    from torch.distributed.nn import functional as dist_nn  # pragma: no cover

    return dist_nn.all_reduce(x)  # pragma: no cover


def all_gather_rows(row):
    world = dist.get_world_size()
    rank = dist.get_rank()
    placement = torch.zeros(world, 1, dtype=row.dtype, device=row.device)
    placement[rank] = 1
    return _differentiable_all_reduce(placement * row[None])


def named_axes():
    return ()
