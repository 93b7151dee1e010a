"""LayerNormalization: against NumPy, torch's `F.layer_norm` and
`keras.layers.LayerNormalization`, forward and gradients, on every
backend; plus the shared checks (tests/layer_checks.py).

Elsewhere: drop-in parity with Keras (arguments, rank not locked at build,
`axis` in the config) in tests/test_keras_parity.py.
"""

import keras
import numpy as np
import pytest

import keras_norms as kn
from tests import helpers
from tests import layer_checks
from tests.layers._common import EPS
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
        "two_axes": layer_checks.Case(
            lambda: kn.LayerNormalization(axis=[2, 3], epsilon=1e-5),
            (4, 5, 6, 3),
            twin=lambda: keras.layers.LayerNormalization(
                axis=[2, 3], epsilon=1e-5
            ),
        ),
        "last_axis": layer_checks.Case(
            lambda: kn.LayerNormalization(),
            (2, 3, 3, 4),
            twin=lambda: keras.layers.LayerNormalization(),
            fit=False,
        ),
    }
    masking = layer_checks.Masking(kn.LayerNormalization, (4, 6, 3))


@pytest.mark.parametrize("shape", [(6, 5), (4, 7, 5), (3, 4, 5, 6)])
@pytest.mark.parametrize("training", [True, False])
def test_layer_norm_matches_torch(shape, training):
    x = helpers.random_input(shape, loc=-3.0, scale=2.0)
    layer = kn.LayerNormalization(epsilon=EPS)
    layer.build(shape)
    gamma, beta = set_gamma_beta(layer, shape[-1])
    up = helpers.random_input(shape, seed=7)
    y, dx, grads = helpers.forward_and_grads(layer, x, up, training=training)
    # torch's layer_norm normalizes the trailing axes, no channel move.
    ry, rdx, rgrads = helpers.torch_reference(
        lambda t, weight, bias: F.layer_norm(
            t, (shape[-1],), weight, bias, eps=EPS
        ),
        x,
        {"weight": gamma, "bias": beta},
        up,
        1,  # identity move: torch_reference moves axis 1 to 1
    )
    assert_matches_torch((y, dx, grads), (ry, rdx, rgrads))


@pytest.mark.parametrize("axis", [[1, 2, 3], [2, 3], [1, -1], -2])
def test_layer_norm_axes_match_numpy(axis):
    shape = (3, 4, 5, 6)
    x = helpers.random_input(shape, loc=1.0, scale=2.0)
    layer = kn.LayerNormalization(axis=axis)
    y = helpers.to_numpy(layer(x))
    axes = [a % 4 for a in ([axis] if isinstance(axis, int) else axis)]
    assert tuple(layer.gamma.shape) == tuple(shape[a] for a in sorted(axes))
    np.testing.assert_allclose(y, helpers.numpy_normalize(x, axes, EPS), **TOL)


def test_layer_norm_matches_keras_layer():
    shape = (3, 4, 6)
    x = helpers.random_input(shape, loc=2.0)
    ours = kn.LayerNormalization(axis=[1, 2])
    theirs = keras.layers.LayerNormalization(axis=[1, 2])
    ours.build(shape)
    theirs.build(shape)
    assert [w.name for w in ours.weights] == [w.name for w in theirs.weights]
    theirs.set_weights([np.random.randn(*w.shape) for w in theirs.weights])
    ours.set_weights(theirs.get_weights())
    np.testing.assert_allclose(
        helpers.to_numpy(ours(x)),
        helpers.to_numpy(theirs(x)),
        rtol=1e-4,
        atol=1e-4,
    )


def test_layer_norm_rms_scaling_matches_keras_deprecated_behaviour():
    # Keras' deprecated `rms_scaling=True` divides by sqrt(variance + eps)
    # without centering (and without beta); ours does the same, warning too.
    shape = (3, 5, 6)
    x = helpers.random_input(shape, loc=2.0)
    with pytest.warns(UserWarning, match="rms_scaling"):
        theirs = keras.layers.LayerNormalization(rms_scaling=True)
    with pytest.warns(UserWarning, match="rms_scaling"):
        ours = kn.LayerNormalization(rms_scaling=True)
    expected = x / np.sqrt(x.var(axis=-1, keepdims=True) + 1e-3)
    np.testing.assert_allclose(
        helpers.to_numpy(ours(x)), expected, rtol=1e-4, atol=1e-4
    )
    np.testing.assert_allclose(
        helpers.to_numpy(ours(x)),
        helpers.to_numpy(theirs(x)),
        rtol=1e-4,
        atol=1e-4,
    )
    assert ours.get_config()["rms_scaling"] is True


def test_large_mean_keeps_unit_variance():
    x = large_mean_input()
    layer = kn.LayerNormalization(axis=[1, 2, 3])
    assert_unit_variance(helpers.to_numpy(layer(x, training=True)))


def test_channels_first_with_width_equal_to_channels():
    # Over every non-batch axis: the gains are a (C, H, W) tensor; the
    # output just has to be computed (and finite) on that layout.
    x = width_equal_to_channels_input()
    layer = kn.LayerNormalization(axis=[1, 2, 3])
    for training in (True, False):
        y = helpers.to_numpy(layer(x, training=training))
        np.testing.assert_allclose(
            y, helpers.numpy_normalize(x, (1, 2, 3), EPS), **TOL
        )


def test_bad_arguments_refused_at_construction():
    with pytest.raises(ValueError, match="epsilon.*Received: epsilon="):
        kn.LayerNormalization(epsilon=-1e-5)


def test_bad_argument_types_refused():
    with pytest.raises(TypeError, match="axis"):
        kn.LayerNormalization(axis="last")


def test_numpy_scalars_accepted_and_configs_stay_plain_python():
    # Issue 21, item 9.
    layer = kn.LayerNormalization(axis=[np.int64(1), np.int64(2)])
    layer_checks.check_config_round_trip(layer)


def test_bad_shapes_refused_at_build():
    with pytest.raises(ValueError, match="axis.*out of range"):
        kn.LayerNormalization(axis=[1, -5]).build((2, 4, 4, 8))
