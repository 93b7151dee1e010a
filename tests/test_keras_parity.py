"""keras_norms as a drop-in for keras.layers, across the layers with a
Keras twin (BatchNormalization, LayerNormalization, GroupNormalization,
RMSNormalization): every argument and default, configs that build each
other, weights that move across, ranks and axes as Keras treats them.

Each layer's own behaviour against its twin (batch renormalization, masks,
`rms_scaling`, ...) is in its module under tests/layers/."""

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


PER_SAMPLE_TWINS = {
    "layer": (keras.layers.LayerNormalization, kn.LayerNormalization, {}),
    "group": (
        keras.layers.GroupNormalization,
        kn.GroupNormalization,
        {"groups": 4},
    ),
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
    theirs.set_weights(
        [np.random.uniform(0.5, 1.5, w.shape) for w in theirs.weights]
    )
    ours = ours_cls.from_config(theirs.get_config())
    ours.build(shape)
    assert [w.name for w in ours.weights] == [w.name for w in theirs.weights]
    ours.set_weights(theirs.get_weights())
    x = helpers.random_input(shape, loc=1.0, scale=2.0)
    np.testing.assert_allclose(
        helpers.to_numpy(ours(x)),
        helpers.to_numpy(theirs(x)),
        rtol=1e-4,
        atol=1e-4,
    )


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
        helpers.to_numpy(ours(x)),
        helpers.to_numpy(theirs(x)),
        rtol=1e-4,
        atol=1e-4,
    )
    with pytest.raises(
        ValueError, match="expected axis -1 of input shape to have value 2"
    ):
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
        helpers.to_numpy(layer(x.astype("float32"))),
        expected,
        rtol=1e-4,
        atol=1e-4,
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
