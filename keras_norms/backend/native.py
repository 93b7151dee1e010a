"""Native fast paths: a backend's own normalization kernels, where they pay.

Reached only from the functional ops of `keras_norms.ops`
(`batch_normalization`, `layer_normalization`, `group_normalization`,
`instance_normalization`, `rms_normalization`), whose default is the one
`keras.ops` implementation. On the torch backend, eager PyTorch runs every
`keras.ops` call as a separate kernel (and a separate autograd node), so a
normalization written as a dozen small ops makes a dozen passes over the
tensor forward and more backward; `benchmarks/bench_norms.py` measured it
2 to 6 times slower than `torch.nn.functional`. Only there, and only where
the arguments allow it, the layers call torch's fused kernels instead:

- `layer_norm`: `F.layer_norm`, straight when the normalized axes are the
  trailing axes of the input (the usual `axis=-1`), else on a permuted
  view with those axes last (one copy; still 2-4x faster than the
  `keras.ops` path measured on channels-first `axis=1`).
- `group_norm` (GroupNormalization, and InstanceNormalization as one group
  per channel): `F.group_norm`. Channels-first inputs go straight to its
  contiguous kernel. For channels-last inputs the tensor is viewed as
  channels-first in torch's `channels_last` memory format (no copy), whose
  CPU kernel accumulates `E[x^2] - E[x]^2` in one pass: off by a hundred
  standard deviations for rows of mean 1e4. So each group is first shifted
  by one of its own values (stop-gradiented): group normalization is
  invariant to a per-group shift, so outputs and gradients are unchanged,
  and the one-pass sums then run on data of mean O(std), which keeps them
  exact (the shifted-data algorithm, as `tf.nn.moments(shift=...)`).
  (Traps: torch 2.13's group_norm backward fails with a bias but no
  weight, so a constant weight of ones is passed; and its channels-last
  kernel's backward crashes in torch 2.13 when the input needs
  no gradient but the weights do; the input is then made to need one.)
- `batch_norm`: `F.batch_norm` in training mode for the batch statistics
  (a native kernel is never called in inference mode on statistics that
  depend on the input: its backward would miss their gradient). The batch
  moments for the moving averages come back through temporary running
  buffers with momentum 1 (torch keeps the unbiased variance there; it is
  rescaled to the biased one Keras and the papers use), and the layer
  updates its moving statistics itself with Keras' momentum. In inference
  mode, with the moving statistics (constants), `F.batch_norm(training=
  False)` is one fused scale and shift.
- `rms_norm`: `F.rms_norm` when the normalized axes are the trailing axes
  (RMSNormalization's usual `axis=-1`); the one fused kernel Keras' own
  RMSNormalization also calls on torch.
- `local_response_norm`: `F.local_response_norm` for channels-last inputs
  no gradient flows through (inference), where the `keras.ops` path
  measured 1.75x slower; elsewhere the `keras.ops` path (the same average
  pool, measured no faster for channels-first inputs or with a gradient:
  forward faster, backward slower).
- Not `torch.var_mean` for the moments BatchInstanceNormalization and
  SwitchableNormalization need: over their spatial axes it measured 3x
  slower than the two `keras.ops` passes.

On TensorFlow, `batch_norm` and `local_response_norm` hand over to
`tf_fused.py` (the fused batch norm kernel and `tf.nn.lrn`, outside XLA
only).

Each function returns `None` where it does not apply (another backend,
half-precision or mixed dtypes, axes the kernel cannot take), and the op
then runs the `keras.ops` path. Every test of the layers runs through
these paths on torch; `tests/test_ops.py` also compares them
with the `keras.ops` path directly.

`disabled()` turns them off, explicitly and for the `with` block only
(benchmarks measure both; tests compare both).
"""

import contextlib

import keras

__all__ = [
    "enabled",
    "disabled",
    "layer_norm",
    "group_norm",
    "batch_norm",
    "rms_norm",
    "local_response_norm",
]

_state = {"enabled": True}


def enabled():
    """Whether the fused kernels are on and this backend has some (torch's
    fused kernels; TensorFlow's fused batch norm)."""
    return _state["enabled"] and keras.backend.backend() in (
        "torch",
        "tensorflow",
    )


@contextlib.contextmanager
def disabled():
    """Context manager running the `keras.ops` path everywhere."""
    previous = _state["enabled"]
    _state["enabled"] = False
    try:
        yield
    finally:
        _state["enabled"] = previous


