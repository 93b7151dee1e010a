"""Fixtures of the BatchNormalization, LayerNormalization,
InstanceNormalization and GroupNormalization modules: the layouts they are
checked on and the comparison with `torch.nn.functional`."""

import numpy as np

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
    from tests import helpers

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
    from tests import helpers

    return helpers.random_input((2, 4, 3, 4), loc=1.0, scale=2.0)
