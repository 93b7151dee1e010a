"""fold_batch_norms: BatchNormalization folded into Conv/Dense, or an Affine.

The reference is the original model itself in inference mode
(`model(x, training=False)`), on random moving statistics and affine
parameters; a NumPy check of the Affine layer is independent of Keras.
"""

import os
import tempfile

import keras
import numpy as np
import pytest

import keras_norms as kn
from keras_norms.folding import FoldReport
from keras_norms.folding import batch_norm_scale_and_shift
from keras_norms.folding import fold_batch_norms
from keras_norms.layers.affine import Affine
from keras_norms.layers.batch_normalization import (
    BatchNormalization as KnBatchNormalization,
)
from tests import helpers
from tests.helpers import to_numpy

L = keras.layers
BN_CLASSES = {
    "keras": L.BatchNormalization,
    "keras_norms": KnBatchNormalization,
}


def _randomize_bns(model, seed=0):
    """Random moving statistics (variance > 0) and gamma/beta, by assign."""
    rng = np.random.RandomState(seed)
    for layer in helpers.all_layers(model):
        if isinstance(layer, tuple(BN_CLASSES.values())):
            c = layer.moving_mean.shape
            layer.moving_mean.assign(rng.randn(*c).astype("float32"))
            layer.moving_variance.assign(
                rng.uniform(0.2, 3.0, size=c).astype("float32")
            )
            if layer.scale:
                layer.gamma.assign(rng.randn(*c).astype("float32"))
            if layer.center:
                layer.beta.assign(rng.randn(*c).astype("float32"))


def _weights(model):
    return [to_numpy(w).copy() for w in model.weights]


def _assert_equivalent(model, x, atol=1e-4, **kwargs):
    """Fold, and check outputs, report, and that `model` is untouched."""
    before = _weights(model)
    expected = helpers.infer(model, x)
    folded, report = fold_batch_norms(model, verbose=0, return_report=True)
    got = helpers.infer(folded, x)
    np.testing.assert_allclose(got, expected, atol=atol, rtol=1e-4)
    after = _weights(model)
    assert len(before) == len(after)
    for b, a in zip(before, after):
        np.testing.assert_array_equal(a, b)  # bit-identical
    assert helpers.count_layers(folded, tuple(BN_CLASSES.values())) == 0
    # No weight is shared with the original.
    original_ids = {id(w) for w in model.weights}
    assert not original_ids & {id(w) for w in folded.weights}
    return folded, report


# (constructor, input shape without batch, rank) per foldable kind.
def _kinds(data_format):
    df = {"data_format": data_format}
    cf = data_format == "channels_first"

    def shape(spatial, channels):
        return (channels,) + spatial if cf else spatial + (channels,)

    return {
        "Conv1D": (lambda b: L.Conv1D(3, 3, use_bias=b, **df), shape((7,), 2)),
        "Conv2D": (
            lambda b: L.Conv2D(3, 3, use_bias=b, **df),
            shape((6, 6), 2),
        ),
        "Conv3D": (
            lambda b: L.Conv3D(3, 2, use_bias=b, **df),
            shape((5, 4, 5), 2),
        ),
        "DepthwiseConv2D": (
            lambda b: L.DepthwiseConv2D(
                3, depth_multiplier=2, use_bias=b, **df
            ),
            shape((6, 6), 3),
        ),
        "Conv2DTranspose": (
            lambda b: L.Conv2DTranspose(3, 3, strides=2, use_bias=b, **df),
            shape((4, 4), 2),
        ),
        "Conv3DTranspose": (
            lambda b: L.Conv3DTranspose(3, 2, use_bias=b, **df),
            shape((3, 3, 3), 2),
        ),
        "SeparableConv2D": (
            lambda b: L.SeparableConv2D(
                5, 3, depth_multiplier=2, use_bias=b, **df
            ),
            shape((6, 6), 3),
        ),
    }


CASES = [
    (kind, data_format)
    for kind in _kinds("channels_last")
    for data_format in ("channels_last", "channels_first")
] + [("Dense", "channels_last")]


