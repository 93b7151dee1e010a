"""convert / convert_sync_batchnorm: Keras norms swapped for keras_norms ones.

The reference is the original Keras model itself: after conversion the new
model must compute the same outputs in inference and in training mode,
update its moving statistics the same way, and leave the original (and its
weights) untouched.
"""

import keras
import numpy as np
import pytest

from keras_norms.conversion import convert
from keras_norms.conversion import convert_sync_batchnorm
from keras_norms.layers.batch_normalization import (
    BatchNormalization as KnBatchNormalization,
)
from keras_norms.layers.group_normalization import (
    GroupNormalization as KnGroupNormalization,
)
from keras_norms.layers.layer_normalization import (
    LayerNormalization as KnLayerNormalization,
)
from keras_norms.layers.rms_normalization import (
    RMSNormalization as KnRMSNormalization,
)
from keras_norms.layers.sync_batch_normalization import SyncBatchNormalization
from tests import helpers
from tests.helpers import to_numpy

L = keras.layers
KERAS_NORMS = (
    L.BatchNormalization,
    L.LayerNormalization,
    L.GroupNormalization,
    L.RMSNormalization,
)
OURS = {
    L.BatchNormalization: KnBatchNormalization,
    L.LayerNormalization: KnLayerNormalization,
    L.GroupNormalization: KnGroupNormalization,
    L.RMSNormalization: KnRMSNormalization,
}


def _keras_classes(model):
    """Exact Keras norm classes left in `model`."""
    return [
        type(l) for l in helpers.all_layers(model) if type(l) in KERAS_NORMS
    ]


def _randomize(model, seed=0):
    """Random values in every weight (variances > 0), so equality means it."""
    rng = np.random.RandomState(seed)
    for w in model.weights:
        if "variance" in w.path:
            value = rng.uniform(0.2, 3.0, size=w.shape)
        else:
            value = rng.randn(*w.shape)
        w.assign(value.astype(w.dtype))


def _snapshot(model):
    return [to_numpy(w).copy() for w in model.weights]


def _x(shape, seed=1):
    return np.random.RandomState(seed).randn(*shape).astype("float32") * 2 + 1


def _assert_same_model(original, converted, x, check_training=True):
    """Same outputs (both modes), same weights after a training call."""
    np.testing.assert_allclose(
        to_numpy(converted(x, training=False)),
        to_numpy(original(x, training=False)),
        rtol=1e-5,
        atol=1e-5,
    )
    assert not {id(w) for w in original.weights} & {
        id(w) for w in converted.weights
    }
    if not check_training:
        return
    np.testing.assert_allclose(
        to_numpy(converted(x, training=True)),
        to_numpy(original(x, training=True)),
        rtol=1e-5,
        atol=1e-5,
    )
    # The training call updated the moving statistics of both, alike.
    after_original = _snapshot(original)
    after_converted = _snapshot(converted)
    assert len(after_original) == len(after_converted)
    for a, b in zip(after_converted, after_original):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def _functional_model():
    inner = keras.Sequential(
        [
            keras.Input((4, 4, 6)),
            L.Conv2D(6, 1),
            L.BatchNormalization(momentum=0.5),
            L.GroupNormalization(groups=3, epsilon=1e-2),
        ],
        name="inner",
    )
    x = keras.Input((4, 4, 3))
    h = L.Conv2D(6, 3, padding="same")(x)
    h = L.BatchNormalization(axis=-1, center=False, momentum=0.9)(h)
    h = L.ReLU()(h)
    h = inner(h)
    h = L.LayerNormalization(axis=[1, 2, 3])(h)
    h = L.Reshape((16, 6))(h)
    h = L.RMSNormalization(epsilon=1e-3)(h)
    h = L.Flatten()(h)
    h = L.Dense(5)(h)
    h = L.LayerNormalization(scale=False)(h)
    return keras.Model(x, h, name="outer")


def _sequential_model():
    return keras.Sequential(
        [
            keras.Input((8,)),
            L.Dense(6),
            L.BatchNormalization(epsilon=1e-2),
            L.LayerNormalization(),
            L.Reshape((2, 3)),
            L.GroupNormalization(groups=3, axis=-1),
            L.RMSNormalization(axis=[1, 2]),
            L.Flatten(),
        ]
    )


@pytest.mark.parametrize("kind", ["functional", "sequential"])
def test_convert_replaces_every_keras_norm_and_keeps_outputs(kind):
    make = _functional_model if kind == "functional" else _sequential_model
    model = make()
    _randomize(model)
    x = _x((3,) + tuple(model.inputs[0].shape[1:]))
    before = _snapshot(model)
    keras_types = _keras_classes(model)
    converted = convert(model)

    # The original is untouched, bit for bit, and keeps its Keras layers.
    for a, b in zip(_snapshot(model), before):
        np.testing.assert_array_equal(a, b)
    assert _keras_classes(model) == keras_types
    # No Keras norm is left; each became ours, with the same config.
    assert _keras_classes(converted) == []
    assert type(converted) is type(model)
    originals = [l for l in helpers.all_layers(model) if type(l) in KERAS_NORMS]
    news = {l.name: l for l in helpers.all_layers(converted)}
    assert len(originals) == (6 if kind == "functional" else 4)
    for layer in originals:
        new = news[layer.name]
        assert type(new) is OURS[type(layer)], layer.name
        config = layer.get_config()
        new_config = new.get_config()
        for key, value in config.items():
            if key != "dtype":
                assert new_config[key] == value, (layer.name, key)
    _assert_same_model(model, converted, x)


