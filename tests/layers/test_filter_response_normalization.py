"""FilterResponseNormalization (+ TLU): against NumPy (the paper's
Algorithm 1) and the same formula in torch for gradients, on every
backend; the learned epsilon; plus the shared checks
(tests/layer_checks.py)."""

import keras
import numpy as np
import pytest

import keras_norms as kn
from tests import helpers
from tests import layer_checks

torch = pytest.importorskip("torch")

# Float32 layers against float64 references.
TOL = dict(rtol=2e-4, atol=2e-4)


class TestSharedChecks(layer_checks.LayerChecks):
    cases = {
        "channels_last": layer_checks.Case(
            lambda: kn.FilterResponseNormalization(),
            (2, 3, 3, 4),
            fit=False,
        ),
        "learned_epsilon_channels_first": layer_checks.Case(
            lambda: kn.FilterResponseNormalization(
                axis=1,
                epsilon=1e-5,
                learned_epsilon=True,
                learned_epsilon_constraint="non_neg",
                tau_regularizer="l2",
            ),
            (6, 2, 4, 4),
        ),
    }
    masking = layer_checks.Masking(kn.FilterResponseNormalization, (4, 6, 3))
    test_weights_match_keras_twin = None  # keras.layers has no FRN


FRN_LAYOUTS = [
    ((3, 5, 4), -1),  # NTC
    ((3, 4, 5), 1),  # NCT
    ((2, 4, 5, 3), -1),  # NHWC
    ((2, 3, 4, 5), 1),  # NCHW
    ((2, 3, 4, 3, 2), -1),  # NDHWC
]


def _frn_numpy(x, axis, eps, gamma, beta, tau):
    """The paper's Algorithm 1 in float64 NumPy."""
    x = x.astype("float64")
    ndim = x.ndim
    axis %= ndim
    spatial = tuple(a for a in range(1, ndim) if a != axis)
    nu2 = (x**2).mean(axis=spatial, keepdims=True)
    g, b, t = (
        helpers.broadcast_param(p, ndim, axis) for p in (gamma, beta, tau)
    )
    return np.maximum(g * x / np.sqrt(nu2 + eps) + b, t)


def _frn_torch(eps, learned=False):
    """The same formula in torch (channels at axis 1), for autograd."""

    def fn(t, gamma, beta, tau, epsilon_l=None):
        view = (1, -1) + (1,) * (t.ndim - 2)
        nu2 = (t * t).mean(dim=tuple(range(2, t.ndim)), keepdim=True)
        e = eps + torch.abs(epsilon_l) if learned else eps
        y = gamma.view(view) * t * torch.rsqrt(nu2 + e) + beta.view(view)
        return torch.maximum(y, tau.view(view))

    return fn


def _frn_weights(layer):
    return {w.name: helpers.to_numpy(w) for w in layer.weights}


@pytest.mark.parametrize("shape,axis", FRN_LAYOUTS)
def test_frn_matches_numpy_and_torch_grads(shape, axis):
    eps = 1e-6
    x = helpers.random_input(shape, loc=0.3, scale=2.0)
    layer = kn.FilterResponseNormalization(axis=axis, epsilon=eps)
    layer.build(shape)
    helpers.set_random_weights(layer)
    assert [w.name for w in layer.weights] == ["gamma", "beta", "tau"]
    w = _frn_weights(layer)
    expected = _frn_numpy(x, axis, eps, w["gamma"], w["beta"], w["tau"])
    # The TLU clips a real share of the outputs with these weights.
    tau = helpers.broadcast_param(w["tau"], len(shape), axis)
    assert 0.1 < np.mean(expected == tau) < 0.9
    up = helpers.random_input(shape, seed=7)
    y, dx, grads = helpers.forward_and_grads(layer, x, up)
    np.testing.assert_allclose(y, expected, **TOL)
    np.testing.assert_allclose(
        helpers.to_numpy(layer(x, training=False)), expected, **TOL
    )
    ry, rdx, rgrads = helpers.torch_reference(
        _frn_torch(eps), x, w, up, axis % len(shape)
    )
    np.testing.assert_allclose(y, ry, **TOL)
    np.testing.assert_allclose(dx, rdx, **TOL)
    for name in ("gamma", "beta", "tau"):
        np.testing.assert_allclose(grads[name], rgrads[name], **TOL)


