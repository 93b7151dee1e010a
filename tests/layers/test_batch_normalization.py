"""BatchNormalization: against NumPy (the paper's formulas), torch's
`F.batch_norm` and `keras.layers.BatchNormalization` (batch
renormalization, masks, `synchronized`, a batch of one), forward and
gradients, on every backend; plus the shared checks (tests/layer_checks.py).

Elsewhere: argument signature and config parity with Keras in
tests/test_keras_parity.py; SyncBatchNormalization in
tests/layers/test_sync_batch_normalization.py.
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
from tests.layers._common import set_gamma_beta

torch = pytest.importorskip("torch")
F = torch.nn.functional
PARITY_TOL = dict(rtol=1e-5, atol=1e-5)
BACKEND = keras.backend.backend()
STATISTICS = ("moving_mean", "moving_variance")


class TestSharedChecks(layer_checks.LayerChecks):
    cases = {
        "channels_last": layer_checks.Case(
            lambda: kn.BatchNormalization(momentum=0.5),
            (2, 3, 3, 4),
            state=STATISTICS,
            twin=lambda: keras.layers.BatchNormalization(momentum=0.5),
            fit=False,
        ),
        "channels_first": layer_checks.Case(
            lambda: kn.BatchNormalization(momentum=0.5, axis=1),
            (4, 3, 5, 6),
            state=STATISTICS,
            twin=lambda: keras.layers.BatchNormalization(momentum=0.5, axis=1),
        ),
        "use_global_stats": layer_checks.Case(
            lambda: kn.BatchNormalization(use_global_stats=True), (4, 5, 6)
        ),
        "renorm": layer_checks.Case(
            lambda: kn.BatchNormalization(renorm=True),
            (2, 3, 3, 4),
            state=STATISTICS
            + ("moving_stddev", "renorm_mean", "renorm_stddev"),
            twin=lambda: keras.layers.BatchNormalization(renorm=True),
        ),
    }
    masking = layer_checks.Masking(
        lambda: kn.BatchNormalization(momentum=0.5),
        (4, 6, 3),
        excludes_masked=True,
    )


def _not_batch_or(axis, ndim):
    axis %= ndim
    return [a for a in range(1, ndim) if a != axis]


# ---------------------------------------------------------------------------
# Against torch and NumPy
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("shape,axis", LAYOUTS)
def test_batch_norm_training_matches_torch(shape, axis):
    x = helpers.random_input(shape, loc=2.0, scale=3.0)
    layer = kn.BatchNormalization(axis=axis, epsilon=EPS)
    layer.build(shape)
    gamma, beta = set_gamma_beta(layer, shape[axis])
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
    assert_matches_torch((y, dx, grads), (ry, rdx, rgrads))


@pytest.mark.parametrize("shape,axis", [LAYOUTS[0], LAYOUTS[3], LAYOUTS[4]])
def test_batch_norm_inference_uses_moving_statistics(shape, axis):
    x = helpers.random_input(shape)
    layer = kn.BatchNormalization(axis=axis)
    layer.build(shape)
    c = shape[axis]
    gamma, beta = set_gamma_beta(layer, c)
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
        np.testing.assert_allclose(
            helpers.to_numpy(layer.moving_mean), mm, rtol=1e-5, atol=1e-6
        )
        np.testing.assert_allclose(
            helpers.to_numpy(layer.moving_variance), mv, rtol=1e-5, atol=1e-6
        )


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


def test_large_mean_keeps_unit_variance():
    from tests.layers._common import assert_unit_variance
    from tests.layers._common import large_mean_input

    x = large_mean_input()
    y = helpers.to_numpy(kn.BatchNormalization()(x, training=True))
    assert_unit_variance(y)
    np.testing.assert_allclose(
        y, helpers.numpy_normalize(x, (0, 1, 2), EPS), atol=5e-2
    )


def test_channels_first_with_width_equal_to_channels():
    from tests.layers._common import width_equal_to_channels_input

    x = width_equal_to_channels_input()
    layer = kn.BatchNormalization(axis=1)
    layer.build(x.shape)
    gamma, beta = set_gamma_beta(layer, 4)
    b = lambda v: helpers.broadcast_param(v, 4, 1)  # noqa: E731
    for training in (True, False):
        layer.moving_mean.assign(np.arange(4, dtype="float32"))
        layer.moving_variance.assign(np.ones(4, dtype="float32"))
        y = helpers.to_numpy(layer(x, training=training))
        if training:
            expected = helpers.numpy_normalize(x, (0, 2, 3), EPS)
        else:
            mm = np.arange(4).reshape(1, 4, 1, 1)
            expected = (x - mm) / np.sqrt(1 + EPS)
        np.testing.assert_allclose(y, expected * b(gamma) + b(beta), **TOL)


# ---------------------------------------------------------------------------
# Against keras.layers.BatchNormalization
# ---------------------------------------------------------------------------
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
        np.testing.assert_allclose(
            helpers.to_numpy(a), helpers.to_numpy(b), rtol=1e-5, atol=1e-6
        )


@pytest.mark.parametrize(
    "clipping",
    [None, {"rmax": 1.5, "rmin": 0.7, "dmax": 0.3}, {"dmax": 0.0}],
)
def test_renorm_equals_keras_over_several_steps(clipping):
    shape = (6, 4, 4, 3)
    kwargs = dict(
        momentum=0.8, renorm=True, renorm_clipping=clipping, renorm_momentum=0.7
    )
    ours = kn.BatchNormalization(**kwargs)
    theirs = keras.layers.BatchNormalization(**kwargs)
    ours.build(shape)
    theirs.build(shape)
    names = [w.name for w in ours.weights]
    assert names == [w.name for w in theirs.weights]
    assert names[-3:] == ["moving_stddev", "renorm_mean", "renorm_stddev"]
    for step in range(4):
        x = helpers.random_input(shape, seed=step, loc=step, scale=1.0 + step)
        np.testing.assert_allclose(
            helpers.to_numpy(ours(x, training=True)),
            helpers.to_numpy(theirs(x, training=True)),
            rtol=1e-4,
            atol=1e-4,
        )
        for a, b in zip(ours.weights, theirs.weights):
            np.testing.assert_allclose(
                helpers.to_numpy(a),
                helpers.to_numpy(b),
                err_msg=a.name,
                **PARITY_TOL,
            )
    # r and d are stop-gradiented in both: the same input gradients.
    x = helpers.random_input(shape, seed=9, loc=2.0)
    up = helpers.random_input(shape, seed=10)
    _, dx, grads = helpers.forward_and_grads(ours, x, up)
    _, rdx, rgrads = helpers.forward_and_grads(theirs, x, up)
    np.testing.assert_allclose(dx, rdx, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        grads["gamma"], rgrads["gamma"], rtol=1e-4, atol=1e-4
    )


def test_renorm_corrections_reach_the_output():
    # With renorm statistics far from the batch's, r and d change the output
    # away from plain batch normalization (and clipping bounds them).
    shape = (8, 3)
    x = helpers.random_input(shape, loc=3.0, scale=2.0)
    layer = kn.BatchNormalization(
        renorm=True, renorm_clipping={"rmax": 1.0, "rmin": 1.0, "dmax": 0.5}
    )
    layer.build(shape)
    layer.renorm_mean.assign(np.zeros(3, "float32"))
    layer.renorm_stddev.assign(np.ones(3, "float32"))
    y = helpers.to_numpy(layer(x, training=True))
    x_hat = helpers.numpy_normalize(x, (0,), 1e-3)
    # r is clipped to exactly 1 and d to 0.5 (mean 3 is far above 0).
    np.testing.assert_allclose(y, x_hat + 0.5, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("training", [True, False])
def test_mask_equals_keras(training):
    shape = (4, 6, 3)
    x = helpers.random_input(shape, loc=2.0, scale=3.0)
    mask = np.random.RandomState(4).rand(4, 6) > 0.4
    ours = kn.BatchNormalization(momentum=0.5)
    theirs = keras.layers.BatchNormalization(momentum=0.5)
    y = ours(x, training=training, mask=mask)
    ry = theirs(x, training=training, mask=mask)
    np.testing.assert_allclose(
        helpers.to_numpy(y), helpers.to_numpy(ry), rtol=1e-4, atol=1e-4
    )
    for a, b in zip(ours.weights, theirs.weights):
        np.testing.assert_allclose(
            helpers.to_numpy(a), helpers.to_numpy(b), **PARITY_TOL
        )
    if training:
        # The statistics cover the unmasked positions only.
        kept = x[mask]
        expected = 0.5 * kept.mean(axis=0)
        np.testing.assert_allclose(
            helpers.to_numpy(ours.moving_mean), expected, **PARITY_TOL
        )


def test_mask_after_embedding_in_a_model():
    tokens = np.array([[3, 5, 0, 0], [7, 1, 2, 0], [4, 0, 0, 0]])

    def build(norm):
        inputs = keras.Input((4,), dtype="int32")
        h = keras.layers.Embedding(10, 3, mask_zero=True)(inputs)
        return keras.Model(inputs, norm(momentum=0.0)(h, training=True))

    keras.utils.set_random_seed(1)
    ours = build(kn.BatchNormalization)
    keras.utils.set_random_seed(1)
    theirs = build(keras.layers.BatchNormalization)
    np.testing.assert_allclose(
        helpers.to_numpy(ours(tokens)),
        helpers.to_numpy(theirs(tokens)),
        rtol=1e-4,
        atol=1e-4,
    )
    np.testing.assert_allclose(
        helpers.to_numpy(ours.layers[-1].moving_mean),
        helpers.to_numpy(theirs.layers[-1].moving_mean),
        **PARITY_TOL,
    )


@pytest.mark.parametrize("shape,axis", layer_checks.MASK_AXIS_CASES)
def test_mask_on_any_axis_is_expanded_at_the_last_axis_as_keras(shape, axis):
    layer_checks.check_mask_on_any_axis_as_keras(
        kn.BatchNormalization, shape, axis
    )


def test_synchronized_works_on_every_backend_and_is_plain_bn_alone():
    # Keras allows synchronized=True on TensorFlow only; ours everywhere.
    shape = (6, 4, 3)
    x = helpers.random_input(shape, loc=1.0)
    synced = kn.BatchNormalization(synchronized=True)
    plain = kn.BatchNormalization()
    np.testing.assert_array_equal(
        helpers.to_numpy(synced(x, training=True)),
        helpers.to_numpy(plain(x, training=True)),
    )
    assert synced.get_config()["synchronized"] is True


# ---------------------------------------------------------------------------
# A batch of one and an empty batch in a graph
# ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "axis, shape", [(-1, (1, 4)), (1, (1, 3, 1, 1)), (-1, (1, 1, 1, 3))]
)
def test_batch_norm_batch_of_one_matches_keras(axis, shape):
    # One value per channel in training behaves as Keras does: the variance
    # is 0, the output `beta`, the moving statistics move towards the value
    # and towards 0.
    x = helpers.random_input(shape, seed=1, loc=2.0)
    ours = kn.BatchNormalization(axis=axis, momentum=0.5)
    ref = keras.layers.BatchNormalization(axis=axis, momentum=0.5)
    for layer in (ours, ref):
        layer.build(shape)
    helpers.set_random_weights(ref, seed=2)
    ours.set_weights(ref.get_weights())
    for _ in range(3):  # repeated eager calls
        y = helpers.to_numpy(ours(x, training=True))
        y_ref = helpers.to_numpy(ref(x, training=True))
        # (x * a + b against Keras' (x - mean) * a: rounding only.)
        np.testing.assert_allclose(y, y_ref, atol=2e-5)
    beta = helpers.broadcast_param(helpers.to_numpy(ref.beta), len(shape), axis)
    np.testing.assert_allclose(y, np.broadcast_to(beta, shape), atol=2e-5)
    for name in STATISTICS:
        np.testing.assert_allclose(
            helpers.to_numpy(getattr(ours, name)),
            helpers.to_numpy(getattr(ref, name)),
            atol=1e-6,
            err_msg=name,
        )
    # Gradients are finite (the input's is 0: the output is beta).
    _, dx, grads = helpers.forward_and_grads(ours, x)
    np.testing.assert_allclose(dx, 0.0, atol=1e-5)
    assert all(np.all(np.isfinite(g)) for g in grads.values())


def test_fit_with_a_last_batch_of_one():
    rng = np.random.RandomState(0)
    x = rng.randn(33, 4).astype("float32")
    y = rng.randn(33, 1).astype("float32")
    model = keras.Sequential(
        [keras.Input((4,)), kn.BatchNormalization(), keras.layers.Dense(1)]
    )
    model.compile(optimizer="sgd", loss="mse")
    history = model.fit(x, y, batch_size=32, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    bn = model.layers[0]
    assert np.all(np.isfinite(helpers.to_numpy(bn.moving_mean)))
    # The last step (one sample) moved the variance towards 0, as Keras.
    assert np.all(helpers.to_numpy(bn.moving_variance) < 1.0)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="a graph of unknown batch")
@pytest.mark.parametrize("renorm", [False, True])
def test_empty_batch_in_a_graph_of_unknown_batch_size_keeps_state(renorm):
    layer_checks.check_empty_batch_in_an_unknown_batch_graph(
        lambda: kn.BatchNormalization(
            **(dict(renorm=True) if renorm else dict(momentum=0.5))
        )
    )


# ---------------------------------------------------------------------------
# Bad arguments and shapes
# ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "factory,match",
    [
        (lambda: kn.BatchNormalization(epsilon=0.0), "epsilon"),
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


@pytest.mark.parametrize(
    "clipping,match",
    [
        ({"rmax": 1.0, "bogus": 2.0}, "keys"),
        ({"rmax": 0.5, "rmin": 2.0}, "rmax >= rmin"),
        ({"dmax": -1.0}, "dmax >= 0"),
        ("rmax", "dict"),
    ],
)
def test_bad_renorm_clipping_refused(clipping, match):
    with pytest.raises(ValueError, match=match):
        kn.BatchNormalization(renorm=True, renorm_clipping=clipping)


def test_numpy_scalars_accepted_and_configs_stay_plain_python():
    # Issue 21, item 9: NumPy integers, floats and bools wherever Python
    # ones are accepted; the stored config holds Python numbers (JSON).
    layer = kn.BatchNormalization(
        axis=np.int64(1),
        epsilon=np.float32(1e-3),
        momentum=np.float64(0.9),
        center=np.True_,
        renorm=np.True_,
        renorm_clipping={"rmax": np.float32(2.0), "dmax": np.int64(1)},
    )
    layer_checks.check_config_round_trip(layer)
    assert type(layer.epsilon) is float and layer.center is True


@pytest.mark.parametrize(
    "layer,shape,match",
    [
        (
            lambda: kn.BatchNormalization(axis=4),
            (2, 4, 4, 8),
            "axis.*out of range",
        ),
        (lambda: kn.BatchNormalization(), (None, 4, None), "known size"),
    ],
)
def test_bad_shapes_refused_at_build(layer, shape, match):
    with pytest.raises(ValueError, match=match):
        layer().build(shape)


def test_bad_mask_rank_refused():
    layer = kn.BatchNormalization()
    with pytest.raises(ValueError, match="mask"):
        layer(
            np.ones((2, 3, 4), "float32"),
            training=True,
            mask=np.ones((2, 3, 4)),
        )


def test_mask_that_does_not_broadcast_is_refused_clearly():
    layer = kn.BatchNormalization(axis=1)
    with pytest.raises(
        ValueError, match=r"without its last axis.*mask.shape=\(5, 3\)"
    ):
        layer(
            np.ones((5, 2, 3), "float32"),
            training=True,
            mask=np.ones((5, 3), bool),
        )


# ---------------------------------------------------------------------------
# Ghost batch normalization: BatchNormalization(virtual_batch_size=k)
# ---------------------------------------------------------------------------
# Ghost batch normalization: `BatchNormalization(virtual_batch_size=k)`.
#
# Against NumPy written from Hoffer et al. (2017) and tf_keras' semantics
# (tf_keras views the batch as (k, batch // k, ...) and reduces over the
# first axis: ghost batch j holds samples j, j + batch // k, ...; each
# normalized with its own batch statistics; the moving statistics blended
# once per step with the mean over the ghost batches of their means and
# biased variances), and against the peer: Keras' own BatchNormalization
# run on each ghost batch, whose outputs and input gradients the ghost
# batch must reproduce, and whose weight gradients it must sum.
GHOST_CASES = [
    ((8, 6), -1),
    ((8, 5, 6), -1),
    ((8, 6, 5), 1),
    ((8, 3, 4, 6), -1),
    ((8, 6, 3, 4), 1),
    ((8, 2, 3, 2, 6), -1),
]


def ghost_batches(batch, k):
    """tf_keras' ghost batches: index arrays, one per ghost batch."""
    groups = batch // k
    return [np.arange(j, batch, groups) for j in range(groups)]


