"""What several layer modules in tests/layers/ share beyond the shared
checks (tests/layer_checks.py): the layouts BN, LN, IN and GN are checked
on, comparisons with `torch.nn.functional`, and the NumPy references with
finite-difference gradients of BIN, SN and WN."""

import inspect

import numpy as np

from tests import helpers

# (shape, channel axis): rank 2 to 5, channels-last and channels-first.
LAYOUTS = [
    ((6, 5), -1),
    ((4, 7, 5), -1),  # NTC
    ((4, 5, 7), 1),  # NCT
    ((3, 4, 5, 6), -1),  # NHWC
    ((3, 6, 4, 5), 1),  # NCHW
    ((2, 3, 4, 5, 4), -1),  # NDHWC
    ((2, 4, 3, 4, 5), 1),  # NCDHW
]
SPATIAL_LAYOUTS = [lay for lay in LAYOUTS if len(lay[0]) > 2]
EPS = 1e-3
# Float32 layers against float64 references.
TOL = dict(rtol=2e-4, atol=2e-4)


def set_gamma_beta(layer, channels, seed=3):
    """Random `gamma` (positive) and `beta`; returns them as NumPy."""
    rng = np.random.RandomState(seed)
    gamma = rng.uniform(0.5, 1.5, channels).astype("float32")
    beta = rng.randn(channels).astype("float32")
    layer.gamma.assign(gamma)
    layer.beta.assign(beta)
    return gamma, beta


def assert_matches_torch(ours, reference):
    """Output, input gradient and gamma/beta gradients against torch's."""
    (y, dx, grads), (ry, rdx, rgrads) = ours, reference
    np.testing.assert_allclose(y, ry, **TOL)
    np.testing.assert_allclose(dx, rdx, **TOL)
    np.testing.assert_allclose(grads["gamma"], rgrads["weight"], **TOL)
    np.testing.assert_allclose(grads["beta"], rgrads["bias"], **TOL)


def large_mean_input():
    """Rows of mean 1e4 and std 1 in float32: the one-pass
    E[x^2] - E[x]^2 is off by tens here; two passes recover unit variance."""
    return helpers.random_input((8, 8, 8, 4), loc=1e4, scale=1.0)


def assert_unit_variance(y):
    assert np.all(np.isfinite(y))
    np.testing.assert_allclose(y.std(), 1.0, atol=2e-2)
    np.testing.assert_allclose(y.mean(), 0.0, atol=2e-2)


def width_equal_to_channels_input():
    """A channels-first (2, 4, 3, 4) input, width equal to channels: Keras
    3.15's TF `ops.add` turns `x + b` with b of shape (1, C, 1, 1) into an
    NHWC bias_add when the last axis also has size C; the scale and shift
    must stay on the channel axis."""
    return helpers.random_input((2, 4, 3, 4), loc=1.0, scale=2.0)


# ---------------------------------------------------------------------------
# BatchInstance, Switchable and WeightNormalization: NumPy references with
# gradients by central finite differences.
# ---------------------------------------------------------------------------
AXES = [-1, 1]


def over_axes(test):
    """Run `test` channels-last (axis=-1) then channels-first (axis=1).

    A loop rather than a parametrization: each test pays its own setup and
    teardown, which is slow on JAX.
    """

    def run(**kwargs):
        for axis in AXES:
            test(axis=axis, **kwargs)

    signature = inspect.signature(test)
    run.__signature__ = signature.replace(
        parameters=[
            p for p in signature.parameters.values() if p.name != "axis"
        ]
    )
    run.__name__ = test.__name__
    run.__doc__ = test.__doc__
    run.__dict__.update(test.__dict__)  # pytest marks (parametrize)
    return run


def numeric_grad(f, arr, eps=1e-6):
    """Central finite differences of the scalar `f()` w.r.t. `arr` (float64)."""
    grad = np.zeros_like(arr)
    flat, gflat = arr.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        hi = f()
        flat[i] = old - eps
        lo = f()
        flat[i] = old
        gflat[i] = (hi - lo) / (2 * eps)
    return grad


