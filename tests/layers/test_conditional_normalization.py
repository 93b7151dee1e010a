"""ConditionalNormalization against NumPy references of its formula,
`y = norm(x) * (1 + condition @ Ws + bs) + (condition @ Wt + bt)`."""

import keras
import numpy as np
import pytest

import keras_norms as kn
from tests import helpers
from tests import layer_checks

EPSILON = 1e-3
D = 5  # condition size


def numpy_norm(kind, x, axis, moving=None):
    """The wrapped norms' formulas (no affine) in float64."""
    ndim = x.ndim
    channel = axis % ndim
    if kind == "layer":
        return helpers.numpy_normalize(x, (channel,), EPSILON)
    if kind == "instance":
        spatial = [a for a in range(1, ndim) if a != channel]
        return helpers.numpy_normalize(x, spatial, EPSILON)
    if kind == "group":  # two groups of consecutive channels
        moved = np.moveaxis(x.astype("float64"), channel, -1)
        grouped = moved.reshape(moved.shape[:-1] + (2, -1))
        axes = tuple(range(1, grouped.ndim - 2)) + (grouped.ndim - 1,)
        y = helpers.numpy_normalize(grouped, axes, EPSILON)
        return np.moveaxis(y.reshape(moved.shape), -1, channel)
    # batch: batch statistics, or the moving ones given
    if moving is None:
        axes = [a for a in range(ndim) if a != channel]
        return helpers.numpy_normalize(x, axes, EPSILON)
    mean, variance = (helpers.broadcast_param(m, ndim, channel) for m in moving)
    return (x - mean) / np.sqrt(variance + EPSILON)


def make_norm(kind, axis):
    arguments = dict(axis=axis, epsilon=EPSILON, center=False, scale=False)
    if kind == "layer":
        return kn.LayerNormalization(**arguments)
    if kind == "instance":
        return kn.InstanceNormalization(**arguments)
    if kind == "group":
        return kn.GroupNormalization(groups=2, **arguments)
    return kn.BatchNormalization(**arguments)


def reference(kind, x, condition, weights, axis, moving=None):
    scale_kernel, scale_bias, shift_kernel, shift_bias = (
        np.asarray(w, "float64") for w in weights
    )
    condition = condition.astype("float64")
    view = [1] * x.ndim
    view[0] = x.shape[0]
    view[axis % x.ndim] = -1
    scale = np.reshape(condition @ scale_kernel + scale_bias, view)
    shift = np.reshape(condition @ shift_kernel + shift_bias, view)
    return numpy_norm(kind, x, axis, moving) * (1 + scale) + shift


# (kind, axis, input shape): every wrapped kind, both layouts, ranks 3-5.
CASES = [
    ("layer", -1, (2, 4, 3)),
    ("layer", 1, (2, 3, 4)),
    ("group", 1, (2, 4, 3, 3)),
    ("group", -1, (2, 3, 2, 2, 4)),
    ("instance", -1, (2, 5, 3)),
    ("batch", 1, (4, 3, 2, 2)),
    ("batch", -1, (4, 2, 2, 2, 3)),
]


def data(shape, seed=0):
    x = helpers.random_input(shape, seed=seed, loc=0.5, scale=2.0)
    condition = helpers.random_input((shape[0], D), seed=seed + 1)
    return x, condition


def random_dense_weights(layer, seed=1):
    rng = np.random.RandomState(seed)
    for dense in (layer.scale, layer.shift):
        for w in dense.weights:
            w.assign((0.5 * rng.randn(*w.shape)).astype("float32"))
    return [
        helpers.to_numpy(w) for w in layer.scale.weights + layer.shift.weights
    ]


@pytest.mark.parametrize("kind, axis, shape", CASES)
def test_at_initialization_equals_the_wrapped_norm(kind, axis, shape):
    x, condition = data(shape)
    layer = kn.ConditionalNormalization(make_norm(kind, axis))
    twin = make_norm(kind, axis)
    for training in (True, False):
        np.testing.assert_allclose(
            helpers.to_numpy(layer([x, condition], training=training)),
            helpers.to_numpy(twin(x, training=training)),
            rtol=1e-6,
            atol=1e-6,
        )
    assert [w.path.split("/", 1)[1] for w in layer.trainable_weights] == [
        "scale/kernel",
        "scale/bias",
        "shift/kernel",
        "shift/bias",
    ]
    assert all(not helpers.to_numpy(w).any() for w in layer.trainable_weights)