def _groups_reference(x, k, axis, gamma, beta, epsilon):
    ndim = x.ndim
    axis %= ndim
    reduce = tuple(a for a in range(ndim) if a != axis)
    g = helpers.broadcast_param(gamma, ndim, axis)
    b = helpers.broadcast_param(beta, ndim, axis)
    outputs = np.zeros(x.shape, "float64")
    means, variances = [], []
    for rows in ghost_batches(x.shape[0], k):
        chunk = x[rows].astype("float64")
        outputs[rows] = helpers.numpy_normalize(chunk, reduce, epsilon, g, b)
        means.append(chunk.mean(reduce))
        variances.append(chunk.var(reduce))
    return outputs, np.mean(means, axis=0), np.mean(variances, axis=0)


@pytest.mark.parametrize("shape,axis", GHOST_CASES)
def test_ghost_batches_match_numpy(shape, axis):
    x = helpers.random_input(shape, loc=2.0, scale=3.0)
    layer = kn.BatchNormalization(axis=axis, momentum=0.8, virtual_batch_size=4)
    layer.build(shape)
    helpers.set_random_weights(layer)
    gamma, beta = helpers.to_numpy(layer.gamma), helpers.to_numpy(layer.beta)
    old_mean = helpers.to_numpy(layer.moving_mean)
    old_var = helpers.to_numpy(layer.moving_variance)
    y = helpers.to_numpy(layer(x, training=True))
    ref, mean, var = _groups_reference(x, 4, axis, gamma, beta, 1e-3)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        helpers.to_numpy(layer.moving_mean),
        old_mean * 0.8 + mean * 0.2,
        rtol=1e-5,
        atol=1e-5,
    )
    np.testing.assert_allclose(
        helpers.to_numpy(layer.moving_variance),
        old_var * 0.8 + var * 0.2,
        rtol=1e-5,
        atol=1e-5,
    )
    # Inference: the moving statistics, any batch size (tf_keras needed a
    # multiple of k here too).
    y = helpers.to_numpy(layer(x[:3], training=False))
    view = [1] * len(shape)
    view[axis % len(shape)] = -1
    ref = (x[:3] - helpers.to_numpy(layer.moving_mean).reshape(view)) / np.sqrt(
        helpers.to_numpy(layer.moving_variance).reshape(view) + 1e-3
    )
    ref = ref * gamma.reshape(view) + beta.reshape(view)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape,axis", [GHOST_CASES[1], GHOST_CASES[4]])
