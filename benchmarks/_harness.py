"""Contenders and timing for `bench_norms.py`, for the backend of this process.

Each contender is a function of one input array, run in one *mode*:

- `infer`: inference forward (moving statistics for BN/BIN/SN);
- `train`: training forward (batch statistics, moving-statistics update);
- `grad`: training forward + backward (input and weight gradients).

and one *execution*: `eager`, or `compiled` (`jax.jit`, `tf.function(
jit_compile=True)`; torch has no separate compiled mode here: torch eager
is what `model.fit` runs on torch by default).

Contenders: `ours` (keras_norms), `keras` (the `keras.layers` built-in;
GroupNormalization(groups=C) stands in for InstanceNormalization; none for
BIN, SN, FRN, LRN), `native` (the backend's own kernel: `torch.nn.functional.*`
(`F.rms_norm` for RMS, a plain torch expression for FRN + TLU,
`F.local_response_norm` for LRN), `tf.nn.fused_batch_norm`,
`tf.nn.local_response_normalization` or TF ops, flax-style jnp; none for
LRN on JAX), and on torch `ours_ops` (keras_norms with its
native fast paths disabled: the one `keras.ops` implementation), and `copy`
(a negation of the tensor: one read and one write, the bandwidth yardstick).
"""

import statistics
import sys
import time

import keras
import numpy as np

import keras_norms as kn
from keras_norms.backend import native as kn_native

BACKEND = keras.backend.backend()
EPS = 1e-3

# Bytes that must move, in units of the tensor's size: inference reads x and
# writes y; training reads x once more for the statistics; the backward pass
# reads dy and x for its two per-channel reductions, then dy and x again and
# writes dx.
FLOOR = {"infer": 2, "train": 3, "grad": 8}


# ---------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------
def make_ours(kind, axis, groups):
    return {
        "BN": lambda: kn.BatchNormalization(axis=axis, epsilon=EPS),
        "LN": lambda: kn.LayerNormalization(axis=axis, epsilon=EPS),
        "IN": lambda: kn.InstanceNormalization(axis=axis, epsilon=EPS),
        "GN": lambda: kn.GroupNormalization(groups, axis=axis, epsilon=EPS),
        "BIN": lambda: kn.BatchInstanceNormalization(axis=axis, epsilon=EPS),
        "SN": lambda: kn.SwitchableNormalization(axis=axis, epsilon=EPS),
        "RMS": lambda: kn.RMSNormalization(axis=axis, epsilon=EPS),
        "FRN": lambda: kn.FilterResponseNormalization(axis=axis, epsilon=EPS),
        "LRN": lambda: kn.LocalResponseNormalization(axis=axis),
        "EVS0": lambda: kn.EvoNormS0(groups, axis=axis, epsilon=EPS),
        "EVB0": lambda: kn.EvoNormB0(axis=axis, epsilon=EPS),
    }[kind]()


def make_keras(kind, axis, groups):
    L = keras.layers
    factory = {
        "BN": lambda: L.BatchNormalization(axis=axis, epsilon=EPS),
        "LN": lambda: L.LayerNormalization(axis=axis, epsilon=EPS),
        "IN": lambda: L.GroupNormalization(-1, axis=axis, epsilon=EPS),
        "GN": lambda: L.GroupNormalization(groups, axis=axis, epsilon=EPS),
        "RMS": lambda: L.RMSNormalization(axis=axis, epsilon=EPS),
    }.get(kind)
    return None if factory is None else factory()


# ---------------------------------------------------------------------------
# Native kernels (backend code, channels at `axis` of the same array)
# ---------------------------------------------------------------------------
def _np_params(c):
    rng = np.random.RandomState(1)
    return {
        "gamma": rng.uniform(0.5, 1.5, c).astype("float32"),
        "beta": rng.randn(c).astype("float32"),
        "rho": rng.uniform(0, 1, c).astype("float32"),
        "mw": np.ones(3, "float32"),
        "vw": np.ones(3, "float32"),
        "tau": rng.uniform(-0.5, 0.0, c).astype("float32"),
        "v": rng.uniform(0.5, 1.5, c).astype("float32"),
    }