def _tensors(x, dtype, *params):
    """`x` and `params` as torch tensors of one float dtype, or `None`.

    `params` may hold `None` (absent gamma/beta) and Keras variables (read
    through `.value`, so `stateless_call` substitutes them).
    """
    if not (_state["enabled"] and keras.backend.backend() == "torch"):
        return None
    import torch

    if not isinstance(x, torch.Tensor) or x.dtype not in (
        torch.float32,
        torch.float64,
    ):
        return None
    if str(x.dtype).rsplit(".", 1)[-1] != dtype:
        return None
    out = []
    for p in params:
        if p is not None:
            p = getattr(p, "value", p)
            if not isinstance(p, torch.Tensor) or p.dtype != x.dtype:
                return None
        out.append(p)
    return out


def _shaped(weight, shape):
    """`weight` (a tensor or `None`) with `shape`, reshaped only if needed.

    A reshape, even to the same shape, is a node of the autograd graph:
    two of them (gamma and beta of the usual `axis=-1` LayerNormalization)
    measured 22 us of a 150 us training step on 4x8x8x16 (torch 2.13, CPU).
    """
    if weight is None or tuple(weight.shape) == shape:
        return weight
    return weight.reshape(shape)


def layer_norm(x, axes, gamma, beta, epsilon, dtype):
    """`F.layer_norm` over `axes` (canonical ints), or `None`."""
    params = _tensors(x, dtype, gamma, beta)
    if params is None:
        return None
    import torch.nn.functional as F

    ndim = x.ndim
    axes = tuple(sorted(a % ndim for a in axes))
    gamma, beta = params
    shape = tuple(x.shape[a] for a in axes)
    gamma, beta = _shaped(gamma, shape), _shaped(beta, shape)
    if axes == tuple(range(ndim - len(axes), ndim)):
        return F.layer_norm(x, shape, gamma, beta, epsilon)
    # Other axes (channels-first `axis=1`): move them last (the kernel
    # makes one contiguous copy), normalize, and view the result back.
    rest = tuple(a for a in range(ndim) if a not in axes)
    perm = rest + axes
    inverse = tuple(perm.index(a) for a in range(ndim))
    y = F.layer_norm(x.permute(perm), shape, gamma, beta, epsilon)
    return y.permute(inverse)


def rms_norm(x, axes, scale, epsilon, dtype):
    """`F.rms_norm` over trailing `axes` (canonical ints), or `None`."""
    params = _tensors(x, dtype, scale)
    if params is None:
        return None
    ndim = x.ndim
    axes = tuple(sorted(a % ndim for a in axes))
    if axes != tuple(range(ndim - len(axes), ndim)):
        return None
    import torch.nn.functional as F

    shape = tuple(x.shape[a] for a in axes)
    (scale,) = params
    return F.rms_norm(x, shape, _shaped(scale, shape), epsilon)