# Both BN classes, with and without a bias in the layer before.
@pytest.mark.parametrize(
    "bn_class,use_bias", [("keras", False), ("keras_norms", True)]
)
@pytest.mark.parametrize("kind,data_format", CASES)
def test_fold_each_layer_kind(kind, data_format, bn_class, use_bias):
    if kind == "Dense":
        make, shape = (lambda b: L.Dense(5, use_bias=b)), (3, 4)
    else:
        make, shape = _kinds(data_format)[kind]
    axis = 1 if data_format == "channels_first" else -1
    inputs = keras.Input(shape)
    conv = make(use_bias)
    y = BN_CLASSES[bn_class](axis=axis)(conv(inputs))
    model = keras.Model(inputs, y)
    _randomize_bns(model)
    if use_bias:
        conv.bias.assign(np.random.RandomState(3).randn(*conv.bias.shape))
    x = np.random.RandomState(1).randn(2, *shape).astype("float32")
    folded, report = _assert_equivalent(model, x)
    assert [type(l).__name__ for l in folded.layers[1:]] == [kind]
    assert folded.layers[1].use_bias
    assert report.folded == [(model.layers[2].name, conv.name)]
    assert report.affine == []


@pytest.mark.parametrize(
    "center,scale", [(False, False), (True, False), (False, True)]
)
@pytest.mark.parametrize("bn_class", list(BN_CLASSES))
def test_fold_without_center_or_scale(center, scale, bn_class):
    model = keras.Sequential(
        [
            keras.Input((5, 5, 2)),
            L.Conv2D(4, 3, use_bias=False),
            BN_CLASSES[bn_class](center=center, scale=scale, epsilon=0.01),
            L.ReLU(),
        ]
    )
    _randomize_bns(model)
    x = np.random.RandomState(1).randn(3, 5, 5, 2).astype("float32")
    folded, report = _assert_equivalent(model, x)
    assert isinstance(folded, keras.Sequential)
    assert [type(l).__name__ for l in folded.layers] == ["Conv2D", "ReLU"]
    assert len(report.folded) == 1


@pytest.mark.parametrize("use_bias", [False, True])
def test_channels_first_width_equal_to_channels(use_bias):
    """Keras' TF bias add is wrong when the last axis has C entries."""
    model = keras.Sequential(
        [
            keras.Input((2, 6, 6)),
            L.Conv2D(4, 3, use_bias=use_bias, data_format="channels_first"),
            L.BatchNormalization(axis=1),
        ]
    )
    _randomize_bns(model)
    x = np.random.RandomState(1).randn(2, 2, 6, 6).astype("float32")
    folded, report = _assert_equivalent(model, x)
    assert len(report.folded) == (0 if use_bias else 1)
    assert [type(l).__name__ for l in folded.layers] == ["Conv2D", "Affine"]
    assert not folded.layers[0].use_bias or use_bias


def test_fold_matches_the_formula():
    """W' = W * g / sqrt(v + eps), b' = (b - m) * g / sqrt(v + eps) + beta."""
    model = keras.Sequential(
        [keras.Input((3,)), L.Dense(2), L.BatchNormalization(epsilon=0.5)]
    )
    _randomize_bns(model)
    dense, bn = model.layers
    w, b = (to_numpy(v).astype("float64") for v in (dense.kernel, dense.bias))
    g, beta, m, v = (
        to_numpy(t).astype("float64")
        for t in (bn.gamma, bn.beta, bn.moving_mean, bn.moving_variance)
    )
    a = g / np.sqrt(v + 0.5)
    folded = fold_batch_norms(model, verbose=0)
    np.testing.assert_allclose(
        to_numpy(folded.layers[0].kernel), w * a, rtol=1e-6
    )
    np.testing.assert_allclose(
        to_numpy(folded.layers[0].bias),
        (b - m) * a + beta,
        rtol=1e-6,
        atol=1e-7,
    )
    scale, shift = batch_norm_scale_and_shift(bn)
    np.testing.assert_allclose(scale, a)
    np.testing.assert_allclose(shift, beta - m * a)


