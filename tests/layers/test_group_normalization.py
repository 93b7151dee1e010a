"""GroupNormalization: against NumPy, torch's `F.group_norm` and
`keras.layers.GroupNormalization`, forward and gradients, on every backend;
the equivalences GN(1) = LN over (C, H, W) and GN(C) = IN; plus the shared
checks (tests/layer_checks.py).

Elsewhere: drop-in parity with Keras in tests/test_keras_parity.py.
"""

import keras
import numpy as np
import pytest

import keras_norms as kn
from tests import helpers
from tests import layer_checks
from tests.layers._common import EPS
from tests.layers._common import LAYOUTS
from tests.layers._common import TOL
from tests.layers._common import assert_matches_torch
from tests.layers._common import assert_unit_variance
from tests.layers._common import large_mean_input
from tests.layers._common import set_gamma_beta
from tests.layers._common import width_equal_to_channels_input

torch = pytest.importorskip("torch")
F = torch.nn.functional


class TestSharedChecks(layer_checks.LayerChecks):
    cases = {
        "two_groups": layer_checks.Case(
            lambda: kn.GroupNormalization(groups=2),
            (2, 3, 3, 4),
            twin=lambda: keras.layers.GroupNormalization(groups=2),
            fit=False,
        ),
        "channels_first": layer_checks.Case(
            lambda: kn.GroupNormalization(groups=3, axis=1),
            (2, 3, 3, 4),
            fit=False,
        ),
        "per_channel_no_scale": layer_checks.Case(
            lambda: kn.GroupNormalization(groups=-1, scale=False),
            (4, 5, 6, 3),
            twin=lambda: keras.layers.GroupNormalization(
                groups=-1, scale=False
            ),
        ),
    }
    masking = layer_checks.Masking(
        lambda: kn.GroupNormalization(groups=3), (4, 6, 3)
    )


@pytest.mark.parametrize("shape,axis", LAYOUTS)
@pytest.mark.parametrize("groups", [1, 2, -1])
def test_group_norm_matches_torch(shape, axis, groups):
    channels = shape[axis]
    if groups == 2 and channels % 2:
        shape = tuple(
            2 * d if i == axis % len(shape) else d for i, d in enumerate(shape)
        )
        channels *= 2
    if groups == -1 and len(shape) == 2:
        pytest.skip("one channel per group on a rank-2 input is refused")
    x = helpers.random_input(shape, loc=-1.0, scale=3.0)
    layer = kn.GroupNormalization(groups=groups, axis=axis, epsilon=EPS)
    layer.build(shape)
    gamma, beta = set_gamma_beta(layer, channels)
    up = helpers.random_input(shape, seed=7)
    y, dx, grads = helpers.forward_and_grads(layer, x, up, training=True)
    n_groups = channels if groups == -1 else groups
    ry, rdx, rgrads = helpers.torch_reference(
        lambda t, weight, bias: F.group_norm(
            t, n_groups, weight, bias, eps=EPS
        ),
        x,
        {"weight": gamma, "bias": beta},
        up,
        axis,
    )
    assert_matches_torch((y, dx, grads), (ry, rdx, rgrads))


def test_group_norm_matches_numpy_groups_of_consecutive_channels():
    shape = (2, 3, 3, 8)
    x = helpers.random_input(shape, loc=3.0)
    y = helpers.to_numpy(kn.GroupNormalization(groups=4)(x))
    grouped = x.reshape(2, 3, 3, 4, 2)
    expected = helpers.numpy_normalize(grouped, (1, 2, 4), EPS).reshape(shape)
    np.testing.assert_allclose(y, expected, **TOL)


@pytest.mark.parametrize("axis", [-1, 1])
def test_group_norm_equivalences(axis):
    shape = (3, 6, 5, 4) if axis == 1 else (3, 5, 4, 6)
    x = helpers.random_input(shape, loc=2.0, scale=0.5)
    gn1 = helpers.to_numpy(kn.GroupNormalization(groups=1, axis=axis)(x))
    ln = helpers.to_numpy(kn.LayerNormalization(axis=[1, 2, 3])(x))
    np.testing.assert_allclose(gn1, ln, **TOL)
    instance = helpers.to_numpy(kn.InstanceNormalization(axis=axis)(x))
    for groups in (-1, 6):
        gn = helpers.to_numpy(
            kn.GroupNormalization(groups=groups, axis=axis)(x)
        )
        np.testing.assert_allclose(gn, instance, **TOL)


