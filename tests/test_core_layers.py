"""BatchNormalization, LayerNormalization, InstanceNormalization and
GroupNormalization against NumPy (the papers' formulas) and
`torch.nn.functional` (a peer), forward and gradients, on every backend."""

import keras
import numpy as np
import pytest

import keras_norms as kn
from tests import helpers

torch = pytest.importorskip("torch")
F = torch.nn.functional

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


def _params(layer, channels, seed=3):
    rng = np.random.RandomState(seed)
    gamma = rng.uniform(0.5, 1.5, channels).astype("float32")
    beta = rng.randn(channels).astype("float32")
    layer.gamma.assign(gamma)
    layer.beta.assign(beta)
    return gamma, beta


def _not_batch_or(axis, ndim):
    axis %= ndim
    return [a for a in range(1, ndim) if a != axis]


def _assert_matches_torch(ours, reference):
    """Output, input gradient and gamma/beta gradients against torch's."""
    (y, dx, grads), (ry, rdx, rgrads) = ours, reference
    np.testing.assert_allclose(y, ry, **TOL)
    np.testing.assert_allclose(dx, rdx, **TOL)
    np.testing.assert_allclose(grads["gamma"], rgrads["weight"], **TOL)
    np.testing.assert_allclose(grads["beta"], rgrads["bias"], **TOL)


# ---------------------------------------------------------------------------
# BatchNormalization
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("shape,axis", LAYOUTS)
def test_batch_norm_training_matches_torch(shape, axis):
    x = helpers.random_input(shape, loc=2.0, scale=3.0)
    layer = kn.BatchNormalization(axis=axis, epsilon=EPS)
    layer.build(shape)
    gamma, beta = _params(layer, shape[axis])
    up = helpers.random_input(shape, seed=7)
    y, dx, grads = helpers.forward_and_grads(layer, x, up, training=True)
    ry, rdx, rgrads = helpers.torch_reference(
        lambda t, weight, bias: F.batch_norm(
            t, None, None, weight, bias, training=True, eps=EPS
        ),
        x,
        {"weight": gamma, "bias": beta},
        up,
        axis,
    )
    _assert_matches_torch((y, dx, grads), (ry, rdx, rgrads))


@pytest.mark.parametrize("shape,axis", [LAYOUTS[0], LAYOUTS[3], LAYOUTS[4]])
def test_batch_norm_inference_uses_moving_statistics(shape, axis):
    x = helpers.random_input(shape)
    layer = kn.BatchNormalization(axis=axis)
    layer.build(shape)
    c = shape[axis]
    gamma, beta = _params(layer, c)
    rng = np.random.RandomState(5)
    mm = rng.randn(c).astype("float32")
    mv = rng.uniform(0.5, 2.0, c).astype("float32")
    layer.moving_mean.assign(mm)
    layer.moving_variance.assign(mv)
    up = helpers.random_input(shape, seed=7)
    y, dx, grads = helpers.forward_and_grads(layer, x, up, training=False)
    ndim = len(shape)
    b = lambda v: helpers.broadcast_param(v, ndim, axis)  # noqa: E731
    expected = (x - b(mm)) / np.sqrt(b(mv) + EPS) * b(gamma) + b(beta)
    np.testing.assert_allclose(y, expected, **TOL)
    np.testing.assert_allclose(dx, up * b(gamma) / np.sqrt(b(mv) + EPS), **TOL)
    # torch's inference kernel agrees, gradients with respect to gamma too.
    ry, _, rgrads = helpers.torch_reference(
        lambda t, weight, bias: F.batch_norm(
            t,
            torch.tensor(mm, dtype=torch.float64),
            torch.tensor(mv, dtype=torch.float64),
            weight,
            bias,
            training=False,
            eps=EPS,
        ),
        x,
        {"weight": gamma, "bias": beta},
        up,
        axis,
    )
    np.testing.assert_allclose(y, ry, **TOL)
    np.testing.assert_allclose(grads["gamma"], rgrads["weight"], **TOL)
    # Inference does not touch the moving statistics.
    layer(x, training=False)
    np.testing.assert_array_equal(helpers.to_numpy(layer.moving_mean), mm)