@pytest.mark.parametrize("kind, axis, shape", CASES)
def test_matches_the_reference_in_training_and_inference(kind, axis, shape):
    x, condition = data(shape)
    layer = kn.ConditionalNormalization(make_norm(kind, axis))
    layer([x, condition])
    weights = random_dense_weights(layer)
    got = helpers.to_numpy(layer([x, condition], training=True))
    np.testing.assert_allclose(
        got, reference(kind, x, condition, weights, axis), rtol=1e-5, atol=1e-5
    )
    moving = None
    if kind == "batch":  # updated by the training call above
        norm = layer.normalization
        moving = (
            helpers.to_numpy(norm.moving_mean),
            helpers.to_numpy(norm.moving_variance),
        )
        channel = axis % len(shape)
        batch_mean = x.mean(
            axis=tuple(a for a in range(x.ndim) if a != channel)
        )
        np.testing.assert_allclose(
            moving[0], 0.01 * batch_mean, rtol=1e-4, atol=1e-6
        )
    got = helpers.to_numpy(layer([x, condition], training=False))
    np.testing.assert_allclose(
        got,
        reference(kind, x, condition, weights, axis, moving),
        rtol=1e-5,
        atol=1e-5,
    )


def numeric_gradient(f, x, step=1e-4):
    grad = np.zeros(x.shape, dtype="float64")
    flat = np.asarray(x, "float64").reshape(-1)
    for i in range(flat.size):
        up, down = flat.copy(), flat.copy()
        up[i] += step
        down[i] -= step
        grad.reshape(-1)[i] = (
            f(up.reshape(x.shape)) - f(down.reshape(x.shape))
        ) / (2 * step)
    return grad


@pytest.mark.parametrize("kind, axis, shape", [CASES[0], CASES[2], CASES[5]])
def test_gradients_match_numeric_ones(kind, axis, shape):
    x, condition = data(shape, seed=4)
    layer = kn.ConditionalNormalization(make_norm(kind, axis))
    layer([x, condition])
    weights = random_dense_weights(layer)
    upstream = helpers.random_input(shape, seed=7)
    _, (dx, dcondition), grads = helpers.forward_and_grads(
        layer, [x, condition], upstream, training=True
    )

    def loss(x=x, condition=condition, weights=weights):
        return np.sum(reference(kind, x, condition, weights, axis) * upstream)

    np.testing.assert_allclose(
        dx, numeric_gradient(lambda v: loss(x=v), x), atol=2e-3
    )
    np.testing.assert_allclose(
        dcondition,
        numeric_gradient(lambda v: loss(condition=v), condition),
        atol=2e-3,
    )
    paths = [w.path for w in layer.trainable_weights]
    for i, path in enumerate(paths):

        def loss_of_weight(v, i=i):
            return loss(weights=weights[:i] + [v] + weights[i + 1 :])

        np.testing.assert_allclose(
            grads[path],
            numeric_gradient(loss_of_weight, weights[i]),
            atol=2e-3,
            err_msg=path,
        )


def test_inference_does_not_update_the_wrapped_batch_norm():
    x, condition = data((4, 3, 2, 2))
    layer = kn.ConditionalNormalization(make_norm("batch", 1))
    layer([x, condition], training=False)
    norm = layer.normalization
    np.testing.assert_array_equal(helpers.to_numpy(norm.moving_mean), 0)
    layer([x, condition], training=True)
    assert helpers.to_numpy(norm.moving_mean).any()


def conditional_model(kind="batch", axis=-1):
    x_in = keras.Input((4, 4, 3) if axis == -1 else (3, 4, 4))
    condition_in = keras.Input((D,))
    h = keras.layers.Conv2D(
        3,
        3,
        padding="same",
        data_format="channels_last" if axis == -1 else "channels_first",
    )(x_in)
    y = kn.ConditionalNormalization(make_norm(kind, axis), name="cond")(
        [h, condition_in]
    )
    return keras.Model([x_in, condition_in], y)


def test_the_regularizers_reach_the_dense_layers():
    layer = kn.ConditionalNormalization(
        make_norm("layer", -1), kernel_regularizer=keras.regularizers.L2(1.0)
    )
    x, condition = data((2, 4, 3))
    layer([x, condition])
    layer.scale.kernel.assign(np.ones((D, 3), "float32"))
    losses = [float(helpers.to_numpy(v)) for v in layer.losses]
    assert sorted(losses) == [0.0, 15.0]