def test_ghost_gradients_equal_keras_batch_norm_per_group(shape, axis):
    x = helpers.random_input(shape, loc=1.0, scale=2.0)
    upstream = helpers.random_input(shape, seed=5)
    ghost = kn.BatchNormalization(axis=axis, virtual_batch_size=2)
    ghost.build(shape)
    helpers.set_random_weights(ghost)
    y, dx, grads = helpers.forward_and_grads(ghost, x, upstream)
    peer = keras.layers.BatchNormalization(axis=axis)
    peer.build((2,) + shape[1:])
    for w in ("gamma", "beta"):
        getattr(peer, w).assign(getattr(ghost, w).value)
    ys, dxs = np.zeros(shape), np.zeros(shape)
    sums = {"gamma": 0.0, "beta": 0.0}
    for rows in ghost_batches(shape[0], 2):
        y_g, dx_g, g_g = helpers.forward_and_grads(
            peer, x[rows], upstream[rows]
        )
        ys[rows] = y_g
        dxs[rows] = dx_g
        for name in sums:
            sums[name] = sums[name] + g_g[name]
    np.testing.assert_allclose(y, ys, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dx, dxs, rtol=1e-3, atol=1e-4)
    for name in sums:
        np.testing.assert_allclose(
            grads[name], sums[name], rtol=1e-3, atol=1e-4
        )