@pytest.mark.parametrize("shape,axis", [LAYOUTS[1], LAYOUTS[4]])
def test_batch_norm_moving_statistics_update(shape, axis):
    momentum = 0.9
    layer = kn.BatchNormalization(axis=axis, momentum=momentum)
    reduce = tuple(_not_batch_or(axis, len(shape)) + [0])
    mm = np.zeros(shape[axis])
    mv = np.ones(shape[axis])
    for step in range(3):
        x = helpers.random_input(shape, seed=step, loc=step, scale=1 + step)
        layer(x, training=True)
        mean = x.astype("float64").mean(axis=reduce)
        var = x.astype("float64").var(axis=reduce)  # biased, as Keras
        mm = mm * momentum + mean * (1 - momentum)
        mv = mv * momentum + var * (1 - momentum)
        np.testing.assert_allclose(helpers.to_numpy(layer.moving_mean), mm, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(helpers.to_numpy(layer.moving_variance), mv, rtol=1e-5, atol=1e-6)


def test_batch_norm_use_global_stats_freezes_statistics():
    shape = (8, 4, 4, 3)
    x = helpers.random_input(shape, loc=5.0)
    layer = kn.BatchNormalization(use_global_stats=True)
    layer.build(shape)
    layer.moving_mean.assign(np.array([1.0, 2.0, 3.0], "float32"))
    layer.moving_variance.assign(np.array([4.0, 1.0, 0.25], "float32"))
    y_train = helpers.to_numpy(layer(x, training=True))
    y_infer = helpers.to_numpy(layer(x, training=False))
    np.testing.assert_array_equal(y_train, y_infer)
    np.testing.assert_array_equal(
        helpers.to_numpy(layer.moving_mean), [1.0, 2.0, 3.0]
    )
    # Gamma and beta still learn in fit; the statistics stay put.
    model = keras.Sequential([keras.Input(shape[1:]), layer])
    model.compile(keras.optimizers.SGD(0.1), "mse")
    model.fit(x, x * 0.5, epochs=2, batch_size=4, verbose=0)
    assert not np.allclose(helpers.to_numpy(layer.gamma), 1.0)
    np.testing.assert_array_equal(
        helpers.to_numpy(layer.moving_variance), [4.0, 1.0, 0.25]
    )


def test_batch_norm_not_trainable_runs_in_inference_mode():
    x = helpers.random_input((8, 3), loc=4.0)
    ours = kn.BatchNormalization()
    ours.build(x.shape)
    ours.trainable = False
    y = helpers.to_numpy(ours(x, training=True))
    np.testing.assert_allclose(y, x / np.sqrt(1 + EPS), rtol=1e-6)
    np.testing.assert_array_equal(helpers.to_numpy(ours.moving_mean), 0.0)


def test_batch_norm_matches_keras_layer_over_steps():
    shape = (6, 4, 4, 3)
    ours = kn.BatchNormalization(momentum=0.8)
    theirs = keras.layers.BatchNormalization(momentum=0.8)
    ours.build(shape)
    theirs.build(shape)
    assert [w.name for w in ours.weights] == [w.name for w in theirs.weights]
    for step in range(3):
        x = helpers.random_input(shape, seed=step, loc=1.0)
        np.testing.assert_allclose(
            helpers.to_numpy(ours(x, training=True)),
            helpers.to_numpy(theirs(x, training=True)),
            rtol=1e-4,
            atol=1e-4,
        )
    for a, b in zip(ours.weights, theirs.weights):
        np.testing.assert_allclose(helpers.to_numpy(a), helpers.to_numpy(b), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------
# LayerNormalization
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(6, 5), (4, 7, 5), (3, 4, 5, 6)])
@pytest.mark.parametrize("training", [True, False])
def test_layer_norm_matches_torch(shape, training):
    x = helpers.random_input(shape, loc=-3.0, scale=2.0)
    layer = kn.LayerNormalization(epsilon=EPS)
    layer.build(shape)
    gamma, beta = _params(layer, shape[-1])
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
    _assert_matches_torch((y, dx, grads), (ry, rdx, rgrads))


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
        helpers.to_numpy(ours(x)), helpers.to_numpy(theirs(x)), rtol=1e-4, atol=1e-4
    )


