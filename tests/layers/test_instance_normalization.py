"""InstanceNormalization: against NumPy and torch's `F.instance_norm`
(with and without running statistics), forward and gradients, on every
backend; plus the shared checks (tests/layer_checks.py).

Elsewhere: GN(C) = IN in tests/layers/test_group_normalization.py.
"""

import keras
import numpy as np
import pytest

import keras_norms as kn
from tests import helpers
from tests import layer_checks
from tests.layers._common import EPS
from tests.layers._common import SPATIAL_LAYOUTS
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
        "channels_last": layer_checks.Case(
            lambda: kn.InstanceNormalization(),
            (2, 3, 3, 4),
            fit=False,
        ),
        "channels_first_no_center": layer_checks.Case(
            lambda: kn.InstanceNormalization(axis=1, center=False), (4, 5, 4, 3)
        ),
        "running_stats": layer_checks.Case(
            lambda: kn.InstanceNormalization(
                axis=1, track_running_stats=True, momentum=0.5
            ),
            (4, 5, 4, 3),
            state=("moving_mean", "moving_variance"),
        ),
    }
    masking = layer_checks.Masking(kn.InstanceNormalization, (4, 6, 3))
    test_weights_match_keras_twin = None  # keras.layers has no InstanceNorm


@pytest.mark.parametrize("shape,axis", SPATIAL_LAYOUTS)
def test_instance_norm_matches_torch(shape, axis):
    x = helpers.random_input(shape, loc=1.5, scale=2.0)
    layer = kn.InstanceNormalization(axis=axis, epsilon=EPS)
    layer.build(shape)
    gamma, beta = set_gamma_beta(layer, shape[axis])
    up = helpers.random_input(shape, seed=7)
    for training in (True, False):
        y, dx, grads = helpers.forward_and_grads(
            layer, x, up, training=training
        )
        ry, rdx, rgrads = helpers.torch_reference(
            lambda t, weight, bias: F.instance_norm(
                t, weight=weight, bias=bias, eps=EPS
            ),
            x,
            {"weight": gamma, "bias": beta},
            up,
            axis,
        )
        assert_matches_torch((y, dx, grads), (ry, rdx, rgrads))


@pytest.mark.parametrize("shape,axis", [((3, 6, 4, 5), 1), ((4, 7, 5), -1)])
def test_instance_norm_running_stats_match_torch(shape, axis):
    # torch's InstanceNorm2d(track_running_stats=True): moving averages of
    # the instance statistics (the UNBIASED variance, averaged over the
    # batch), used at inference; torch's momentum is 1 - ours.
    channels = shape[axis]
    layer = kn.InstanceNormalization(
        axis=axis, epsilon=EPS, track_running_stats=True, momentum=0.6
    )
    layer.build(shape)
    assert [w.name for w in layer.weights] == [
        "gamma",
        "beta",
        "moving_mean",
        "moving_variance",
    ]
    gamma, beta = set_gamma_beta(layer, channels)
    running_mean = torch.zeros(channels, dtype=torch.float64)
    running_var = torch.ones(channels, dtype=torch.float64)

    def reference(t, training, weight=None, bias=None):
        return F.instance_norm(
            t,
            running_mean,
            running_var,
            weight=torch.tensor(gamma, dtype=torch.float64)
            if weight is None
            else weight,
            bias=torch.tensor(beta, dtype=torch.float64)
            if bias is None
            else bias,
            use_input_stats=training,
            momentum=0.4,
            eps=EPS,
        )

    for step in range(2):
        x = helpers.random_input(shape, seed=step, loc=1.0 + step, scale=2.0)
        y = helpers.to_numpy(layer(x, training=True))
        with torch.no_grad():
            ry = reference(
                torch.tensor(np.moveaxis(x, axis, 1), dtype=torch.float64), True
            )
        np.testing.assert_allclose(y, np.moveaxis(ry.numpy(), 1, axis), **TOL)
        np.testing.assert_allclose(
            helpers.to_numpy(layer.moving_mean), running_mean.numpy(), **TOL
        )
        np.testing.assert_allclose(
            helpers.to_numpy(layer.moving_variance), running_var.numpy(), **TOL
        )
    # Inference: a fixed per-channel affine with the moving statistics,
    # gradients included.
    x = helpers.random_input(shape, seed=5, loc=-1.0, scale=3.0)
    up = helpers.random_input(shape, seed=7)
    y, dx, grads = helpers.forward_and_grads(layer, x, up, training=False)
    ry, rdx, rgrads = helpers.torch_reference(
        lambda t, weight, bias: reference(t, False, weight, bias),
        x,
        {"weight": gamma, "bias": beta},
        up,
        axis,
    )
    assert_matches_torch((y, dx, grads), (ry, rdx, rgrads))