def _native_torch(kind, axis, groups, ndim, c):
    import torch
    import torch.nn.functional as F

    p = {k: torch.tensor(v) for k, v in _np_params(c).items()}
    rm, rv = torch.zeros(c), torch.ones(c)
    last = axis % ndim == ndim - 1

    def cf(x):  # channels-first view (channels_last memory format)
        return torch.movedim(x, -1, 1) if last else x

    def back(y):
        return torch.movedim(y, 1, -1) if last else y

    def bn(x, training, g, b):
        return F.batch_norm(x, rm, rv, g, b, training, 0.01, EPS)

    def inorm(x, g, b):
        return F.instance_norm(x, None, None, g, b, True, 0.1, EPS)

    def fn(x, training, params):
        g, b = params["gamma"], params["beta"]
        if kind == "BN":
            return back(bn(cf(x), training, g, b))
        if kind == "LN":
            if last:
                return F.layer_norm(x, (c,), g, b, EPS)
            y = F.layer_norm(torch.movedim(x, 1, -1), (c,), g, b, EPS)
            return torch.movedim(y, -1, 1)
        if kind == "IN":
            return back(inorm(cf(x), g, b))
        if kind == "GN":
            return back(F.group_norm(cf(x), groups, g, b, EPS))
        if kind == "BIN":  # the paper's code: a blend of BN and IN outputs
            xc = cf(x)
            rho = params["rho"].clamp(0, 1).reshape((1, c) + (1,) * (ndim - 2))
            y = rho * bn(xc, training, None, None) + (1 - rho) * inorm(
                xc, None, None
            )
            shape = (1, c) + (1,) * (ndim - 2)
            return back(y * g.reshape(shape) + b.reshape(shape))
        if kind == "RMS":
            if last:
                return F.rms_norm(x, (c,), g, EPS)
            y = F.rms_norm(torch.movedim(x, 1, -1), (c,), g, EPS)
            return torch.movedim(y, -1, 1)
        if kind == "FRN":  # the paper's FRN + TLU, as a plain expression
            shape = [1] * ndim
            shape[axis % ndim] = c
            spatial = tuple(a for a in range(1, ndim) if a != axis % ndim)
            nu2 = x.pow(2).mean(spatial, keepdim=True)
            y = g.reshape(shape) * x * torch.rsqrt(nu2 + EPS) + b.reshape(shape)
            return torch.maximum(y, params["tau"].reshape(shape))
        if kind == "LRN":  # TF's defaults, mapped: size 11, alpha * 11
            return back(F.local_response_norm(cf(x), 11, 11.0, 0.5, 1.0))
        if kind in ("EVS0", "EVB0"):  # timm's EvoNorm2dS0 / B0 expressions
            xc = cf(x)
            shape = (1, c) + (1,) * (ndim - 2)
            v = params["v"].reshape(shape)
            if kind == "EVS0":
                n = xc.shape[0]
                grouped = xc.reshape(n, groups, -1)
                std = (
                    grouped.var(-1, unbiased=False, keepdim=True) + EPS
                ).sqrt()
                scale = torch.sigmoid(v * xc) * xc
                y = (scale.reshape(n, groups, -1) / std).reshape(xc.shape)
            else:
                spatial = tuple(range(2, ndim))
                var = xc.var((0,) + spatial, unbiased=False, keepdim=True)
                var = var if training else rv.reshape(shape)
                inst = xc.var(spatial, unbiased=False, keepdim=True)
                right = xc * v + (inst + EPS).sqrt()
                y = xc / torch.maximum((var + EPS).sqrt(), right)
            return back(y * g.reshape(shape) + b.reshape(shape))
        if kind == "SN":  # the official code, with biased variances
            xc = cf(x)
            n = xc.shape[0]
            v = xc.reshape(n, c, -1)
            var_in, mean_in = torch.var_mean(v, -1, correction=0, keepdim=True)
            mean_ln = mean_in.mean(1, keepdim=True)
            var_ln = (var_in + mean_in**2).mean(1, keepdim=True) - mean_ln**2
            if training:
                mean_bn = mean_in.mean(0, keepdim=True)
                var_bn = (var_in + mean_in**2).mean(
                    0, keepdim=True
                ) - mean_bn**2
            else:
                mean_bn, var_bn = rm.reshape(1, c, 1), rv.reshape(1, c, 1)
            wm = torch.softmax(params["mw"], 0)
            wv = torch.softmax(params["vw"], 0)
            mean = wm[0] * mean_in + wm[1] * mean_ln + wm[2] * mean_bn
            var = wv[0] * var_in + wv[1] * var_ln + wv[2] * var_bn
            y = (v - mean) / (var + EPS).sqrt()
            y = y.reshape(xc.shape)
            shape = (1, c) + (1,) * (ndim - 2)
            return back(y * g.reshape(shape) + b.reshape(shape))
        raise ValueError(kind)

    return fn, p


