"""BatchInstanceNormalization: against NumPy written from the paper's
formula (gradients by central finite differences) and torch peers for the
end points (rho=1: BN, rho=0: IN), on every backend; rho's clip; plus the
shared checks (tests/layer_checks.py)."""

import keras
import numpy as np
import pytest

import keras_norms as kn
from tests import helpers
from tests import layer_checks
from tests.helpers import to_numpy
from tests.layers._common import EPS
from tests.layers._common import assign
from tests.layers._common import check_against_numpy
from tests.layers._common import check_against_peer
from tests.layers._common import check_moving_statistics_update_like_bn
from tests.layers._common import mixed_input
from tests.layers._common import moments
from tests.layers._common import over_axes
from tests.layers._common import per_channel
from tests.layers._common import spatial_axes

STATISTICS = ("moving_mean", "moving_variance")


class TestSharedChecks(layer_checks.LayerChecks):
    cases = {
        "channels_last": layer_checks.Case(
            lambda: kn.BatchInstanceNormalization(),
            (2, 3, 3, 4),
            state=STATISTICS,
            fit=False,
        ),
        "channels_first": layer_checks.Case(
            lambda: kn.BatchInstanceNormalization(
                axis=1,
                momentum=0.9,
                rho_initializer=keras.initializers.Constant(0.5),
            ),
            (4, 2, 6, 6),
            state=STATISTICS,
        ),
        "use_global_stats_no_center": layer_checks.Case(
            lambda: kn.BatchInstanceNormalization(
                axis=1,
                momentum=0.9,
                epsilon=1e-5,
                rho_initializer="zeros",
                use_global_stats=True,
                center=False,
            ),
            (4, 2, 6, 6),
            fit=False,
        ),
    }
    masking = layer_checks.Masking(kn.BatchInstanceNormalization, (4, 6, 3))
    test_weights_match_keras_twin = None  # keras.layers has no BIN


def bin_reference(x, gamma, beta, rho, axis, moving=None):
    """Nam & Kim eq.: gamma * (rho * x_bn + (1 - rho) * x_in) + beta."""
    sp = spatial_axes(x, axis)
    if moving is None:
        mean_bn, var_bn = moments(x, (0,) + sp)
    else:
        mean_bn, var_bn = (per_channel(m, x, axis) for m in moving)
    mean_in, var_in = moments(x, sp)
    x_bn = (x - mean_bn) / np.sqrt(var_bn + EPS)
    x_in = (x - mean_in) / np.sqrt(var_in + EPS)
    rho = per_channel(rho, x, axis)
    return per_channel(gamma, x, axis) * (
        rho * x_bn + (1 - rho) * x_in
    ) + per_channel(beta, x, axis)


@over_axes
@pytest.mark.parametrize("rho,kind", [(1.0, "batch"), (0.0, "instance")])
def test_bin_endpoints_equal_bn_and_in(axis, rho, kind):
    x = mixed_input(axis)
    layer = kn.BatchInstanceNormalization(axis=axis, epsilon=EPS)
    layer.build(x.shape)
    assign(layer, rho=np.full(x.shape[axis], rho))
    check_against_peer(layer, kind, x, axis)


@over_axes
def test_bin_matches_numpy_training(axis):
    x = mixed_input(axis, shape=(3, 4, 3, 2))
    layer = kn.BatchInstanceNormalization(axis=axis, epsilon=EPS)
    layer.build(x.shape)
    params = {"gamma": [0.7, 1.3], "beta": [0.2, -0.4], "rho": [0.3, 0.8]}
    assign(layer, **params)
    check_against_numpy(
        layer, x, lambda x, **p: bin_reference(x, axis=axis, **p), params
    )


@over_axes
def test_bin_inference_uses_moving_statistics(axis):
    x = mixed_input(axis)
    layer = kn.BatchInstanceNormalization(axis=axis, epsilon=EPS)
    layer.build(x.shape)
    params = {
        "gamma": [0.7, 1.3, 1.0],
        "beta": [0.2, -0.4, 0.0],
        "rho": [0.3, 0.8, 1.0],
    }
    moving = ([2.5, 3.5, 3.0], [3.0, 5.0, 4.0])
    assign(layer, moving_mean=moving[0], moving_variance=moving[1], **params)
    y = to_numpy(layer(x, training=False))
    ref = bin_reference(
        x.astype("float64"),
        axis=axis,
        moving=moving,
        **{k: np.asarray(v) for k, v in params.items()},
    )
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)
    # Inference does not touch the moving statistics.
    np.testing.assert_allclose(to_numpy(layer.moving_mean), moving[0])


@over_axes
def test_moving_statistics_update_like_bn(axis):
    check_moving_statistics_update_like_bn(kn.BatchInstanceNormalization, axis)


def test_rho_stays_in_unit_interval_with_huge_learning_rate():
    model = keras.Sequential(
        [
            keras.Input((6, 6, 2)),
            # Off-center, so the batch and instance moments differ.
            keras.layers.Rescaling(2.0, offset=1.0),
            kn.BatchInstanceNormalization(
                rho_initializer=keras.initializers.Constant(0.5), name="bin"
            ),
            keras.layers.Flatten(),
            keras.layers.Dense(1),
        ]
    )
    model.compile(keras.optimizers.SGD(1e3), "mse")
    x = helpers.random_input((8, 6, 6, 2), seed=0, loc=1.0)
    y = helpers.random_input((8, 1), seed=1)
    model.fit(x, y * 10.0, batch_size=8, epochs=1, verbose=0)
    rho = to_numpy(model.get_layer("bin").rho)
    assert rho.min() >= 0.0 and rho.max() <= 1.0, rho
    # The clip acted (a step of lr=1e3 from 0.5 lands far outside [0, 1]).
    assert np.any((rho == 0.0) | (rho == 1.0)), rho
    assert isinstance(
        model.get_layer("bin").rho.constraint, kn.ClipToUnitInterval
    )


def test_bad_arguments_raise_clearly():
    with pytest.raises(TypeError, match="Received: axis="):
        kn.BatchInstanceNormalization(axis="channels")
    with pytest.raises(ValueError, match="Received: epsilon=0"):
        kn.BatchInstanceNormalization(epsilon=0.0)
    with pytest.raises(ValueError, match="spatial axis"):
        kn.BatchInstanceNormalization()(np.ones((4, 3), "float32"))
    with pytest.raises(ValueError, match="Received: axis=4"):
        kn.BatchInstanceNormalization(axis=4)(np.ones((2, 3, 3, 2), "float32"))
