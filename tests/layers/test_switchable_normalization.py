"""SwitchableNormalization: against NumPy written from the paper's
equations (gradients by central finite differences) and torch peers for
one-hot switches (IN, LN, BN), on every backend; plus the shared checks
(tests/layer_checks.py).

Elsewhere: `switchable_importances` in tests/test_inspection.py.
"""

import keras
import numpy as np
import pytest

import keras_norms as kn
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
BACKEND = keras.backend.backend()


class TestSharedChecks(layer_checks.LayerChecks):
    cases = {
        "channels_last": layer_checks.Case(
            lambda: kn.SwitchableNormalization(),
            (2, 3, 3, 4),
            state=STATISTICS,
            fit=False,
        ),
        "channels_first_no_scale": layer_checks.Case(
            lambda: kn.SwitchableNormalization(
                axis=1, momentum=0.9, scale=False, gamma_regularizer="l2"
            ),
            (4, 2, 6, 6),
            state=STATISTICS,
        ),
    }
    masking = layer_checks.Masking(kn.SwitchableNormalization, (4, 6, 3))
    test_weights_match_keras_twin = None  # keras.layers has no SN


def _softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def sn_reference(
    x, gamma, beta, mean_weights, variance_weights, axis, moving=None
):
    """Luo et al. eq. (3)-(5), biased variances, directly over x."""
    sp = spatial_axes(x, axis)
    mean_in, var_in = moments(x, sp)
    mean_ln, var_ln = moments(x, tuple(range(1, x.ndim)))
    if moving is None:
        mean_bn, var_bn = moments(x, (0,) + sp)
    else:
        mean_bn, var_bn = (per_channel(m, x, axis) for m in moving)
    wm, wv = _softmax(mean_weights), _softmax(variance_weights)
    mean = wm[0] * mean_in + wm[1] * mean_ln + wm[2] * mean_bn
    var = wv[0] * var_in + wv[1] * var_ln + wv[2] * var_bn
    y = (x - mean) / np.sqrt(var + EPS)
    return y * per_channel(gamma, x, axis) + per_channel(beta, x, axis)


@over_axes
@pytest.mark.parametrize(
    "hot,kind", [(0, "instance"), (1, "layer"), (2, "batch")]
)
def test_sn_one_hot_equals_in_ln_bn(axis, hot, kind):
    x = mixed_input(axis)
    layer = kn.SwitchableNormalization(axis=axis, epsilon=EPS)
    layer.build(x.shape)
    logits = np.zeros(3)
    logits[hot] = 50.0
    assign(layer, mean_weights=logits, variance_weights=logits)
    check_against_peer(layer, kind, x, axis)


@over_axes
def test_sn_matches_numpy_training(axis):
    x = mixed_input(axis, shape=(3, 4, 3, 2))
    layer = kn.SwitchableNormalization(axis=axis, epsilon=EPS)
    layer.build(x.shape)
    params = {
        "gamma": [0.7, 1.3],
        "beta": [0.2, -0.4],
        "mean_weights": [0.5, -0.3, 0.1],
        "variance_weights": [-0.2, 0.4, 0.3],
    }
    assign(layer, **params)
    check_against_numpy(
        layer, x, lambda x, **p: sn_reference(x, axis=axis, **p), params
    )


@over_axes
def test_sn_inference_uses_moving_statistics(axis):
    x = mixed_input(axis)
    layer = kn.SwitchableNormalization(axis=axis, epsilon=EPS)
    layer.build(x.shape)
    params = {
        "gamma": [0.7, 1.3, 1.0],
        "beta": [0.2, -0.4, 0.0],
        "mean_weights": [0.5, -0.3, 0.1],
        "variance_weights": [-0.2, 0.4, 0.3],
    }
    moving = ([2.5, 3.5, 3.0], [3.0, 5.0, 4.0])
    assign(layer, moving_mean=moving[0], moving_variance=moving[1], **params)
    y = to_numpy(layer(x, training=False))
    ref = sn_reference(
        x.astype("float64"),
        axis=axis,
        moving=moving,
        **{k: np.asarray(v) for k, v in params.items()},
    )
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)


@over_axes
def test_moving_statistics_update_like_bn(axis):
    check_moving_statistics_update_like_bn(kn.SwitchableNormalization, axis)


def test_mixed_float16_training_output_matches_float64():
    # Statistics in float32 from a float16 input: the training output
    # still matches the paper's equations in float64.
    keras.mixed_precision.set_global_policy("mixed_float16")
    x = mixed_input(-1)
    layer = kn.SwitchableNormalization()
    y = to_numpy(layer(x, training=True)).astype("float64")
    ref = sn_reference(
        x.astype("float64"),
        np.ones(3),
        np.zeros(3),
        np.ones(3),
        np.ones(3),
        axis=-1,
    )
    np.testing.assert_allclose(y, ref, atol=1e-2)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="a graph of unknown batch")
def test_empty_batch_in_a_graph_of_unknown_batch_size_keeps_state():
    layer_checks.check_empty_batch_in_an_unknown_batch_graph(
        kn.SwitchableNormalization
    )


def test_bad_arguments_raise_clearly():
    with pytest.raises(ValueError, match="Received: momentum=2"):
        kn.SwitchableNormalization(momentum=2.0)
    with pytest.raises(TypeError, match="use_global_stats"):
        kn.SwitchableNormalization(use_global_stats=1)
    with pytest.raises(ValueError, match="spatial axis"):
        kn.SwitchableNormalization()(np.ones((4, 3), "float32"))
    with pytest.raises(ValueError, match="Received: axis=4"):
        kn.SwitchableNormalization(axis=4)(np.ones((2, 3, 3, 2), "float32"))
