"""keras_norms as a drop-in for keras.layers: every argument and default,
weights and outputs of BatchNormalization (batch renormalization, masks,
`synchronized`), LayerNormalization (`rms_scaling`), GroupNormalization and
RMSNormalization."""

import inspect

import keras
import numpy as np
import pytest

import keras_norms as kn
from tests import helpers

TOL = dict(rtol=1e-5, atol=1e-5)


def _parameters(cls):
    return {
        name: p.default
        for name, p in inspect.signature(cls.__init__).parameters.items()
        if name not in ("self", "kwargs")
    }


def test_takes_every_keras_argument_with_the_same_default():
    ours = _parameters(kn.BatchNormalization)
    theirs = _parameters(keras.layers.BatchNormalization)
    for name, default in theirs.items():
        assert name in ours, name
        assert ours[name] == default, name
    # Ours adds, never renames; the Keras arguments keep their order.
    assert list(ours)[: len(theirs)] == list(theirs)


def test_keras_config_builds_ours_and_weights_move_across():
    shape = (4, 3, 3, 5)
    theirs = keras.layers.BatchNormalization(
        momentum=0.9, epsilon=1e-4, renorm=True, renorm_clipping={"rmax": 2.0}
    )
    theirs.build(shape)
    ours = kn.BatchNormalization.from_config(theirs.get_config())
    ours.build(shape)
    assert [w.name for w in ours.weights] == [w.name for w in theirs.weights]
    values = [np.random.uniform(0.5, 2.0, w.shape) for w in theirs.weights]
    theirs.set_weights(values)
    ours.set_weights(theirs.get_weights())
    x = helpers.random_input(shape, loc=1.0)
    np.testing.assert_allclose(
        helpers.to_numpy(ours(x, training=False)),
        helpers.to_numpy(theirs(x, training=False)),
        **TOL,
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
                helpers.to_numpy(a), helpers.to_numpy(b), err_msg=a.name, **TOL
            )
    # r and d are stop-gradiented in both: the same input gradients.
    x = helpers.random_input(shape, seed=9, loc=2.0)
    up = helpers.random_input(shape, seed=10)
    _, dx, grads = helpers.forward_and_grads(ours, x, up)
    _, rdx, rgrads = helpers.forward_and_grads(theirs, x, up)
    np.testing.assert_allclose(dx, rdx, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(grads["gamma"], rgrads["gamma"], rtol=1e-4, atol=1e-4)


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


@pytest.mark.parametrize("training", [True, False])
def test_mask_equals_keras(training):
    shape = (4, 6, 3)
    x = helpers.random_input(shape, loc=2.0, scale=3.0)
    mask = np.random.RandomState(4).rand(4, 6) > 0.4
    ours = kn.BatchNormalization(momentum=0.5)
    theirs = keras.layers.BatchNormalization(momentum=0.5)
    y = ours(x, training=training, mask=mask)
    ry = theirs(x, training=training, mask=mask)
    np.testing.assert_allclose(helpers.to_numpy(y), helpers.to_numpy(ry), rtol=1e-4, atol=1e-4)
    for a, b in zip(ours.weights, theirs.weights):
        np.testing.assert_allclose(helpers.to_numpy(a), helpers.to_numpy(b), **TOL)
    if training:
        # The statistics cover the unmasked positions only.
        kept = x[mask]
        expected = 0.5 * kept.mean(axis=0)
        np.testing.assert_allclose(helpers.to_numpy(ours.moving_mean), expected, **TOL)


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
        helpers.to_numpy(ours(tokens)), helpers.to_numpy(theirs(tokens)), rtol=1e-4, atol=1e-4
    )
    np.testing.assert_allclose(
        helpers.to_numpy(ours.layers[-1].moving_mean),
        helpers.to_numpy(theirs.layers[-1].moving_mean),
        **TOL,
    )


def test_bad_mask_rank_refused():
    layer = kn.BatchNormalization()
    with pytest.raises(ValueError, match="mask"):
        layer(np.ones((2, 3, 4), "float32"), training=True, mask=np.ones((2, 3, 4)))


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