def test_ghost_fit_saves_loads_and_folds(tmp_path):
    x = helpers.random_input((32, 4, 4, 3), loc=1.0, scale=2.0)
    y = helpers.random_input((32, 2), seed=3)
    model = keras.Sequential(
        [
            keras.Input((4, 4, 3)),
            keras.layers.Conv2D(4, 3, use_bias=False),
            kn.BatchNormalization(virtual_batch_size=4),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(2),
        ]
    )
    model.compile("sgd", "mse")
    before = helpers.to_numpy(model.layers[1].moving_mean)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert not np.allclose(
        helpers.to_numpy(model.layers[1].moving_mean), before
    )
    loaded = helpers.assert_saves_and_loads(model, x[:5], tmp_path)
    assert loaded.layers[1].virtual_batch_size == 4
    helpers.assert_config_round_trip(model.layers[1])
    folded = kn.fold_batch_norms(model)
    assert helpers.count_layers(folded, kn.BatchNormalization) == 0
    np.testing.assert_allclose(
        helpers.infer(folded, x[:7]),
        helpers.infer(model, x[:7]),
        rtol=1e-4,
        atol=1e-4,
    )


def test_ghost_mixed_precision_statistics_in_float32():
    x = helpers.random_input((8, 3, 3, 4), loc=2.0)
    layer = kn.BatchNormalization(virtual_batch_size=4, dtype="mixed_float16")
    y = layer(x, training=True)
    assert keras.backend.standardize_dtype(y.dtype) == "float16"
    assert layer.moving_mean.dtype == "float32"
    ref, _, _ = _groups_reference(x, 4, -1, np.ones(4), np.zeros(4), 1e-3)
    np.testing.assert_allclose(
        helpers.to_numpy(y).astype("float32"), ref, atol=2e-2
    )


def test_ghost_bad_arguments_and_batches():
    with pytest.raises(TypeError, match="Received: virtual_batch_size=2.5"):
        kn.BatchNormalization(virtual_batch_size=2.5)
    with pytest.raises(ValueError, match="Received: virtual_batch_size=0"):
        kn.BatchNormalization(virtual_batch_size=0)
    with pytest.raises(ValueError, match="renorm=True"):
        kn.BatchNormalization(virtual_batch_size=2, renorm=True)
    with pytest.raises(ValueError, match="synchronized=True"):
        kn.SyncBatchNormalization(virtual_batch_size=2)
    layer = kn.BatchNormalization(virtual_batch_size=4)
    x = helpers.random_input((6, 3))
    with pytest.raises(ValueError, match="multiple of `virtual_batch_size`"):
        layer(x, training=True)
    layer(x, training=False)  # inference: any batch size
    state = [helpers.to_numpy(v) for v in layer.non_trainable_variables]
    empty = layer(x[:0], training=True)  # an empty batch: state unchanged
    assert tuple(empty.shape) == (0, 3)
    for v, before in zip(layer.non_trainable_variables, state):
        np.testing.assert_array_equal(helpers.to_numpy(v), before)