@pytest.mark.parametrize("axis", [-1, 1])
def test_optimize_for_inference_folds_the_wrapped_batch_norm(axis):
    if axis == 1:
        helpers.skip_without_channels_first_conv()
    model = conditional_model(axis=axis)
    shape = (8, 4, 4, 3) if axis == -1 else (8, 3, 4, 4)
    x, condition = data(shape)
    for _ in range(3):
        model([x, condition], training=True)
    random_dense_weights(model.get_layer("cond"))
    new, report = kn.optimize_for_inference(
        model, verbose=0, return_report=True, sample=[x, condition]
    )
    wrapper = new.get_layer("cond")
    assert isinstance(wrapper, kn.ConditionalNormalization)
    assert isinstance(wrapper.normalization, kn.Affine)
    assert report.affine == [
        (
            "cond/" + model.get_layer("cond").normalization.name,
            kn.folding.WRAPPED_BATCH_NORM,
        )
    ]
    np.testing.assert_allclose(
        helpers.infer(new, [x, condition]),
        helpers.infer(model, [x, condition]),
        atol=1e-5,
        rtol=0,
    )
    folded = kn.fold_batch_norms(model, verbose=0)
    assert isinstance(folded.get_layer("cond").normalization, kn.Affine)


def test_optimize_for_inference_keeps_other_wrapped_norms():
    model = conditional_model(kind="layer")
    x, condition = data((2, 4, 4, 3))
    random_dense_weights(model.get_layer("cond"))
    new, report = kn.optimize_for_inference(
        model, verbose=0, return_report=True
    )
    assert isinstance(
        new.get_layer("cond").normalization, kn.LayerNormalization
    )
    assert report.affine == []
    np.testing.assert_allclose(
        helpers.infer(new, [x, condition]),
        helpers.infer(model, [x, condition]),
        atol=1e-6,
    )


def test_refuses_a_norm_with_its_own_affine():
    for norm, name in (
        (kn.LayerNormalization(), "center"),
        (kn.BatchNormalization(center=False), "scale"),
        (keras.layers.GroupNormalization(groups=2, scale=False), "center"),
    ):
        with pytest.raises(ValueError, match="center=False, scale=False") as e:
            kn.ConditionalNormalization(norm)
        assert str(e.value).endswith(f"{name}=True")


@pytest.mark.parametrize(
    "make, error, match",
    [
        (
            lambda: kn.ConditionalNormalization("batch"),
            TypeError,
            "normalization",
        ),
        (
            lambda: kn.ConditionalNormalization(
                kn.LayerNormalization(axis=[1, 2], center=False, scale=False)
            ),
            ValueError,
            "axis",
        ),
        (
            lambda: kn.ConditionalNormalization(keras.layers.Dense(3)),
            ValueError,
            "axis",
        ),
    ],
)
def test_bad_arguments(make, error, match):
    with pytest.raises(error, match=match) as info:
        make()
    assert "Received:" in str(info.value)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda x, c: x, "list of two tensors"),
        (lambda x, c: [x], "list of two tensors"),
        (lambda x, c: [x, c, c], "list of two tensors"),
        (lambda x, c: [x, c[:, None]], r"\(batch, d\)"),
        (lambda x, c: [x, c[:1]], "one condition per sample"),
    ],
)
def test_bad_inputs_are_refused_at_build(call, match):
    x, condition = data((2, 4, 3))
    layer = kn.ConditionalNormalization(make_norm("layer", -1))
    with pytest.raises(ValueError, match=match) as info:
        layer(call(x, condition))
    assert "Received:" in str(info.value)


# The Dense scale and shift run in the compute dtype, as keras.layers.Dense:
# under random weights they reach about 5 and the output 16, where one
# float16 step is 2**-6 and one bfloat16 step 2**-3.
MIXED_TOLERANCE = {
    "mixed_float16": dict(rtol=5e-3, atol=2e-2),
    "mixed_bfloat16": dict(rtol=5e-2, atol=1e-1),
}


class TestSharedChecks(layer_checks.LayerChecks):
    # [x, condition]. The weights are the Dense scale and shift; a wrapped
    # BatchNormalization adds its moving statistics. No keras.layers twin.
    cases = {
        "batch": layer_checks.Case(
            lambda: kn.ConditionalNormalization(make_norm("batch", -1)),
            [(4, 3, 3, 2), (4, D)],
            state=("moving_mean", "moving_variance"),
            mixed_tolerance=MIXED_TOLERANCE,
        ),
        "group_channels_first": layer_checks.Case(
            lambda: kn.ConditionalNormalization(
                make_norm("group", 1),
                kernel_initializer="glorot_uniform",
                bias_regularizer="l2",
            ),
            [(2, 4, 3, 3), (2, D)],
            mixed_tolerance=MIXED_TOLERANCE,
            fit=False,
        ),
    }
    # The mask of x reaches the wrapped norm and the layers after.
    masking = layer_checks.Masking(
        lambda: kn.ConditionalNormalization(make_norm("batch", -1)),
        [(4, 6, 3), (4, D)],
        excludes_masked=True,
    )
    test_weights_match_keras_twin = None