PER_SAMPLE_TWINS = {
    "layer": (keras.layers.LayerNormalization, kn.LayerNormalization, {}),
    "group": (keras.layers.GroupNormalization, kn.GroupNormalization, {"groups": 4}),
    "rms": (keras.layers.RMSNormalization, kn.RMSNormalization, {}),
}


@pytest.mark.parametrize("name", sorted(PER_SAMPLE_TWINS))
def test_per_sample_norms_are_drop_ins(name):
    keras_cls, ours_cls, kwargs = PER_SAMPLE_TWINS[name]
    ours_params = _parameters(ours_cls)
    theirs_params = _parameters(keras_cls)
    for arg, default in theirs_params.items():
        assert arg in ours_params, arg
        assert ours_params[arg] == default, arg
    assert list(ours_params)[: len(theirs_params)] == list(theirs_params)
    shape = (3, 4, 4, 8)
    theirs = keras_cls(**kwargs)
    theirs.build(shape)
    theirs.set_weights([np.random.uniform(0.5, 1.5, w.shape) for w in theirs.weights])
    ours = ours_cls.from_config(theirs.get_config())
    ours.build(shape)
    assert [w.name for w in ours.weights] == [w.name for w in theirs.weights]
    ours.set_weights(theirs.get_weights())
    x = helpers.random_input(shape, loc=1.0, scale=2.0)
    np.testing.assert_allclose(
        helpers.to_numpy(ours(x)), helpers.to_numpy(theirs(x)), rtol=1e-4, atol=1e-4
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
    np.testing.assert_allclose(helpers.to_numpy(ours(x)), expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        helpers.to_numpy(ours(x)), helpers.to_numpy(theirs(x)), rtol=1e-4, atol=1e-4
    )
    assert ours.get_config()["rms_scaling"] is True


def _masked_moments(x, mask, axis):
    """NumPy reference: Keras' mask (all axes but the last) expanded at the
    last axis, the moments per `axis` over the unmasked positions."""
    weights = np.broadcast_to(mask[..., None], x.shape).astype("float64")
    reduce = tuple(a for a in range(x.ndim) if a != axis % x.ndim)
    count = weights.sum(axis=reduce, keepdims=True)
    mean = (weights * x).sum(axis=reduce, keepdims=True) / count
    var = (weights * (x - mean) ** 2).sum(axis=reduce, keepdims=True) / count
    return mean, var


@pytest.mark.parametrize("cls", [kn.BatchNormalization, kn.SyncBatchNormalization])
@pytest.mark.parametrize(
    "shape,axis",
    [((4, 3, 3), 1), ((5, 2, 3), 1), ((5, 2, 3, 4), 2), ((5, 2, 3, 4), -1)],
)
def test_mask_on_any_axis_is_expanded_at_the_last_axis_as_keras(cls, shape, axis):
    # Keras' mask marks all axes but the last and is expanded there, also
    # with axis=1 (issue 20, item 1): (4, 3, 3) has C == T, where expanding
    # at the channel axis computed other statistics silently; (5, 2, 3) did
    # not broadcast at all.
    x = helpers.random_input(shape, loc=1.0, scale=2.0).astype("float64")
    mask = np.random.RandomState(5).rand(*shape[:-1]) > 0.35
    x[~mask] = np.nan  # masked positions never reach the statistics
    x = x.astype("float32")
    ours = cls(axis=axis, momentum=0.0)
    theirs = keras.layers.BatchNormalization(axis=axis, momentum=0.0)
    y = helpers.to_numpy(ours(x, training=True, mask=mask))
    ry = helpers.to_numpy(theirs(x, training=True, mask=mask))
    mean, var = _masked_moments(np.nan_to_num(x), mask, axis)
    expected = (x - mean) / np.sqrt(var + 1e-3)
    kept = np.broadcast_to(mask[..., None], shape)
    np.testing.assert_allclose(y[kept], expected[kept], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(y[kept], ry[kept], rtol=1e-4, atol=1e-4)
    for name in ("moving_mean", "moving_variance"):
        np.testing.assert_allclose(
            helpers.to_numpy(getattr(ours, name)),
            helpers.to_numpy(getattr(theirs, name)),
            rtol=1e-4,
            atol=1e-5,
        )
    np.testing.assert_allclose(
        helpers.to_numpy(ours.moving_mean), mean.ravel(), rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(
        helpers.to_numpy(ours.moving_variance), var.ravel(), rtol=1e-4, atol=1e-5
    )


def test_mask_that_does_not_broadcast_is_refused_clearly():
    layer = kn.BatchNormalization(axis=1)
    with pytest.raises(ValueError, match=r"without its last axis.*mask.shape=\(5, 3\)"):
        layer(np.ones((5, 2, 3), "float32"), training=True, mask=np.ones((5, 3), bool))


RANK_FREE = {
    "layer": (keras.layers.LayerNormalization, kn.LayerNormalization),
    "rms": (keras.layers.RMSNormalization, kn.RMSNormalization),
}


@pytest.mark.parametrize("name", sorted(RANK_FREE))
def test_rank_is_not_locked_at_build(name):
    # Issue 20, item 2: built on (2, 2, 2), Keras' layers take a rank-4
    # input; only the sizes along `axis` are fixed.
    keras_cls, ours_cls = RANK_FREE[name]
    theirs, ours = keras_cls(), ours_cls()
    theirs.build((2, 2, 2))
    ours.build((2, 2, 2))
    values = [np.random.uniform(0.5, 1.5, w.shape) for w in theirs.weights]
    theirs.set_weights(values)
    ours.set_weights(values)
    x = helpers.random_input((3, 2, 2, 2), loc=1.0, scale=2.0)
    np.testing.assert_allclose(
        helpers.to_numpy(ours(x)), helpers.to_numpy(theirs(x)), rtol=1e-4, atol=1e-4
    )
    with pytest.raises(ValueError, match="expected axis -1 of input shape to have value 2"):
        ours(np.ones((3, 2, 3), "float32"))


@pytest.mark.parametrize("name", sorted(RANK_FREE))
def test_positive_axes_mean_the_same_position_at_any_rank(name):
    # Built on rank 3 with axis=[1, 2], called on rank 4: still axes 1 and
    # 2 (Keras' own RMSNormalization fails there, and LayerNormalization on
    # torch); checked against NumPy.
    _, ours_cls = RANK_FREE[name]
    layer = ours_cls(axis=[1, 2])
    layer.build((2, 3, 4))
    weight = np.random.uniform(0.5, 1.5, (3, 4)).astype("float32")
    layer.set_weights([weight] * len(layer.weights))
    x = helpers.random_input((2, 3, 4, 5), loc=1.0, scale=2.0).astype("float64")
    axes = (1, 2)
    w = weight[None, :, :, None]
    if name == "rms":
        expected = x / np.sqrt((x**2).mean(axis=axes, keepdims=True) + 1e-6) * w
    else:
        expected = helpers.numpy_normalize(x, axes, 1e-3, gamma=w, beta=w)
    np.testing.assert_allclose(
        helpers.to_numpy(layer(x.astype("float32"))), expected, rtol=1e-4, atol=1e-4
    )


@pytest.mark.parametrize("name", sorted(RANK_FREE))
@pytest.mark.parametrize("axis", [-1, [2, 1], 2])
def test_config_axis_after_build_equals_keras(name, axis):
    keras_cls, ours_cls = RANK_FREE[name]
    theirs, ours = keras_cls(axis=axis), ours_cls(axis=axis)
    assert ours.get_config()["axis"] == theirs.get_config()["axis"]
    theirs.build((2, 3, 4))
    ours.build((2, 3, 4))
    assert ours.get_config()["axis"] == theirs.get_config()["axis"]
    assert ours.axis == theirs.axis
    clone = ours_cls.from_config(ours.get_config())
    clone.build((2, 3, 4))
    assert clone.get_config() == ours.get_config()