# ---------------------------------------------------------------------------
# InstanceNormalization and GroupNormalization
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("shape,axis", SPATIAL_LAYOUTS)
def test_instance_norm_matches_torch(shape, axis):
    x = helpers.random_input(shape, loc=1.5, scale=2.0)
    layer = kn.InstanceNormalization(axis=axis, epsilon=EPS)
    layer.build(shape)
    gamma, beta = _params(layer, shape[axis])
    up = helpers.random_input(shape, seed=7)
    for training in (True, False):
        y, dx, grads = helpers.forward_and_grads(layer, x, up, training=training)
        ry, rdx, rgrads = helpers.torch_reference(
            lambda t, weight, bias: F.instance_norm(
                t, weight=weight, bias=bias, eps=EPS
            ),
            x,
            {"weight": gamma, "bias": beta},
            up,
            axis,
        )
        _assert_matches_torch((y, dx, grads), (ry, rdx, rgrads))


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
        "gamma", "beta", "moving_mean", "moving_variance"
    ]
    gamma, beta = _params(layer, channels)
    running_mean = torch.zeros(channels, dtype=torch.float64)
    running_var = torch.ones(channels, dtype=torch.float64)

    def reference(t, training, weight=None, bias=None):
        return F.instance_norm(
            t,
            running_mean,
            running_var,
            weight=torch.tensor(gamma, dtype=torch.float64) if weight is None else weight,
            bias=torch.tensor(beta, dtype=torch.float64) if bias is None else bias,
            use_input_stats=training,
            momentum=0.4,
            eps=EPS,
        )

    for step in range(2):
        x = helpers.random_input(shape, seed=step, loc=1.0 + step, scale=2.0)
        y = helpers.to_numpy(layer(x, training=True))
        with torch.no_grad():
            ry = reference(torch.tensor(np.moveaxis(x, axis, 1), dtype=torch.float64), True)
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
    _assert_matches_torch((y, dx, grads), (ry, rdx, rgrads))


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
        "Conv2D", "ReLU", "InstanceNormalization"
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


@pytest.mark.parametrize("shape,axis", LAYOUTS)
@pytest.mark.parametrize("groups", [1, 2, -1])
def test_group_norm_matches_torch(shape, axis, groups):
    channels = shape[axis]
    if groups == 2 and channels % 2:
        shape = tuple(2 * d if i == axis % len(shape) else d for i, d in enumerate(shape))
        channels *= 2
    if groups == -1 and len(shape) == 2:
        pytest.skip("one channel per group on a rank-2 input is refused")
    x = helpers.random_input(shape, loc=-1.0, scale=3.0)
    layer = kn.GroupNormalization(groups=groups, axis=axis, epsilon=EPS)
    layer.build(shape)
    gamma, beta = _params(layer, channels)
    up = helpers.random_input(shape, seed=7)
    y, dx, grads = helpers.forward_and_grads(layer, x, up, training=True)
    n_groups = channels if groups == -1 else groups
    ry, rdx, rgrads = helpers.torch_reference(
        lambda t, weight, bias: F.group_norm(t, n_groups, weight, bias, eps=EPS),
        x,
        {"weight": gamma, "bias": beta},
        up,
        axis,
    )
    _assert_matches_torch((y, dx, grads), (ry, rdx, rgrads))


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
        gn = helpers.to_numpy(kn.GroupNormalization(groups=groups, axis=axis)(x))
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
        helpers.to_numpy(ours(x)), helpers.to_numpy(theirs(x)), rtol=1e-4, atol=1e-4
    )


# ---------------------------------------------------------------------------
# Numerics and mixed precision
# ---------------------------------------------------------------------------
LAYER_FACTORIES = {
    "batch": lambda: kn.BatchNormalization(),
    "layer": lambda: kn.LayerNormalization(axis=[1, 2, 3]),
    "instance": lambda: kn.InstanceNormalization(),
    "group": lambda: kn.GroupNormalization(groups=2),
}


@pytest.mark.parametrize("name", sorted(LAYER_FACTORIES))
def test_large_mean_keeps_unit_variance(name):
    # Rows of mean 1e4 and std 1 in float32: the one-pass E[x^2] - E[x]^2
    # is off by tens here; two passes recover unit variance.
    x = helpers.random_input((8, 8, 8, 4), loc=1e4, scale=1.0)
    y = helpers.to_numpy(LAYER_FACTORIES[name]()(x, training=True))
    assert np.all(np.isfinite(y))
    np.testing.assert_allclose(y.std(), 1.0, atol=2e-2)
    np.testing.assert_allclose(y.mean(), 0.0, atol=2e-2)
    ref = helpers.numpy_normalize(x, (0, 1, 2), EPS) if name == "batch" else None
    if ref is not None:
        np.testing.assert_allclose(y, ref, atol=5e-2)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("name", sorted(LAYER_FACTORIES))
