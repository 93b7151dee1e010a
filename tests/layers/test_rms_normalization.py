"""RMSNormalization: against NumPy (the paper's formula), torch's
`F.rms_norm` and `keras.layers.RMSNormalization`, forward and gradients,
on every backend; plus the shared checks (tests/layer_checks.py).

Elsewhere: drop-in parity with Keras (arguments, rank not locked at build,
`axis` in the config) in tests/test_keras_parity.py.
"""

import keras
import numpy as np
import pytest

import keras_norms as kn
from tests import helpers
from tests import layer_checks

torch = pytest.importorskip("torch")
F = torch.nn.functional

# Float32 layers against float64 references.
TOL = dict(rtol=2e-4, atol=2e-4)


class TestSharedChecks(layer_checks.LayerChecks):
    cases = {
        "two_axes": layer_checks.Case(
            lambda: kn.RMSNormalization(axis=[1, 2], epsilon=1e-4),
            (8, 3, 4),
            twin=lambda: keras.layers.RMSNormalization(
                axis=[1, 2], epsilon=1e-4
            ),
        ),
        "last_axis": layer_checks.Case(
            lambda: kn.RMSNormalization(),
            (2, 3, 3, 4),
            twin=lambda: keras.layers.RMSNormalization(),
            fit=False,
        ),
    }
    masking = layer_checks.Masking(kn.RMSNormalization, (4, 6, 3))


RMS_CASES = [
    ((6, 8), -1),
    ((3, 4, 5), -1),
    ((3, 4, 5), [1, 2]),
    ((2, 3, 4, 5), [-2, -1]),
    ((2, 3, 4, 5), 1),  # a non-trailing axis
    ((2, 3, 4, 5), [1, 3]),  # non-contiguous axes
]


def _rms_torch(axes, ndim, eps):
    """`F.rms_norm` over `axes`: move them to the end, normalize, move back."""
    axes = sorted(a % ndim for a in ([axes] if isinstance(axes, int) else axes))
    tail = list(range(ndim - len(axes), ndim))

    def fn(t, weight):
        moved = t.movedim(axes, tail)
        out = F.rms_norm(moved, tuple(moved.shape[-len(axes) :]), weight, eps)
        return out.movedim(tail, axes)

    return fn


@pytest.mark.parametrize("shape,axis", RMS_CASES)
def test_rms_matches_torch_forward_and_grads(shape, axis):
    eps = 1e-5
    x = helpers.random_input(shape, loc=0.5, scale=2.0)
    layer = kn.RMSNormalization(axis=axis, epsilon=eps)
    layer.build(shape)
    helpers.set_random_weights(layer)
    scale = helpers.to_numpy(layer.scale)
    up = helpers.random_input(shape, seed=7)
    y, dx, grads = helpers.forward_and_grads(layer, x, up)
    ry, rdx, rgrads = helpers.torch_reference(
        _rms_torch(axis, len(shape), eps), x, {"weight": scale}, up, 1
    )
    np.testing.assert_allclose(y, ry, **TOL)
    np.testing.assert_allclose(dx, rdx, **TOL)
    np.testing.assert_allclose(grads["scale"], rgrads["weight"], **TOL)


def test_rms_matches_numpy_formula():
    x = helpers.random_input((4, 3, 6), loc=1.0)
    layer = kn.RMSNormalization(axis=-1, epsilon=1e-6)
    layer.build(x.shape)
    helpers.set_random_weights(layer)
    scale = helpers.to_numpy(layer.scale).astype("float64")
    x64 = x.astype("float64")
    expected = x64 / np.sqrt((x64**2).mean(-1, keepdims=True) + 1e-6) * scale
    np.testing.assert_allclose(helpers.to_numpy(layer(x)), expected, **TOL)


@pytest.mark.parametrize(
    "shape,axis", [((6, 8), -1), ((3, 4, 5), [1, 2]), ((2, 3, 4, 5), [-2, -1])]
)
def test_rms_is_a_drop_in_for_keras(shape, axis):
    peer = keras.layers.RMSNormalization(axis=axis, epsilon=1e-5)
    peer.build(shape)
    helpers.set_random_weights(peer)
    # Keras' config (its build turns `axis` into a sorted list) builds ours.
    ours = kn.RMSNormalization.from_config(peer.get_config())
    ours.build(shape)
    assert [w.name for w in ours.weights] == [w.name for w in peer.weights]
    assert [w.shape for w in ours.weights] == [w.shape for w in peer.weights]
    ours.set_weights(peer.get_weights())
    x = helpers.random_input(shape, loc=-0.5, scale=1.5)
    up = helpers.random_input(shape, seed=5)
    y, dx, grads = helpers.forward_and_grads(ours, x, up)
    # Keras' call takes no `training`; a Sequential passes it on for it.
    peer_model = keras.Sequential([keras.Input(shape[1:]), peer])
    py, pdx, pgrads = helpers.forward_and_grads(peer_model, x, up)
    tol = dict(rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y, py, **tol)
    np.testing.assert_allclose(dx, pdx, **tol)
    np.testing.assert_allclose(grads["scale"], pgrads["scale"], **tol)


def test_rms_default_arguments_equal_keras():
    ours, peer = kn.RMSNormalization(), keras.layers.RMSNormalization()
    assert (ours.axis, ours.epsilon) == (peer.axis, peer.epsilon)


@pytest.mark.parametrize(
    "kwargs,error",
    [
        (dict(axis="x"), TypeError),
        (dict(axis=[1, 1]), ValueError),  # ints, one twice: a wrong value
        (dict(epsilon=0.0), ValueError),
        (dict(epsilon=None), TypeError),
    ],
)
def test_rms_bad_arguments(kwargs, error):
    with pytest.raises(error, match="Received"):
        kn.RMSNormalization(**kwargs)


def test_rms_bad_input_shapes():
    with pytest.raises(ValueError, match="batch axis"):
        kn.RMSNormalization(axis=0).build((2, 3))
    with pytest.raises(ValueError, match="out of range"):
        kn.RMSNormalization(axis=3).build((2, 3))
    with pytest.raises(ValueError, match="known size"):
        kn.RMSNormalization(axis=-1).build((2, None))


def test_numpy_scalars_accepted_and_configs_stay_plain_python():
    # Issue 21, item 9.
    layer_checks.check_config_round_trip(
        kn.RMSNormalization(epsilon=np.float64(1e-5))
    )