def group_norm(x, groups, channel_axis, gamma, beta, epsilon, dtype):
    """`F.group_norm` with channels at `channel_axis` (1 or last), or `None`.

    `gamma` and `beta` have shape `(C,)`; `groups` divides `C`.
    """
    params = _tensors(x, dtype, gamma, beta)
    if params is None or x.ndim < 3 or x.numel() == 0:
        return None  # empty: the channels-last view cannot be reshaped
    ndim = x.ndim
    channel_axis %= ndim
    if channel_axis not in (1, ndim - 1):
        return None
    import torch
    import torch.nn.functional as F

    gamma, beta = params
    if gamma is None and beta is not None:
        # torch 2.13's group_norm backward fails ("tensor does not have a
        # device") with a bias but no weight: pass a constant weight of 1.
        gamma = torch.ones(
            x.shape[channel_axis], dtype=x.dtype, device=x.device
        )
    if channel_axis == 1:
        # The contiguous kernel is two-pass (Welford): no shift needed.
        return F.group_norm(x.contiguous(), groups, gamma, beta, epsilon)
    n, channels = x.shape[0], x.shape[-1]
    # One value of each (sample, group), broadcast over its channels.
    first = x.detach().reshape(n, -1, groups, channels // groups)[:, 0, :, :1]
    shift = first.expand(n, groups, channels // groups).reshape(
        (n,) + (1,) * (ndim - 2) + (channels,)
    )
    shifted = torch.movedim(x - shift, -1, 1)
    if (
        torch.is_grad_enabled()
        and not shifted.requires_grad
        and any(p is not None and p.requires_grad for p in (gamma, beta))
    ):
        # torch 2.13's channels-last group_norm backward crashes (a
        # segmentation fault on rank 5) when the input needs no gradient
        # but the weights do: give the (fresh) shifted input one.
        shifted.requires_grad_(True)
    y = F.group_norm(shifted, groups, gamma, beta, epsilon)
    return torch.movedim(y, 1, -1)


def batch_norm(
    x, channel_axis, gamma, beta, epsilon, dtype, mean=None, variance=None
):
    """`F.batch_norm` over every axis but `channel_axis`, or `None`.

    With `mean` and `variance` (the moving statistics, shape `(C,)`), the
    inference-mode kernel normalizes with them and returns the output.
    Without, the training-mode kernel normalizes with the batch moments
    and returns `(output, batch_mean, batch_variance)`, the variance
    biased.
    """
    if _state["enabled"] and keras.backend.backend() == "tensorflow":
        from keras_norms.backend import tf_fused

        return tf_fused.batch_norm(
            x, channel_axis, gamma, beta, epsilon, dtype, mean, variance
        )
    params = _tensors(x, dtype, gamma, beta, mean, variance)
    if params is None or x.ndim < 2:
        return None
    ndim = x.ndim
    channel_axis %= ndim
    if channel_axis not in (1, ndim - 1):
        return None
    import torch
    import torch.nn.functional as F

    gamma, beta, mean, variance = params
    channels = x.shape[channel_axis]
    count = x.numel() // max(channels, 1)
    if mean is None and (count < 2 or not epsilon > 0):
        # Training on an empty batch or one value per channel: the kernel
        # refuses it ("expected more than 1 value per channel"); the
        # keras.ops path gives Keras' answer (variance 0: the output is
        # beta; empty: no statistics). Nor does it take epsilon 0 then.
        return None
    if x.numel() == 0:
        return None
    if channel_axis == ndim - 1 and ndim > 2:
        # Channels-last: a contiguous (rows, C) view, no transpose.
        view = x.reshape(-1, channels)
    else:
        view = x.contiguous()
    if mean is not None:
        y = F.batch_norm(view, mean, variance, gamma, beta, False, 0.0, epsilon)
        return y.reshape(x.shape)
    batch_mean = torch.zeros(channels, dtype=x.dtype, device=x.device)
    batch_variance = torch.zeros(channels, dtype=x.dtype, device=x.device)
    y = F.batch_norm(
        view, batch_mean, batch_variance, gamma, beta, True, 1.0, epsilon
    )
    # momentum 1: the buffers now hold the batch mean and the unbiased
    # variance; Keras and the papers use the biased one.
    batch_variance = batch_variance * ((count - 1) / count)
    return y.reshape(x.shape), batch_mean, batch_variance


def local_response_norm(
    x, channel_axis, depth_radius, bias, alpha, beta, dtype
):
    """TensorFlow's LRN kernel (`tf_fused.local_response_norm`), torch's
    `F.local_response_norm` for channels-last inputs no gradient flows
    through, or `None`.

    On torch `F.local_response_norm` runs the same average pool over the
    padded squares as the `keras.ops` path: for channels-first inputs it
    measured no faster (0.87-1.41x either way, forward faster, backward
    slower, on 16x32x32x64 and 64x128x96); for channels-last inputs
    without a gradient (inference) the `keras.ops` path measured 1.75x
    slower than it on 32x32x32x64, so it runs there (a channels-first
    view, no copy). With a gradient to record, or while TorchScript
    traces, the `keras.ops` path.
    """
    if not _state["enabled"]:
        return None
    backend = keras.backend.backend()
    if backend == "tensorflow":
        from keras_norms.backend import tf_fused

        return tf_fused.local_response_norm(
            x, channel_axis, depth_radius, bias, alpha, beta, dtype
        )
    if backend != "torch" or _tensors(x, dtype) is None or x.ndim < 3:
        return None
    import torch
    import torch.nn.functional as F

    if (
        channel_axis % x.ndim != x.ndim - 1
        or (torch.is_grad_enabled() and x.requires_grad)
        # TorchScript tracing (OpenVINO's converter) checks its trace
        # against a second one: one graph whatever the gradient mode.
        or torch.jit.is_tracing()
    ):
        return None
    size = 2 * depth_radius + 1
    y = F.local_response_norm(
        torch.movedim(x, -1, 1), size, alpha=alpha * size, beta=beta, k=bias
    )
    return torch.movedim(y, 1, -1)