def test_mixed_precision_keeps_float32_weights_and_statistics(policy, name):
    x = helpers.random_input((4, 4, 4, 4), loc=3.0)
    reference = helpers.to_numpy(LAYER_FACTORIES[name]()(x, training=True))
    keras.mixed_precision.set_global_policy(policy)
    layer = LAYER_FACTORIES[name]()
    y = layer(keras.ops.cast(x, layer.compute_dtype), training=True)
    assert keras.backend.standardize_dtype(y.dtype) == policy.split("_")[1]
    for w in layer.weights:
        assert keras.backend.standardize_dtype(w.dtype) == "float32", w.name
    tol = 2e-2 if policy == "mixed_float16" else 8e-2
    np.testing.assert_allclose(
        helpers.to_numpy(keras.ops.cast(y, "float32")), reference, atol=tol
    )
    if name == "batch":
        # Statistics accumulated in float32 from the half-precision input.
        xh = helpers.to_numpy(
            keras.ops.cast(keras.ops.cast(x, layer.compute_dtype), "float32")
        )
        expected = 0.01 * xh.mean(axis=(0, 1, 2))
        np.testing.assert_allclose(
            helpers.to_numpy(layer.moving_mean), expected, rtol=1e-5
        )


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "factory,match",
    [
        (lambda: kn.GroupNormalization(groups=0), "groups"),
        (lambda: kn.GroupNormalization(groups=-2), "groups"),
        (lambda: kn.BatchNormalization(epsilon=0.0), "epsilon"),
        (lambda: kn.LayerNormalization(epsilon=-1e-5), "epsilon"),
        (lambda: kn.InstanceNormalization(epsilon=float("nan")), "epsilon"),
        (lambda: kn.BatchNormalization(momentum=1.5), "momentum"),
        (lambda: kn.BatchNormalization(momentum=-0.1), "momentum"),
    ],
)
def test_bad_arguments_refused_at_construction(factory, match):
    with pytest.raises(ValueError, match=f"{match}.*Received: {match}="):
        factory()


def test_bad_argument_types_refused():
    with pytest.raises(TypeError, match="axis"):
        kn.BatchNormalization(axis=[1, 2])
    with pytest.raises(TypeError, match="axis"):
        kn.LayerNormalization(axis="last")
    with pytest.raises(TypeError, match="center"):
        kn.InstanceNormalization(center="yes")
    with pytest.raises(TypeError, match="groups"):
        kn.GroupNormalization(groups=2.5)


def test_numpy_scalars_accepted_and_configs_stay_plain_python():
    # Issue 21, item 9: NumPy integers, floats and bools wherever Python
    # ones are accepted; the stored config holds Python numbers (JSON).
    import json

    layers = [
        kn.GroupNormalization(groups=np.int64(2), axis=np.int32(-1)),
        kn.BatchNormalization(
            axis=np.int64(1),
            epsilon=np.float32(1e-3),
            momentum=np.float64(0.9),
            center=np.True_,
            renorm=np.True_,
            renorm_clipping={"rmax": np.float32(2.0), "dmax": np.int64(1)},
        ),
        kn.LayerNormalization(axis=[np.int64(1), np.int64(2)]),
        kn.InstanceNormalization(track_running_stats=np.True_, momentum=np.float32(0.5)),
        kn.RMSNormalization(epsilon=np.float64(1e-5)),
    ]
    for layer in layers:
        config = layer.get_config()
        json.dumps(config)
        for key, value in config.items():
            values = value if isinstance(value, (list, dict)) else [value]
            if isinstance(values, dict):
                values = list(values.values())
            assert not any(isinstance(v, np.generic) for v in values), key
    assert layers[0].groups == 2 and type(layers[0].groups) is int
    assert type(layers[1].epsilon) is float and layers[1].center is True
    x = helpers.random_input((2, 3, 4), loc=1.0)
    assert helpers.to_numpy(layers[0](x)).shape == x.shape


@pytest.mark.parametrize(
    "layer,shape,match",
    [
        (lambda: kn.GroupNormalization(groups=3), (2, 4, 4, 8), "groups.*divide"),
        (lambda: kn.GroupNormalization(groups=16), (2, 4, 4, 8), "groups.*divide"),
        (lambda: kn.BatchNormalization(axis=4), (2, 4, 4, 8), "axis.*out of range"),
        (lambda: kn.LayerNormalization(axis=[1, -5]), (2, 4, 4, 8), "axis.*out of range"),
        (lambda: kn.InstanceNormalization(axis=0), (2, 4, 4, 8), "batch axis"),
        (lambda: kn.BatchNormalization(), (None, 4, None), "known size"),
        (lambda: kn.InstanceNormalization(), (2, 8), "spatial axis"),
    ],
)
def test_bad_shapes_refused_at_build(layer, shape, match):
    with pytest.raises(ValueError, match=match):
        layer().build(shape)