def check_against_numpy(layer, x, ref, params, training=True, fd=True):
    """Forward, dx and parameter grads of `layer` vs `ref(x, **params)`."""
    x64 = x.astype("float64")
    p64 = {k: np.asarray(v, "float64") for k, v in params.items()}
    upstream = helpers.random_input(ref(x64, **p64).shape, seed=7)
    y, dx, grads = helpers.forward_and_grads(layer, x, upstream, training)
    np.testing.assert_allclose(y, ref(x64, **p64), rtol=1e-4, atol=1e-4)
    if not fd:
        return
    loss = lambda: float(np.sum(ref(x64, **p64) * upstream))  # noqa: E731
    np.testing.assert_allclose(
        dx, numeric_grad(loss, x64), rtol=1e-3, atol=1e-4
    )
    for name, value in p64.items():
        np.testing.assert_allclose(
            grads[name],
            numeric_grad(loss, value),
            rtol=1e-3,
            atol=1e-4,
            err_msg=name,
        )


def assign(layer, **values):
    """Assign the weights of `layer` named in `values`."""
    for w in layer.weights:
        if w.name in values:
            w.assign(np.asarray(values[w.name], "float32"))


def spatial_axes(x, axis):
    c = axis % x.ndim
    return tuple(a for a in range(1, x.ndim) if a != c)


def per_channel(v, x, axis):
    return helpers.broadcast_param(
        np.asarray(v, "float64"), x.ndim, axis % x.ndim
    )


def mixed_input(axis, seed=0, shape=(4, 5, 6, 3)):
    """A (N, H, W, C) or (N, C, H, W) input with a large-ish mean."""
    x = helpers.random_input(shape, seed=seed, loc=3.0, scale=2.0)
    return x if axis == -1 else np.ascontiguousarray(np.moveaxis(x, -1, 1))


def moments(x, axes):
    mean = x.mean(axis=axes, keepdims=True)
    return mean, ((x - mean) ** 2).mean(axis=axes, keepdims=True)


def torch_peer(kind, x, axis, gamma, beta, upstream):
    """BN, IN or LN (over C, H, W, per-channel affine) in torch, float64."""
    import torch.nn.functional as F

    def bn(t, gamma, beta):
        return F.batch_norm(t, None, None, gamma, beta, training=True, eps=EPS)

    def inn(t, gamma, beta):
        return F.instance_norm(t, weight=gamma, bias=beta, eps=EPS)

    def ln(t, gamma, beta):
        y = F.layer_norm(t, t.shape[1:], eps=EPS)
        shape = (1, -1) + (1,) * (t.ndim - 2)
        return y * gamma.view(shape) + beta.view(shape)

    fn = {"batch": bn, "instance": inn, "layer": ln}[kind]
    return helpers.torch_reference(
        fn, x, {"gamma": gamma, "beta": beta}, upstream, axis % x.ndim
    )


def check_against_peer(layer, kind, x, axis):
    """Training output and gradients of `layer` equal torch's `kind` norm."""
    rng = np.random.RandomState(3)
    gamma = rng.uniform(0.5, 1.5, x.shape[axis]).astype("float32")
    beta = rng.randn(x.shape[axis]).astype("float32")
    assign(layer, gamma=gamma, beta=beta)
    upstream = helpers.random_input(x.shape, seed=7)
    y, dx, grads = helpers.forward_and_grads(layer, x, upstream, True)
    ry, rdx, rgrads = torch_peer(kind, x, axis, gamma, beta, upstream)
    np.testing.assert_allclose(y, ry, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dx, rdx, rtol=1e-3, atol=1e-4)
    for name in ("gamma", "beta"):
        np.testing.assert_allclose(
            grads[name], rgrads[name], rtol=1e-3, atol=1e-3
        )


def check_moving_statistics_update_like_bn(cls, axis):
    """BIN and SN keep BatchNormalization's moving averages of the batch
    moments; `use_global_stats` normalizes with (and keeps) them."""
    x = mixed_input(axis)
    layer = cls(axis=axis, momentum=0.6)
    layer(x, training=True)
    layer(x + 1.0, training=True)
    axes = (0,) + spatial_axes(x, axis)
    mean, var = x.mean(axis=axes), x.var(axis=axes)
    expected_mean = (0.0 * 0.6 + mean * 0.4) * 0.6 + (mean + 1.0) * 0.4
    expected_var = (1.0 * 0.6 + var * 0.4) * 0.6 + var * 0.4
    np.testing.assert_allclose(
        helpers.to_numpy(layer.moving_mean), expected_mean, rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        helpers.to_numpy(layer.moving_variance),
        expected_var,
        rtol=1e-5,
        atol=1e-5,
    )
    frozen = cls(axis=axis, use_global_stats=True)
    frozen(x, training=True)
    np.testing.assert_allclose(helpers.to_numpy(frozen.moving_mean), 0.0)