def _jnp_stats(x, axes):
    """flax-style statistics: mean and mean of squares in one fusion."""
    import jax.numpy as jnp

    mean = jnp.mean(x, axes, keepdims=True)
    mean2 = jnp.mean(jnp.square(x), axes, keepdims=True)
    return mean, jnp.maximum(mean2 - jnp.square(mean), 0.0)


def _native_jax(kind, axis, groups, ndim, c):
    if kind in ("LRN", "EVS0", "EVB0"):  # no JAX peer kernel to compare with
        return None
    import jax
    import jax.numpy as jnp

    p = {k: jnp.asarray(v) for k, v in _np_params(c).items()}
    ax = axis % ndim
    pshape = [1] * ndim
    pshape[ax] = c
    spatial = tuple(a for a in range(1, ndim) if a != ax)
    batch_axes = (0,) + spatial
    rm, rv = jnp.zeros(pshape), jnp.ones(pshape)

    def affine(y, params):
        return y * params["gamma"].reshape(pshape) + params["beta"].reshape(
            pshape
        )

    def norm(x, mean, var):
        return (x - mean) * jax.lax.rsqrt(var + EPS)

    def fn(x, training, params):
        if kind == "BN":
            mean, var = _jnp_stats(x, batch_axes) if training else (rm, rv)
            return affine(norm(x, mean, var), params)
        if kind == "LN":
            return affine(norm(x, *_jnp_stats(x, (ax,))), params)
        if kind in ("RMS", "FRN"):  # flax RMSNorm-style: mean of squares
            axes = (ax,) if kind == "RMS" else spatial
            nu2 = jnp.mean(jnp.square(x), axes, keepdims=True)
            y = x * jax.lax.rsqrt(nu2 + EPS) * params["gamma"].reshape(pshape)
            if kind == "RMS":
                return y
            y = y + params["beta"].reshape(pshape)
            return jnp.maximum(y, params["tau"].reshape(pshape))
        if kind in ("IN", "GN"):
            g = c if kind == "IN" else groups
            shape = list(x.shape)
            shape[ax : ax + 1] = [g, c // g]
            v = x.reshape(shape)
            axes = tuple(a for a in range(1, ndim + 1) if a != ax)
            y = norm(v, *_jnp_stats(v, axes)).reshape(x.shape)
            return affine(y, params)
        mean_in, var_in = _jnp_stats(x, spatial)
        if training:
            mean_bn = mean_in.mean(0, keepdims=True)
            var_bn = (var_in + mean_in**2).mean(0, keepdims=True) - mean_bn**2
        else:
            mean_bn, var_bn = rm, rv
        if kind == "BIN":
            rho = jnp.clip(p["rho"], 0, 1).reshape(pshape)
            y = rho * norm(x, mean_bn, var_bn) + (1 - rho) * norm(
                x, mean_in, var_in
            )
            return affine(y, params)
        mean_ln = mean_in.mean(ax, keepdims=True)
        var_ln = (var_in + mean_in**2).mean(ax, keepdims=True) - mean_ln**2
        wm, wv = jax.nn.softmax(params["mw"]), jax.nn.softmax(params["vw"])
        mean = wm[0] * mean_in + wm[1] * mean_ln + wm[2] * mean_bn
        var = wv[0] * var_in + wv[1] * var_ln + wv[2] * var_bn
        return affine(norm(x, mean, var), params)

    return fn, p


def _native_tf(kind, axis, groups, ndim, c):
    if kind in ("EVS0", "EVB0"):  # no TensorFlow peer kernel
        return None
    import tensorflow as tf

    p = {k: tf.constant(v) for k, v in _np_params(c).items()}
    ax = axis % ndim
    pshape = [1] * ndim
    pshape[ax] = c
    spatial = [a for a in range(1, ndim) if a != ax]
    rm, rv = tf.zeros([c]), tf.ones([c])

    def affine(y, params):
        return y * tf.reshape(params["gamma"], pshape) + tf.reshape(
            params["beta"], pshape
        )

    def norm(x, mean, var):
        return (x - mean) * tf.math.rsqrt(var + EPS)

    def fn(x, training, params):
        if kind == "BN" and ndim == 4:
            fmt = "NHWC" if ax == 3 else "NCHW"
            if training:
                y, _, _ = tf.compat.v1.nn.fused_batch_norm(
                    x,
                    params["gamma"],
                    params["beta"],
                    epsilon=EPS,
                    data_format=fmt,
                    is_training=True,
                )
            else:
                y, _, _ = tf.compat.v1.nn.fused_batch_norm(
                    x,
                    params["gamma"],
                    params["beta"],
                    rm,
                    rv,
                    epsilon=EPS,
                    data_format=fmt,
                    is_training=False,
                )
            return y
        if kind == "LRN":  # the NHWC kernel (XLA lowers it too)
            if ax == ndim - 1:
                return tf.nn.local_response_normalization(x)
            y = tf.nn.local_response_normalization(
                tf.transpose(x, [0, 2, 3, 1])
            )
            return tf.transpose(y, [0, 3, 1, 2])
        if kind == "BN":
            if training:
                mean, var = tf.nn.moments(x, [0] + spatial, keepdims=True)
            else:
                mean, var = tf.reshape(rm, pshape), tf.reshape(rv, pshape)
            return affine(norm(x, mean, var), params)
        if kind == "LN":
            return affine(
                norm(x, *tf.nn.moments(x, [ax], keepdims=True)), params
            )
        if kind in ("RMS", "FRN"):
            axes = [ax] if kind == "RMS" else spatial
            nu2 = tf.reduce_mean(tf.square(x), axes, keepdims=True)
            y = (
                x
                * tf.math.rsqrt(nu2 + EPS)
                * tf.reshape(params["gamma"], pshape)
            )
            if kind == "RMS":
                return y
            y = y + tf.reshape(params["beta"], pshape)
            return tf.maximum(y, tf.reshape(params["tau"], pshape))
        if kind in ("IN", "GN"):
            g = c if kind == "IN" else groups
            shape = tf.unstack(tf.shape(x))
            shape[ax : ax + 1] = [g, c // g]
            v = tf.reshape(x, tf.stack(shape))
            axes = [a for a in range(1, ndim + 1) if a != ax]
            y = tf.reshape(
                norm(v, *tf.nn.moments(v, axes, keepdims=True)), tf.shape(x)
            )
            return affine(y, params)
        mean_in, var_in = tf.nn.moments(x, spatial, keepdims=True)
        if training:
            mean_bn = tf.reduce_mean(mean_in, 0, keepdims=True)
            var_bn = (
                tf.reduce_mean(var_in + mean_in**2, 0, keepdims=True)
                - mean_bn**2
            )
        else:
            mean_bn, var_bn = tf.reshape(rm, pshape), tf.reshape(rv, pshape)
        if kind == "BIN":
            rho = tf.reshape(tf.clip_by_value(params["rho"], 0, 1), pshape)
            y = rho * norm(x, mean_bn, var_bn) + (1 - rho) * norm(
                x, mean_in, var_in
            )
            return affine(y, params)
        mean_ln = tf.reduce_mean(mean_in, ax, keepdims=True)
        var_ln = (
            tf.reduce_mean(var_in + mean_in**2, ax, keepdims=True) - mean_ln**2
        )
        wm, wv = tf.nn.softmax(params["mw"]), tf.nn.softmax(params["vw"])
        mean = wm[0] * mean_in + wm[1] * mean_ln + wm[2] * mean_bn
        var = wv[0] * var_in + wv[1] * var_ln + wv[2] * var_bn
        return affine(norm(x, mean, var), params)

    return fn, p


# ---------------------------------------------------------------------------
# Runners: (layer or native fn) x mode x execution -> a no-argument callable
# that runs once and waits for the result.
# ---------------------------------------------------------------------------
def _torch_runner(fn_params, mode, x_np, up_np, disable_native=False):
    import contextlib

    import torch

    fn, params = fn_params
    x = torch.tensor(x_np)
    up = torch.tensor(up_np)
    ctx = kn_native.disabled if disable_native else contextlib.nullcontext
    if mode == "grad":
        x.requires_grad_(True)
        for t in params.values():
            t.requires_grad_(True)
        leaves = [x] + list(params.values())

        def run():
            with ctx():
                y = fn(x, True, params)
            return torch.autograd.grad(
                (y * up).sum(), leaves, allow_unused=True
            )

        run.memory = lambda: torch_saved_bytes(run)
        return run

    def run():
        with torch.no_grad(), ctx():
            return fn(x, mode == "train", params)

    return run


def _layer_fn_torch(layer):
    """A keras layer as `fn(x, training, params)` over its own weights."""
    params = {f"w{i}": v.value for i, v in enumerate(layer.trainable_variables)}

    def fn(x, training, _params):
        return layer(x, training=training)

    return fn, params


def runner(contender, mode, execution, x_np, up_np, meta):
    """A callable timing one contender (None where it does not exist)."""
    kind, axis, groups = meta["kind"], meta["axis"], meta["groups"]
    ndim, c = x_np.ndim, x_np.shape[axis]
    if contender == "copy":
        return _copy_runner(x_np, execution)
    if contender in ("ours", "ours_ops", "keras"):
        make = make_keras if contender == "keras" else make_ours
        layer = make(kind, axis, groups)
        if layer is None:
            return None
        layer.build(x_np.shape)
        if BACKEND == "torch":
            return _torch_runner(
                _layer_fn_torch(layer),
                mode,
                x_np,
                up_np,
                disable_native=contender == "ours_ops",
            )
        return _keras_runner(layer, mode, execution, x_np, up_np)
    maker = {
        "torch": _native_torch,
        "jax": _native_jax,
        "tensorflow": _native_tf,
    }[BACKEND]
    fn_params = maker(kind, axis, groups, ndim, c)
    if fn_params is None:
        return None
    if BACKEND == "torch":
        return _torch_runner(fn_params, mode, x_np, up_np)
    if BACKEND == "jax":
        return _jax_fn_runner(fn_params, mode, execution, x_np, up_np)
    return _tf_fn_runner(fn_params, mode, execution, x_np, up_np)


def _copy_runner(x_np, execution):
    if BACKEND == "torch":
        import torch

        x = torch.tensor(x_np)
        return lambda: torch.neg(x)
    if BACKEND == "jax":
        import jax

        x = jax.numpy.asarray(x_np)
        f = jax.jit(lambda t: -t)
        return lambda: f(x).block_until_ready()
    import tensorflow as tf

    x = tf.constant(x_np)
    return lambda: tf.negative(x)


def _keras_runner(layer, mode, execution, x_np, up_np):
    tv = [v.value for v in layer.trainable_variables]
    ntv = [v.value for v in layer.non_trainable_variables]
    takes_training = getattr(layer, "_call_has_training_arg", True)
    if BACKEND == "jax":
        import jax
        import jax.numpy as jnp

        x, up = jnp.asarray(x_np), jnp.asarray(up_np)

        def fwd(tv, x, training):
            kwargs = {"training": training} if takes_training else {}
            return layer.stateless_call(tv, ntv, x, **kwargs)

        if mode == "grad":

            def loss(tv, x):
                y, new = fwd(tv, x, True)
                return jnp.sum(y * up), new

            f = jax.grad(loss, argnums=(0, 1), has_aux=True)
        else:
            training = mode == "train"

            def f(tv, x):
                return fwd(tv, x, training)

        if execution == "compiled":
            f = jax.jit(f)
        run = lambda: jax.block_until_ready(f(tv, x))  # noqa: E731
        run.memory = lambda: _jax_temp_bytes(f, tv, x)
        return run
    import tensorflow as tf

    x, up = tf.constant(x_np), tf.constant(up_np)
    if mode == "grad":

        def f(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = layer(x, training=True)
                loss = tf.reduce_sum(y * up)
            return tape.gradient(loss, [x] + layer.trainable_variables)
    else:
        training = mode == "train"

        def f(x):
            return layer(x, training=training)

    if execution == "compiled":
        f = tf.function(f, jit_compile=True)
    return lambda: _tf_sync(f(x))


def _tf_sync(out):
    # TF on CPU returns eager results once computed: nothing to wait for.
    return out


def _jax_fn_runner(fn_params, mode, execution, x_np, up_np):
    import jax
    import jax.numpy as jnp

    fn, params = fn_params
    x, up = jnp.asarray(x_np), jnp.asarray(up_np)
    if mode == "grad":

        def loss(params, x):
            return jnp.sum(fn(x, True, params) * up)

        f = jax.grad(loss, argnums=(0, 1))
    else:
        training = mode == "train"

        def f(params, x):
            return fn(x, training, params)

    if execution == "compiled":
        f = jax.jit(f)
    run = lambda: jax.block_until_ready(f(params, x))  # noqa: E731
    run.memory = lambda: _jax_temp_bytes(f, params, x)
    return run


def _tf_fn_runner(fn_params, mode, execution, x_np, up_np):
    import tensorflow as tf

    fn, params = fn_params
    x, up = tf.constant(x_np), tf.constant(up_np)
    # Every weight a contender may use (TF returns None for the unused ones).
    watched = [params["gamma"], params["beta"], params["tau"]]
    if mode == "grad":

        def f(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                tape.watch(watched)
                loss = tf.reduce_sum(fn(x, True, params) * up)
            return tape.gradient(loss, [x] + watched)
    else:
        training = mode == "train"

        def f(x):
            return fn(x, training, params)

    if execution == "compiled":
        f = tf.function(f, jit_compile=True)
    return lambda: _tf_sync(f(x))


# ---------------------------------------------------------------------------
# Memory kept for the backward pass / temporaries
# ---------------------------------------------------------------------------
def torch_saved_bytes(run):
    """Bytes of the distinct tensors autograd saves for backward in `run`."""
    import torch

    seen = {}

    def pack(t):
        try:
            ptr = t.untyped_storage().data_ptr()
            seen[ptr] = max(seen.get(ptr, 0), t.untyped_storage().nbytes())
        except Exception:  # pragma: no cover - meta or sparse tensors
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run()
    return sum(seen.values())


def _jax_temp_bytes(f, *args):
    """`temp_size_in_bytes` of the compiled `f` (None if not jitted)."""
    if not hasattr(f, "lower"):
        return None
    try:
        return f.lower(*args).compile().memory_analysis().temp_size_in_bytes
    except Exception:  # pragma: no cover - no analysis on this platform
        return None


# ---------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------
WARM_UP_CALLS = 4


def time_interleaved(
    runners,
    rounds,
    min_sample_s=0.004,
    budget_s=None,
    minima=None,
    clock=time.perf_counter,
):
    """Median seconds per call of each runner, interleaved over rounds.

    Where `minima` is a dict, it receives each runner's fastest sample too:
    on a machine whose run queue is several times its cores, a sample
    preempted midway can take 10-100x its time, and the minimum (noise only
    adds time) separates two equal programs better than the median.
    `clock` times the samples: `time.process_time` (CPU seconds of this
    process, every thread) leaves out the time other processes hold the
    cores, which wall time cannot; it is the work done, where the backend
    computes on as many threads as it was given (`--threads`).

    Each round runs every runner once (in a rotated order, so none always
    goes first); where a call is faster than `min_sample_s`, every runner is
    repeated the same number of times within its sample. Medians resist the other processes on a shared machine.
    """
    for name in list(runners):  # a contender that fails is left out
        try:
            # Warm up: compilations, caches, and keras_norms' compiled
            # eager calls (backend/compiled.py), which start at a third call.
            for _ in range(WARM_UP_CALLS):
                runners[name]()
        except Exception as e:  # e.g. Keras' own LN on torch, axis=1
            print(
                f"  {name} failed: {type(e).__name__}: "
                f"{str(e).strip().splitlines()[-1][:120]}",
                file=sys.stderr,
            )
            del runners[name]
    names = list(runners)
    single = []
    for name in names:  # calibrate (the call above warmed up and compiled)
        t0 = time.perf_counter()
        runners[name]()
        single.append(max(time.perf_counter() - t0, 1e-6))
    # One repeat count for every contender of the cell: a contender timed
    # once per sample (colder caches, more overhead) against one timed ten
    # times in a row would be biased by that alone.
    common = max(1, int(min_sample_s / statistics.median(single)))
    reps = {name: common for name in names}
    samples = {name: [] for name in names}
    start = time.perf_counter()
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            n = reps[name]
            t0 = clock()
            for _ in range(n):
                runners[name]()
            samples[name].append((clock() - t0) / n)
        if budget_s and r >= 2 and time.perf_counter() - start > budget_s:
            break
    if minima is not None:
        minima.update({name: min(s) for name, s in samples.items()})
    return {name: statistics.median(s) for name, s in samples.items()}