# ---------------------------------------------------------------------------
# Keras integration: config, save/load, fit, compiled and symbolic calls
# ---------------------------------------------------------------------------
ALL_LAYERS = {
    "batch": lambda: kn.BatchNormalization(momentum=0.5, axis=1),
    "batch_frozen": lambda: kn.BatchNormalization(use_global_stats=True),
    "layer": lambda: kn.LayerNormalization(axis=[2, 3], epsilon=1e-5),
    "instance": lambda: kn.InstanceNormalization(axis=1, center=False),
    "instance_running": lambda: kn.InstanceNormalization(
        axis=1, track_running_stats=True, momentum=0.5
    ),
    "group": lambda: kn.GroupNormalization(groups=-1, scale=False),
}


@pytest.mark.parametrize("name", sorted(ALL_LAYERS))
def test_config_round_trip(name):
    layer = ALL_LAYERS[name]()
    clone = helpers.assert_config_round_trip(layer)
    assert type(clone) is type(layer)
    assert keras.saving.get_registered_name(type(layer)).startswith("keras_norms>")


@pytest.mark.parametrize("name", sorted(ALL_LAYERS))
def test_fit_lowers_loss_and_saves_with_state(name, tmp_path):
    x = helpers.random_input((32, 4, 5, 6), loc=2.0, scale=3.0)
    y = np.tanh(x.mean(axis=(1, 2, 3)))[:, None]
    model = keras.Sequential(
        [
            keras.Input((4, 5, 6)),
            ALL_LAYERS[name](),
            keras.layers.Flatten(),
            keras.layers.Dense(1),
        ]
    )
    # Compiled train steps (XLA on TF and JAX; torch.compile is too slow
    # to start on CPU for a unit test, so torch runs eagerly).
    model.compile(
        keras.optimizers.Adam(0.02), "mse", jit_compile=helpers.BACKEND != "torch"
    )
    before = model.evaluate(x, y, verbose=0)
    model.fit(x, y, epochs=4, batch_size=8, verbose=0)
    after = model.evaluate(x, y, verbose=0)
    assert after < before
    norm = model.layers[0]
    if name in ("batch", "instance_running"):
        assert not np.allclose(helpers.to_numpy(norm.moving_mean), 0.0)
    helpers.assert_saves_and_loads(model, x, tmp_path)


def test_functional_model_with_unknown_spatial_size_in_compiled_predict():
    inputs = keras.Input((None, None, 4))
    h = kn.GroupNormalization(groups=2)(inputs)
    h = kn.InstanceNormalization()(h)
    h = kn.BatchNormalization()(h)
    outputs = kn.LayerNormalization()(h)
    model = keras.Model(inputs, outputs)
    for size in (5, 7):
        x = helpers.random_input((3, size, size, 4), loc=1.0)
        y = model.predict(x, verbose=0)
        assert y.shape == x.shape
        np.testing.assert_allclose(y, helpers.to_numpy(model(x)), atol=1e-5)


@pytest.mark.parametrize("name", sorted(LAYER_FACTORIES))
def test_channels_first_with_width_equal_to_channels(name):
    # Keras 3.15's TF `ops.add` turns `x + b` with b of shape (1, C, 1, 1)
    # into an NHWC bias_add when the last axis also has size C; our scale
    # and shift must stay on the channel axis.
    shape = (2, 4, 3, 4)
    x = helpers.random_input(shape, loc=1.0, scale=2.0)
    factories = {
        "batch": lambda: kn.BatchNormalization(axis=1),
        "layer": lambda: kn.LayerNormalization(axis=[1, 2, 3]),
        "instance": lambda: kn.InstanceNormalization(axis=1),
        "group": lambda: kn.GroupNormalization(groups=2, axis=1),
    }
    layer = factories[name]()
    layer.build(shape)
    gamma, beta = _params(layer, 4) if name != "layer" else (None, None)
    for training in (True, False):
        if name == "batch":
            layer.moving_mean.assign(np.arange(4, dtype="float32"))
            layer.moving_variance.assign(np.ones(4, dtype="float32"))
        y = helpers.to_numpy(layer(x, training=training))
        if name == "layer":
            continue
        if name == "batch" and not training:
            mm = np.arange(4).reshape(1, 4, 1, 1)
            expected = (x - mm) / np.sqrt(1 + EPS)
        elif name == "batch":
            expected = helpers.numpy_normalize(x, (0, 2, 3), EPS)
        elif name == "instance":
            expected = helpers.numpy_normalize(x, (2, 3), EPS)
        else:
            grouped = x.reshape(2, 2, 2, 3, 4)
            expected = helpers.numpy_normalize(grouped, (2, 3, 4), EPS).reshape(shape)
        b = lambda v: helpers.broadcast_param(v, 4, 1)  # noqa: E731
        np.testing.assert_allclose(y, expected * b(gamma) + b(beta), **TOL)