def test_convert_keeps_other_layers_and_keras_norms_layers():
    x = keras.Input((5,))
    h = L.Dense(4, name="d")(x)
    h = KnLayerNormalization(name="ours")(h)
    h = L.Dropout(0.0)(h)
    model = keras.Model(x, h)
    _randomize(model)
    converted = convert(model)
    assert type(converted.get_layer("ours")) is KnLayerNormalization
    assert type(converted.get_layer("d")) is L.Dense
    assert converted.get_layer("d") is not model.get_layer("d")
    _assert_same_model(model, converted, _x((2, 5)))


def test_convert_shared_layer_stays_shared():
    bn = L.BatchNormalization()
    a, b = keras.Input((3,)), keras.Input((3,))
    model = keras.Model([a, b], [bn(a), bn(b)])
    _randomize(model)
    converted = convert(model)
    norms = [l for l in converted.layers if isinstance(l, KnBatchNormalization)]
    assert len(norms) == 1
    xa, xb = _x((4, 3), 1), _x((4, 3), 2)
    for got, want in zip(
        converted([xa, xb], training=False), model([xa, xb], training=False)
    ):
        np.testing.assert_allclose(to_numpy(got), to_numpy(want), atol=1e-5)


def test_convert_sync_batchnorm():
    inner = keras.Sequential(
        [keras.Input((6,)), KnBatchNormalization(momentum=0.8)], name="inner"
    )
    x = keras.Input((4,))
    h = L.Dense(6)(x)
    h = L.BatchNormalization(scale=False)(h)
    h = inner(h)
    h = L.LayerNormalization()(h)
    h = SyncBatchNormalization(name="already")(h)
    model = keras.Model(x, h)
    _randomize(model)
    before = _snapshot(model)
    converted = convert_sync_batchnorm(model)
    for a, b in zip(_snapshot(model), before):
        np.testing.assert_array_equal(a, b)
    syncs = [
        l
        for l in helpers.all_layers(converted)
        if isinstance(l, KnBatchNormalization)
    ]
    assert len(syncs) == 3
    for layer in syncs:
        assert type(layer) is SyncBatchNormalization
        assert layer.synchronized is True
    assert converted.get_layer("inner").layers[0].momentum == 0.8
    # Only BatchNormalization is converted: the Keras LayerNorm stays.
    assert sum(type(l) is L.LayerNormalization for l in converted.layers) == 1
    # The originals keep their classes.
    assert type(model.get_layer("inner").layers[0]) is KnBatchNormalization
    _assert_same_model(model, converted, _x((5, 4)))


def test_convert_sync_batchnorm_sequential():
    model = keras.Sequential(
        [keras.Input((3, 3, 2)), L.Conv2D(4, 2), L.BatchNormalization(axis=-1)]
    )
    _randomize(model)
    converted = convert_sync_batchnorm(model)
    assert isinstance(converted, keras.Sequential)
    assert type(converted.layers[-1]) is SyncBatchNormalization
    _assert_same_model(model, converted, _x((4, 3, 3, 2)))


@pytest.mark.filterwarnings("ignore:You passed `rms_scaling=True`")
def test_layer_norm_with_rms_scaling_converts_with_its_behaviour():
    model = keras.Sequential(
        [keras.Input((4,)), L.LayerNormalization(rms_scaling=True)]
    )
    converted = convert(model)
    assert type(converted.layers[0]) is KnLayerNormalization
    assert converted.layers[0].rms_scaling is True
    _assert_same_model(model, converted, _x((2, 4)), check_training=False)


class _Subclassed(keras.Model):
    def __init__(self):
        super().__init__(name="my_subclassed")
        self.dense = L.Dense(2)
        self.bn = L.BatchNormalization()

    def call(self, x):
        return self.bn(self.dense(x))


@pytest.mark.parametrize("function", [convert, convert_sync_batchnorm])
def test_refuses_subclassed_unbuilt_and_non_models(function):
    sub = _Subclassed()
    sub(np.zeros((1, 3), "float32"))
    with pytest.raises(ValueError, match="subclassed model 'my_subclassed'"):
        function(sub)
    # A subclassed model nested in a functional one is refused by name too.
    x = keras.Input((3,))
    outer = keras.Model(x, sub(x))
    with pytest.raises(ValueError, match="my_subclassed"):
        function(outer)
    unbuilt = keras.Sequential([L.Dense(2), L.BatchNormalization()])
    with pytest.raises(ValueError, match="not built"):
        function(unbuilt)
    with pytest.raises(TypeError, match="keras.Model"):
        function(L.Dense(2))