def test_two_consumers_activation_and_input_become_affine():
    inputs = keras.Input((6, 6, 3))
    a = L.BatchNormalization(name="bn_input")(inputs)  # from a model input
    c = L.Conv2D(4, 3, name="conv_shared_out")(a)
    b = L.BatchNormalization(name="bn_two_consumers")(c)
    y = L.Add()([b, c])  # the conv output has a second consumer
    r = L.Conv2D(4, 1, activation="relu", name="conv_relu")(y)
    r = KnBatchNormalization(name="bn_after_relu")(r)
    d = L.Conv2D(4, 1, name="conv_ok")(r)
    d = KnBatchNormalization(name="bn_folds")(d)
    model = keras.Model(inputs, d)
    _randomize_bns(model)
    x = np.random.RandomState(1).randn(2, 6, 6, 3).astype("float32")
    folded, report = _assert_equivalent(model, x)
    assert report.folded == [("bn_folds", "conv_ok")]
    reasons = dict(report.affine)
    assert set(reasons) == {"bn_input", "bn_two_consumers", "bn_after_relu"}
    assert "model input" in reasons["bn_input"]
    assert "other consumers" in reasons["bn_two_consumers"]
    assert "relu" in reasons["bn_after_relu"]
    assert helpers.count_layers(folded, Affine) == 3
    assert folded.get_layer("bn_input").__class__ is Affine


def test_bn_over_another_axis_becomes_affine():
    """A BN over the rows of a channels-last conv is kept as an Affine."""
    model = keras.Sequential(
        [keras.Input((5, 4, 2)), L.Conv2D(3, 1), L.BatchNormalization(axis=1)]
    )
    _randomize_bns(model)
    x = np.random.RandomState(1).randn(2, 5, 4, 2).astype("float32")
    folded, report = _assert_equivalent(model, x)
    assert report.folded == []
    assert "not the channel axis" in report.affine[0][1]
    assert folded.layers[-1].axis == 1


def test_shared_conv_and_shared_bn_become_affine():
    inputs = keras.Input((4,))
    dense = L.Dense(4)
    bn = L.BatchNormalization()
    y1 = L.BatchNormalization(name="after_shared_dense")(dense(inputs))
    y2 = bn(dense(y1))
    y3 = bn(L.Dense(4)(y2))  # a BN called twice
    model = keras.Model(inputs, y3)
    _randomize_bns(model)
    x = np.random.RandomState(1).randn(3, 4).astype("float32")
    folded, report = _assert_equivalent(model, x)
    assert report.folded == []
    assert len(report.affine) == 2
    assert "more than once" in dict(report.affine)["after_shared_dense"]


def test_nested_models():
    inner = keras.Sequential(
        [keras.Input((6, 6, 2)), L.Conv2D(3, 3), L.BatchNormalization()],
        name="inner_seq",
    )
    inner_inputs = keras.Input((4, 4, 3))
    z = L.BatchNormalization(name="inner_first_bn")(inner_inputs)
    z = L.DepthwiseConv2D(3, depth_multiplier=2, padding="same")(z)
    z = KnBatchNormalization(name="inner_dw_bn")(z)
    inner_fn = keras.Model(inner_inputs, z, name="inner_fn")
    inputs = keras.Input((6, 6, 2))
    y = inner_fn(inner(inputs))
    y = L.GlobalAveragePooling2D()(y)
    y = L.Dense(3)(y)
    y = L.BatchNormalization(name="outer_bn")(y)
    model = keras.Model(inputs, y)
    _randomize_bns(model, seed=5)
    x = np.random.RandomState(1).randn(2, 6, 6, 2).astype("float32")
    folded, report = _assert_equivalent(model, x)
    assert isinstance(folded.get_layer("inner_seq"), keras.Sequential)
    folded_names = {b for b, _ in report.folded}
    assert "outer_bn" in folded_names
    assert "inner_fn/inner_dw_bn" in folded_names
    assert any(b.startswith("inner_seq/") for b in folded_names)
    assert [b for b, _ in report.affine] == ["inner_fn/inner_first_bn"]


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_resnet_like_block(data_format):
    axis = 1 if data_format == "channels_first" else -1
    shape = (3, 8, 8) if axis == 1 else (8, 8, 3)
    df = {"data_format": data_format}
    inputs = keras.Input(shape)
    x = L.Conv2D(4, 3, padding="same", use_bias=False, **df)(inputs)
    x = L.BatchNormalization(axis=axis)(x)
    x = L.ReLU()(x)
    y = L.Conv2D(4, 3, padding="same", use_bias=False, **df)(x)
    y = KnBatchNormalization(axis=axis)(y)
    y = L.Add()([x, y])
    y = L.ReLU()(y)
    y = L.GlobalAveragePooling2D(**df)(y)
    model = keras.Model(inputs, L.Dense(2)(y))
    _randomize_bns(model)
    x = np.random.RandomState(1).randn(2, *shape).astype("float32")
    folded, report = _assert_equivalent(model, x)
    assert len(report.folded) == 2 and report.affine == []