@pytest.mark.parametrize("axis", [-1, 1])
def test_frn_learned_epsilon_gradient(axis):
    # 1x1 spatial: nu2 = x**2, where epsilon matters most (the paper's case).
    shape = (4, 1, 1, 3) if axis == -1 else (4, 3, 1, 1)
    x = helpers.random_input(shape, scale=0.01)
    layer = kn.FilterResponseNormalization(axis=axis, learned_epsilon=True)
    layer.build(shape)
    helpers.set_random_weights(layer)
    layer.epsilon_l.assign([-2e-4])  # used as |epsilon_l|
    w = _frn_weights(layer)
    assert list(w) == ["gamma", "beta", "tau", "epsilon_l"]
    up = helpers.random_input(shape, seed=4)
    y, dx, grads = helpers.forward_and_grads(layer, x, up)
    ry, rdx, rgrads = helpers.torch_reference(
        _frn_torch(1e-6, learned=True), x, w, up, axis % 4
    )
    np.testing.assert_allclose(y, ry, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(dx, rdx, rtol=1e-3, atol=1e-2)
    for name in w:
        np.testing.assert_allclose(
            grads[name], rgrads[name], rtol=1e-3, atol=1e-3
        )
    assert abs(grads["epsilon_l"][0]) > 1.0


def test_frn_learned_epsilon_learns_in_fit():
    # 1x1 spatial, TLU inactive, targets made with epsilon = 4e-4: the
    # learned |epsilon_l| (starting at 1e-4) must grow toward 4e-4 - 1e-6.
    x = helpers.random_input((16, 1, 1, 3), scale=0.02)
    target = (x / np.sqrt(x**2 + 4e-4)).astype("float32")
    model = keras.Sequential(
        [
            keras.Input((1, 1, 3)),
            kn.FilterResponseNormalization(
                learned_epsilon=True,
                tau_initializer=keras.initializers.Constant(-10.0),
            ),
        ]
    )
    frn = model.layers[0]
    before = float(helpers.to_numpy(frn.epsilon_l)[0])
    # d loss / d epsilon is large (~1/epsilon): a tiny learning rate.
    model.compile(optimizer=keras.optimizers.SGD(1e-7), loss="mse")
    losses = model.fit(x, target, epochs=3, batch_size=16, verbose=0)
    after = float(helpers.to_numpy(frn.epsilon_l)[0])
    assert before == pytest.approx(1e-4)
    assert 1.2e-4 < after < 4e-4
    assert losses.history["loss"][-1] < losses.history["loss"][0]


def test_frn_one_by_one_without_learned_epsilon_is_allowed():
    x = helpers.random_input((3, 1, 1, 2))
    layer = kn.FilterResponseNormalization(
        tau_initializer=keras.initializers.Constant(-5.0)
    )
    # nu2 = x**2: the output is sign(x) (up to epsilon).
    y = helpers.to_numpy(layer(x))
    np.testing.assert_allclose(y, np.sign(x), atol=1e-3)


def test_frn_config_round_trip_keeps_every_argument():
    layer = kn.FilterResponseNormalization(
        axis=1,
        epsilon=1e-5,
        learned_epsilon=True,
        learned_epsilon_constraint="non_neg",
        tau_initializer="ones",
        tau_regularizer="l2",
    )
    clone = layer_checks.check_config_round_trip(layer)
    assert clone.learned_epsilon and clone.axis == 1


@pytest.mark.parametrize(
    "kwargs,error",
    [
        (dict(axis=[1, 2]), TypeError),  # the channel axis, not TFA's list
        (dict(epsilon=-1.0), ValueError),
        (dict(learned_epsilon="yes"), TypeError),
        (dict(center=1), TypeError),
    ],
)
def test_frn_bad_arguments(kwargs, error):
    with pytest.raises(error, match="Received"):
        kn.FilterResponseNormalization(**kwargs)


@pytest.mark.parametrize("shape", [(4, 3), (1, 2, 2, 2, 2, 2)])
def test_frn_refuses_inputs_without_spatial_axes(shape):
    with pytest.raises(ValueError, match="rank 3 to 5"):
        kn.FilterResponseNormalization().build(shape)