def test_group_norm_matches_keras_layer():
    shape = (2, 4, 4, 8)
    x = helpers.random_input(shape, loc=1.0)
    ours = kn.GroupNormalization(groups=4)
    theirs = keras.layers.GroupNormalization(groups=4)
    ours.build(shape)
    theirs.build(shape)
    assert [w.name for w in ours.weights] == [w.name for w in theirs.weights]
    np.testing.assert_allclose(
        helpers.to_numpy(ours(x)),
        helpers.to_numpy(theirs(x)),
        rtol=1e-4,
        atol=1e-4,
    )


@pytest.mark.parametrize("shape", [(2, 1, 4), (2, 1, 1, 4), (3, 4)])
def test_one_value_per_group_matches_keras(shape):
    # One value per group in training behaves as Keras does: the variance
    # is 0, the output `beta`; InstanceNormalization too where it has a
    # spatial axis.
    x = helpers.random_input(shape, seed=3)
    ref = keras.layers.GroupNormalization(groups=-1)
    ours = kn.GroupNormalization(groups=-1)
    for layer in (ours, ref):
        layer.build(shape)
    helpers.set_random_weights(ref, seed=4)
    ours.set_weights(ref.get_weights())
    y_ref = helpers.to_numpy(ref(x, training=True))
    np.testing.assert_allclose(
        helpers.to_numpy(ours(x, training=True)), y_ref, atol=2e-5
    )
    if len(shape) > 2:  # InstanceNormalization needs a spatial axis
        inorm = kn.InstanceNormalization()
        inorm.build(shape)
        inorm.set_weights(ref.get_weights())
        np.testing.assert_allclose(helpers.to_numpy(inorm(x)), y_ref, atol=2e-5)


def test_large_mean_keeps_unit_variance():
    x = large_mean_input()
    assert_unit_variance(
        helpers.to_numpy(kn.GroupNormalization(groups=2)(x, training=True))
    )


def test_channels_first_with_width_equal_to_channels():
    x = width_equal_to_channels_input()
    layer = kn.GroupNormalization(groups=2, axis=1)
    layer.build(x.shape)
    gamma, beta = set_gamma_beta(layer, 4)
    b = lambda v: helpers.broadcast_param(v, 4, 1)  # noqa: E731
    grouped = x.reshape(2, 2, 2, 3, 4)
    expected = helpers.numpy_normalize(grouped, (2, 3, 4), EPS).reshape(x.shape)
    for training in (True, False):
        y = helpers.to_numpy(layer(x, training=training))
        np.testing.assert_allclose(y, expected * b(gamma) + b(beta), **TOL)


@pytest.mark.parametrize("groups", [0, -2])
def test_bad_arguments_refused_at_construction(groups):
    with pytest.raises(ValueError, match="groups.*Received: groups="):
        kn.GroupNormalization(groups=groups)


def test_bad_argument_types_refused():
    with pytest.raises(TypeError, match="groups"):
        kn.GroupNormalization(groups=2.5)


def test_numpy_scalars_accepted_and_configs_stay_plain_python():
    # Issue 21, item 9.
    layer = kn.GroupNormalization(groups=np.int64(2), axis=np.int32(-1))
    layer_checks.check_config_round_trip(layer)
    assert layer.groups == 2 and type(layer.groups) is int
    x = helpers.random_input((2, 3, 4), loc=1.0)
    assert helpers.to_numpy(layer(x)).shape == x.shape


@pytest.mark.parametrize("groups", [3, 16])
def test_bad_shapes_refused_at_build(groups):
    with pytest.raises(ValueError, match="groups.*divide"):
        kn.GroupNormalization(groups=groups).build((2, 4, 4, 8))