def test_folded_model_saves_and_loads():
    model = keras.Sequential(
        [
            keras.Input((5,)),
            L.BatchNormalization(),
            L.Dense(3),
            KnBatchNormalization(),
        ]
    )
    _randomize_bns(model)
    folded = fold_batch_norms(model, verbose=0)
    x = np.random.RandomState(1).randn(4, 5).astype("float32")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "folded.keras")
        folded.save(path)
        loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(
        to_numpy(loaded(x)), to_numpy(folded(x)), rtol=1e-6, atol=1e-6
    )


def test_affine_layer_against_numpy():
    layer = Affine(axis=1)
    x = np.random.RandomState(0).randn(2, 3, 4).astype("float32")
    layer.build(x.shape)
    scale = np.array([1.0, -2.0, 0.5], "float32")
    offset = np.array([0.1, 0.2, -0.3], "float32")
    layer.scale.assign(scale)
    layer.offset.assign(offset)
    expected = x * scale[None, :, None] + offset[None, :, None]
    np.testing.assert_allclose(to_numpy(layer(x)), expected, rtol=1e-6)
    assert layer.trainable_weights == []
    assert [w.name for w in layer.weights] == ["scale", "offset"]
    config = layer.get_config()
    assert Affine.from_config(config).get_config() == config
    with pytest.raises(TypeError, match=r"Received: axis="):
        Affine(axis="1")


def test_verbose_prints_the_report(capsys):
    model = keras.Sequential(
        [
            keras.Input((3,)),
            L.Dense(2, name="d"),
            L.BatchNormalization(name="bn"),
        ]
    )
    fold_batch_norms(model)
    assert "folded bn -> d" in capsys.readouterr().out
    result = fold_batch_norms(model, verbose=0)
    assert capsys.readouterr().out == ""
    assert isinstance(result, keras.Model)
    _, report = fold_batch_norms(model, verbose=0, return_report=True)
    assert isinstance(report, FoldReport) and "bn -> d" in str(report)


def test_refuses_unbuilt_and_subclassed_models():
    unbuilt = keras.Sequential([L.Dense(2), L.BatchNormalization()])
    with pytest.raises(ValueError, match="not built"):
        fold_batch_norms(unbuilt, verbose=0)

    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = L.Dense(2)
            self.bn = L.BatchNormalization()

        def call(self, x):
            return self.bn(self.dense(x))

    sub = Sub()
    sub(np.zeros((1, 3), "float32"))
    with pytest.raises(ValueError, match="subclassed"):
        fold_batch_norms(sub, verbose=0)
    with pytest.raises(TypeError, match="keras.Model"):
        fold_batch_norms(L.Dense(2), verbose=0)


def test_fold_keeps_a_lambda_layer_without_unsafe_deserialization():
    # Folding copies each kept layer from its config; a Lambda's Python
    # function is the user's own (in memory), so Keras' safe mode, meant
    # for files, must not refuse it.
    model = keras.Sequential(
        [
            keras.Input((6, 6, 3)),
            keras.layers.Conv2D(4, 3),
            kn.BatchNormalization(),
            keras.layers.Lambda(lambda t: t * 2.0 + 1.0),
        ]
    )
    x = helpers.random_input((3, 6, 6, 3), loc=1.0)
    model(x, training=True)
    folded = kn.fold_batch_norms(model)
    assert helpers.count_layers(folded, kn.BatchNormalization) == 0
    np.testing.assert_allclose(
        helpers.infer(folded, x), helpers.infer(model, x), rtol=1e-4, atol=1e-4
    )
    optimized = kn.optimize_for_inference(model)
    np.testing.assert_allclose(
        helpers.infer(optimized, x),
        helpers.infer(model, x),
        rtol=1e-4,
        atol=1e-4,
    )