def test_instance_norm_with_running_stats_folds_as_a_fixed_affine():
    model = keras.Sequential(
        [
            keras.Input((6, 6, 3)),
            keras.layers.Conv2D(4, 3),
            kn.InstanceNormalization(track_running_stats=True, momentum=0.5),
            keras.layers.ReLU(),
            kn.InstanceNormalization(),  # per-sample at inference: kept
        ]
    )
    x = helpers.random_input((4, 6, 6, 3), loc=1.0, scale=2.0)
    model(x, training=True)
    folded, report = kn.fold_batch_norms(model, verbose=0, return_report=True)
    assert [name for name, _ in report.folded] == [model.layers[1].name]
    assert [type(layer).__name__ for layer in folded.layers] == [
        "Conv2D",
        "ReLU",
        "InstanceNormalization",
    ]
    np.testing.assert_allclose(
        helpers.to_numpy(folded(x)), helpers.to_numpy(model(x)), **TOL
    )


def test_instance_norm_keeps_no_state_by_default():
    layer = kn.InstanceNormalization(momentum=0.5)
    x = helpers.random_input((2, 5, 3), loc=1.0)
    np.testing.assert_array_equal(
        helpers.to_numpy(layer(x, training=True)), helpers.to_numpy(layer(x))
    )
    assert [w.name for w in layer.weights] == ["gamma", "beta"]
    assert layer.get_config()["track_running_stats"] is False


def test_large_mean_keeps_unit_variance():
    x = large_mean_input()
    assert_unit_variance(
        helpers.to_numpy(kn.InstanceNormalization()(x, training=True))
    )


def test_channels_first_with_width_equal_to_channels():
    x = width_equal_to_channels_input()
    layer = kn.InstanceNormalization(axis=1)
    layer.build(x.shape)
    gamma, beta = set_gamma_beta(layer, 4)
    b = lambda v: helpers.broadcast_param(v, 4, 1)  # noqa: E731
    expected = helpers.numpy_normalize(x, (2, 3), EPS) * b(gamma) + b(beta)
    for training in (True, False):
        y = helpers.to_numpy(layer(x, training=training))
        np.testing.assert_allclose(y, expected, **TOL)


def test_bad_arguments_refused_at_construction():
    with pytest.raises(ValueError, match="epsilon.*Received: epsilon="):
        kn.InstanceNormalization(epsilon=float("nan"))


def test_bad_argument_types_refused():
    with pytest.raises(TypeError, match="center"):
        kn.InstanceNormalization(center="yes")


def test_numpy_scalars_accepted_and_configs_stay_plain_python():
    # Issue 21, item 9.
    layer = kn.InstanceNormalization(
        track_running_stats=np.True_, momentum=np.float32(0.5)
    )
    layer_checks.check_config_round_trip(layer)


@pytest.mark.parametrize(
    "layer,shape,match",
    [
        (lambda: kn.InstanceNormalization(axis=0), (2, 4, 4, 8), "batch axis"),
        (lambda: kn.InstanceNormalization(), (2, 8), "spatial axis"),
    ],
)
def test_bad_shapes_refused_at_build(layer, shape, match):
    with pytest.raises(ValueError, match=match):
        layer().build(shape)


def test_running_stats_refuse_one_spatial_position_in_training():
    # The unbiased variance of one value is undefined (torch: "Expected
    # more than 1 spatial element when training"); the layer used to write
    # NaN into moving_variance, then predict gave only NaN.
    model = keras.Sequential(
        [
            keras.Input((4, 4, 3)),
            keras.layers.GlobalAveragePooling2D(keepdims=True),
            kn.InstanceNormalization(track_running_stats=True),
        ]
    )
    model.compile(optimizer="sgd", loss="mse")
    x = helpers.random_input((8, 4, 4, 3), loc=1.0)
    with pytest.raises(ValueError, match="more than one spatial position"):
        model(x, training=True)
    layer = model.layers[-1]
    np.testing.assert_array_equal(helpers.to_numpy(layer.moving_variance), 1.0)
    # Inference with the running statistics is defined, as in torch.
    y = helpers.to_numpy(model(x, training=False))
    assert np.isfinite(y).all()
    with pytest.raises(ValueError, match="more than one spatial position"):
        model.fit(x, np.zeros((8, 1, 1, 3), "float32"), epochs=1, verbose=0)


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="a spatial size unknown until the graph runs: TensorFlow graphs",
)
def test_running_stats_unknown_spatial_size_keep_state_finite():
    import tensorflow as tf

    layer = kn.InstanceNormalization(track_running_stats=True, momentum=0.5)
    layer.build((None, None, 3))

    @tf.function(input_signature=[tf.TensorSpec((None, None, 3))])
    def step(x):
        return layer(x, training=True)

    step(np.ones((4, 1, 3), "float32"))  # one position: state unchanged
    np.testing.assert_array_equal(helpers.to_numpy(layer.moving_mean), 0.0)
    np.testing.assert_array_equal(helpers.to_numpy(layer.moving_variance), 1.0)
    x = helpers.random_input((4, 5, 3), loc=1.0)
    step(x)  # five positions: torch's update
    unbiased = x.var(axis=1, ddof=1).mean(axis=0)
    np.testing.assert_allclose(
        helpers.to_numpy(layer.moving_variance), 0.5 + 0.5 * unbiased, **TOL
    )
    np.testing.assert_allclose(
        helpers.to_numpy(layer.moving_mean), 0.5 * x.mean(axis=(0, 1)), **TOL
    )
