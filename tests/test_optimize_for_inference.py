"""optimize_for_inference: the plain-Keras inference form of a model.

References: the original model in inference mode (`model(x,
training=False)`), and for the data Normalization fold a NumPy computation
from the data itself (`np.mean` / `np.var`), independent of Keras.
"""

import warnings

import keras
import numpy as np
import pytest

import keras_norms as kn
from keras_norms import _check
from keras_norms import _float32
from keras_norms import saved_model as kn_export
from keras_norms.inference import InferenceReport
from keras_norms.inference import optimize_for_inference
from keras_norms.layers.affine import Affine
from keras_norms.layers.batch_normalization import (
    BatchNormalization as KnBatchNormalization,
)
from keras_norms.layers.group_normalization import (
    GroupNormalization as KnGroupNormalization,
)
from keras_norms.layers.weight_normalization import WeightNormalization
from keras_norms.layers.weight_standardization import WeightStandardization
from tests import helpers
from tests.helpers import assert_saves_and_loads
from tests.helpers import to_numpy

L = keras.layers
BNS = (L.BatchNormalization, KnBatchNormalization)
# Per-channel means and spreads far from 0 and 1, so a wrong fold shows.
MEAN = np.array([3.0, -1.0, 10.0])
STD = np.array([1.0, 5.0, 0.2])


def _data(shape, seed=0):
    """Channels-last data with per-channel mean MEAN and std STD."""
    rng = np.random.RandomState(seed)
    return (rng.randn(*shape) * STD + MEAN).astype("float32")


def _adapted(data, **kwargs):
    norm = L.Normalization(**kwargs)
    norm.adapt(data)
    return norm


def _randomize_bns(model, seed=0):
    rng = np.random.RandomState(seed)
    for layer in helpers.all_layers(model):
        if isinstance(layer, BNS):
            c = layer.moving_mean.shape
            layer.moving_mean.assign(rng.randn(*c).astype("float32"))
            layer.moving_variance.assign(
                rng.uniform(0.2, 3.0, size=c).astype("float32")
            )
            layer.gamma.assign(rng.randn(*c).astype("float32"))
            layer.beta.assign(rng.randn(*c).astype("float32"))


def _snapshot(model):
    return [to_numpy(w).copy() for w in model.weights]


def _optimize(model, x, rtol=1e-4):
    """Optimize; check outputs, untouched original, no shared weights."""
    before = _snapshot(model)
    expected = helpers.infer(model, x)
    optimized, report = optimize_for_inference(
        model, verbose=0, return_report=True
    )
    got = helpers.infer(optimized, x)
    scale = float(np.max(np.abs(expected)))
    np.testing.assert_allclose(got, expected, atol=rtol * scale, rtol=rtol)
    for a, b in zip(_snapshot(model), before):
        np.testing.assert_array_equal(a, b)
    assert not {id(w) for w in model.weights} & {
        id(w) for w in optimized.weights
    }
    assert helpers.count_layers(optimized, BNS) == 0
    assert (
        helpers.count_layers(
            optimized, (WeightNormalization, WeightStandardization)
        )
        == 0
    )
    assert isinstance(report, InferenceReport)
    return optimized, report


# ----------------------------------------------------------------------
# keras.layers.Normalization
# ----------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["functional", "sequential"])
def test_normalization_folds_into_dense_exactly(kind):
    data = _data((64, 3))
    norm = _adapted(data)
    dense = L.Dense(4, name="d")
    if kind == "sequential":
        model = keras.Sequential([keras.Input((3,)), norm, dense])
    else:
        x = keras.Input((3,))
        model = keras.Model(x, dense(norm(x)))
    optimized, report = _optimize(model, data[:8])
    assert helpers.count_layers(optimized, (Affine, L.Normalization)) == 0
    assert report.folded_forward == [(norm.name, "d")]
    # The folded weights, from NumPy statistics of the data.
    mean, std = data.astype("float64").mean(0), data.astype("float64").std(0)
    w, b = (to_numpy(v).astype("float64") for v in (dense.kernel, dense.bias))
    new = optimized.get_layer("d")
    np.testing.assert_allclose(
        to_numpy(new.kernel), w / std[:, None], rtol=1e-5
    )
    np.testing.assert_allclose(
        to_numpy(new.bias),
        b - np.sum(w * (mean / std)[:, None], axis=0),
        rtol=1e-4,
        atol=1e-4,
    )


@pytest.mark.parametrize(
    "use_bias, data_format",
    [(True, "channels_last"), (False, "channels_first")],
)
def test_normalization_folds_into_valid_conv2d(use_bias, data_format):
    data = _data((6, 7, 7, 3))
    axis, shape = -1, (7, 7, 3)
    if data_format == "channels_first":
        data, axis, shape = data.transpose(0, 3, 1, 2).copy(), 1, (3, 7, 7)
    norm = _adapted(data, axis=axis)
    conv = L.Conv2D(
        5,
        3,
        strides=2,
        padding="valid",
        use_bias=use_bias,
        data_format=data_format,
        name="c",
    )
    x = keras.Input(shape)
    model = keras.Model(x, conv(norm(x)))
    optimized, report = _optimize(model, data[:4])
    assert helpers.count_layers(optimized, (Affine, L.Normalization)) == 0
    assert report.folded_forward == [(norm.name, "c")]
    assert optimized.get_layer("c").use_bias
    per_channel = np.moveaxis(data.astype("float64"), axis, -1).reshape(-1, 3)
    mean, std = per_channel.mean(0), per_channel.std(0)
    w = to_numpy(conv.kernel).astype("float64")  # (3, 3, in, out)
    np.testing.assert_allclose(
        to_numpy(optimized.get_layer("c").kernel),
        w / std[:, None],
        rtol=1e-5,
    )
    b = to_numpy(conv.bias).astype("float64") if use_bias else 0.0
    np.testing.assert_allclose(
        to_numpy(optimized.get_layer("c").bias),
        b - np.sum(w * (mean / std)[:, None], axis=(0, 1, 2)),
        rtol=1e-4,
        atol=1e-4,
    )


def test_no_forward_fold_where_keras_bias_add_is_wrong():
    """Channels-first conv with as many output columns as channels.

    Keras (3.15) on TensorFlow adds such a layer's bias along the last
    axis (see `keras_norms._graph.keras_bias_add_is_wrong`): the fold
    would give it a bias, so the Normalization stays an Affine.
    """
    data = _data((4, 7, 6, 3)).transpose(0, 3, 1, 2).copy()  # (4, 3, 7, 6)
    norm = _adapted(data, axis=1)
    conv = L.Conv2D(4, 3, data_format="channels_first", use_bias=False)
    model = keras.Sequential([keras.Input((3, 7, 6)), norm, conv])
    optimized, report = _optimize(model, data)  # output (4, 4, 5, 4)
    assert (
        helpers.count_layers(optimized, Affine) == 1
        and report.folded_forward == []
    )
    assert "bias add" in report.affine[0][1]


@pytest.mark.parametrize("padding", ["same", "causal"])
def test_normalization_before_padded_conv_stays_affine(padding, tmp_path):
    if padding == "causal":
        data, conv = _data((4, 9, 3)), L.Conv1D(2, 3, padding="causal")
    else:
        data, conv = _data((4, 6, 6, 3)), L.Conv2D(2, 3, padding="same")
    norm = _adapted(data)
    model = keras.Sequential(
        [keras.Input(data.shape[1:]), norm, conv, L.Flatten()]
    )
    optimized, report = _optimize(model, data)
    assert helpers.count_layers(optimized, L.Normalization) == 0
    assert helpers.count_layers(optimized, Affine) == 1
    affine = optimized.layers[0]
    assert isinstance(affine, Affine) and affine.name == norm.name
    np.testing.assert_allclose(
        to_numpy(affine.scale),
        1 / to_numpy(norm.variance).ravel() ** 0.5,
        rtol=1e-5,
    )
    ((name, why),) = report.affine
    assert name == norm.name and f"padding='{padding}'" in why
    assert report.folded_forward == []
    if padding == "same":  # a plain model: saves and loads as .keras
        assert_saves_and_loads(optimized, data, tmp_path)
    # Why: zero padding does not commute with the shift, so the fold that
    # is exact for "valid" padding is wrong at the border here.
    scale = to_numpy(affine.scale).astype("float64")
    offset = to_numpy(affine.offset).astype("float64")
    w = to_numpy(conv.kernel).astype("float64")
    naive = conv.__class__.from_config(conv.get_config())
    naive.build(data.shape)
    naive.kernel.assign((w * scale[:, None]).astype("float32"))
    naive.bias.assign(
        (
            to_numpy(conv.bias)
            + np.sum(w * offset[:, None], axis=tuple(range(w.ndim - 1)))
        ).astype("float32")
    )
    wrong = to_numpy(naive(data))
    right = to_numpy(conv(norm(data)))
    assert np.max(np.abs(wrong - right)) > 1e-2


def test_normalization_other_forms():
    data = _data((32, 4, 3))
    # invert=True: x * std + mean, folded into the Dense after it.
    inverse = _adapted(data, invert=True)
    model = keras.Sequential([keras.Input((4, 3)), inverse, L.Dense(2)])
    optimized, report = _optimize(model, data[:4])
    assert (
        len(report.folded_forward) == 1
        and helpers.count_layers(optimized, Affine) == 0
    )
    # Statistics over two axes (per position and channel): kept as it is.
    per_position = _adapted(data, axis=(1, 2))
    model = keras.Sequential([keras.Input((4, 3)), per_position, L.Dense(2)])
    optimized, report = _optimize(model, data[:4])
    assert helpers.count_layers(optimized, L.Normalization) == 1
    assert [n for n, _ in report.kept] == [per_position.name]
    # The kept copy computes with the adapted statistics (Keras'
    # `set_weights` alone would leave it at mean 0, variance 1).
    copy = optimized.layers[0]
    np.testing.assert_allclose(
        to_numpy(copy(data[:2])), to_numpy(per_position(data[:2])), rtol=1e-6
    )


# ----------------------------------------------------------------------
# WeightNormalization / WeightStandardization, with BatchNormalization
# ----------------------------------------------------------------------
def test_wn_and_ws_unwrapped_and_bn_folds_into_them():
    data = _data((4, 8, 8, 3))
    x = keras.Input((8, 8, 3))
    h = _adapted(data)(x)
    h = WeightNormalization(L.Conv2D(4, 3), name="wn")(h)
    h = L.BatchNormalization(name="bn1")(h)
    h = L.ReLU()(h)
    h = WeightStandardization(L.Conv2D(5, 3, padding="same"), name="ws")(h)
    h = KnBatchNormalization(name="bn2")(h)
    h = KnGroupNormalization(groups=5)(h)
    h = L.Flatten()(h)
    h = WeightNormalization(L.Dense(3, activation="tanh"), name="wn_dense")(h)
    model = keras.Model(x, h)
    _randomize_bns(model)
    for layer in model.layers:  # a gain away from its initial ||v||
        if isinstance(layer, WeightNormalization):
            layer.g.assign(to_numpy(layer.g) * 1.7)
    optimized, report = _optimize(model, data)
    types = [type(layer) for layer in optimized.layers]
    assert types.count(L.Conv2D) == 2 and types.count(L.Dense) == 1
    assert KnGroupNormalization in types  # kept: a single-pass norm
    assert helpers.count_layers(optimized, (Affine, L.Normalization)) == 0
    assert sorted(report.unwrapped) == [
        ("wn", "WeightNormalization"),
        ("wn_dense", "WeightNormalization"),
        ("ws", "WeightStandardization"),
    ]
    assert sorted(report.folded) == [("bn1", "wn"), ("bn2", "ws")]
    assert optimized.get_layer("wn_dense").activation is not None
    # The unwrapped layer holds the wrapper's effective kernel.
    wn = model.get_layer("wn_dense")
    kernel, _ = wn.effective_kernel_and_bias()
    np.testing.assert_allclose(
        to_numpy(optimized.get_layer("wn_dense").kernel),
        to_numpy(kernel),
        rtol=1e-6,
    )


def test_bn_after_activation_folds_forward_into_valid_conv():
    x = keras.Input((6, 6, 2))
    h = L.Conv2D(3, 3, activation="relu")(x)
    h = L.BatchNormalization(name="bn")(h)  # cannot fold backward
    h = L.Conv2D(4, 2, name="next")(h)  # valid: it folds forward
    model = keras.Model(x, h)
    _randomize_bns(model)
    data = np.random.RandomState(0).randn(3, 6, 6, 2).astype("float32")
    optimized, report = _optimize(model, data)
    assert helpers.count_layers(optimized, Affine) == 0
    assert report.folded_forward == [("bn", "next")]
    assert report.affine == []


def test_nested_and_sequential_models():
    data = _data((8, 3))
    inner = keras.Sequential(
        [
            keras.Input((3,)),
            _adapted(data),
            WeightNormalization(L.Dense(4), data_init=True, name="inner_wn"),
            L.BatchNormalization(name="inner_bn"),
        ],
        name="inner",
    )
    x = keras.Input((3,))
    h = inner(x)
    h = L.LayerNormalization()(h)
    h = L.Dense(2)(h)
    model = keras.Model(x, h)
    model(data, training=True)  # the data-dependent init of inner_wn
    _randomize_bns(model)
    wn = inner.get_layer("inner_wn")
    assert float(to_numpy(wn.data_initialized)) == 1.0
    assert np.max(np.abs(to_numpy(wn.g_offset))) > 0.1
    optimized, report = _optimize(model, data)
    new_inner = optimized.get_layer("inner")
    assert isinstance(new_inner, keras.Sequential)
    assert [type(layer) for layer in new_inner.layers] == [L.Dense]
    assert ("inner/inner_bn", "inner/inner_wn") in report.folded
    assert ("inner/inner_wn", "WeightNormalization") in report.unwrapped
    assert len(report.folded_forward) == 1
    assert report.folded_forward[0][1] == "inner/inner_wn"


def test_report_printing_and_verbose(capsys):
    data = _data((8, 3))
    model = keras.Sequential([keras.Input((3,)), _adapted(data), L.Dense(2)])
    optimize_for_inference(model)
    assert "folded" in capsys.readouterr().out
    result = optimize_for_inference(model, verbose=0)
    assert capsys.readouterr().out == "" and isinstance(result, keras.Model)
    with pytest.raises(ValueError, match="Received: verbose="):
        optimize_for_inference(model, verbose=3)


class _Subclassed(keras.Model):
    def __init__(self):
        super().__init__(name="my_subclassed")
        self.dense = L.Dense(2)

    def call(self, x):
        return self.dense(x)


def test_refuses_subclassed_and_unbuilt_models():
    sub = _Subclassed()
    sub(np.zeros((1, 3), "float32"))
    with pytest.raises(ValueError, match="subclassed model 'my_subclassed'"):
        optimize_for_inference(sub, verbose=0)
    x = keras.Input((3,))
    outer = keras.Model(x, sub(x), name="outer")
    with pytest.raises(ValueError, match="'outer'.*'my_subclassed'"):
        optimize_for_inference(outer, verbose=0)
    unbuilt = keras.Sequential([L.Dense(2)])
    with pytest.raises(ValueError, match="not built"):
        optimize_for_inference(unbuilt, verbose=0)


# ----------------------------------------------------------------------
# The result is a plain Keras model
# ----------------------------------------------------------------------
def test_quantize_int8_after_optimize():
    data = _data((16, 3))
    model = keras.Sequential(
        [
            keras.Input((3,)),
            _adapted(data),
            WeightNormalization(L.Dense(32)),
            L.BatchNormalization(),
            L.ReLU(),
            L.Dense(4),
        ]
    )
    _randomize_bns(model)
    optimized = optimize_for_inference(model, verbose=0)
    expected = to_numpy(optimized(data))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "ReLU has no `quantize` method"
        optimized.quantize("int8")
    dense = [l for l in optimized.layers if isinstance(l, L.Dense)]
    assert len(dense) == 2
    assert all(l.quantization_mode == "int8" for l in dense)
    got = to_numpy(optimized(data))
    # int8 weights and activations: close, not equal.
    err = np.max(np.abs(got - expected)) / np.max(np.abs(expected))
    assert 0 < err < 0.05


def test_export_uses_optimize_for_inference(monkeypatch, tmp_path):
    """`export_saved_model(fold=True)` exports the optimized model."""
    exported = []

    def capture(model, directory, jit_compile, inputs):
        exported.append(model)
        return [to_numpy(model(inputs[0], training=False))]

    monkeypatch.setattr(kn_export, "_write_and_run", capture)
    data = _data((8, 3))
    model = keras.Sequential(
        [keras.Input((3,)), _adapted(data), WeightNormalization(L.Dense(2))]
    )
    kn_export.export_saved_model(model, tmp_path / "m", fold=True, verbose=0)
    kn_export.export_saved_model(
        model, tmp_path / "m", fold=False, overwrite=True, verbose=0
    )
    folded, unfolded = exported
    assert [type(layer) for layer in folded.layers] == [L.Dense]
    assert unfolded is model


# ----------------------------------------------------------------------
# Mixed precision: the check's tolerance follows the compute dtype
# ----------------------------------------------------------------------
# The spacing of floats at 1, from the format's mantissa bits (not from
# keras_norms): float16 has 10, bfloat16 7.
EPS = {"mixed_float16": 2.0**-10, "mixed_bfloat16": 2.0**-7}


def _conv_bn(policy=None, per_layer=False, seed=0):
    """Conv-BN-ReLU-pool-Dense, in `policy` globally or per layer."""
    dtype = policy if per_layer else None
    previous = keras.config.dtype_policy()
    if policy is not None and not per_layer:
        keras.config.set_dtype_policy(policy)
    try:
        inputs = keras.Input((8, 8, 3))
        x = L.Conv2D(8, 3, padding="same", dtype=dtype)(inputs)
        x = L.BatchNormalization(dtype=dtype)(x)
        x = L.ReLU(dtype=dtype)(x)
        x = L.GlobalAveragePooling2D(dtype=dtype)(x)
        model = keras.Model(inputs, L.Dense(3, dtype=dtype)(x))
    finally:
        keras.config.set_dtype_policy(previous)
    _randomize_bns(model, seed)
    return model


@pytest.mark.parametrize("per_layer", [False, True])
@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_check_follows_compute_dtype(policy, per_layer):

    model = _conv_bn(policy, per_layer)
    x = helpers.random_input((4, 8, 8, 3))
    new, report = optimize_for_inference(
        model, verbose=0, return_report=True, sample=x
    )
    assert report.folded and report.check.passed
    expected = to_numpy(model(x, training=False)).astype("float64")
    # 16 eps of the compute dtype, absolute and relative to the output.
    eps = EPS[policy]
    ((diff, tolerance),) = report.check.figures
    np.testing.assert_allclose(
        tolerance, 16 * eps * (1 + np.max(np.abs(expected))), rtol=1e-12
    )
    got = to_numpy(new(x, training=False)).astype("float64")
    assert diff == np.max(np.abs(got - expected)) <= tolerance
    # The folded model computes in the model's dtype, as the original.
    assert _check.compute_dtype(new) == policy.removeprefix("mixed_")


def test_float32_check_unchanged():
    model = _conv_bn()
    x = helpers.random_input((4, 8, 8, 3))
    _, report = optimize_for_inference(
        model, verbose=0, return_report=True, sample=x
    )
    expected = to_numpy(model(x, training=False)).astype("float64")
    ((_, tolerance),) = report.check.figures
    np.testing.assert_allclose(
        tolerance, 1e-5 + 1e-4 * np.max(np.abs(expected)), rtol=1e-12
    )


def test_mixed_precision_check_catches_a_wrong_fold(monkeypatch):
    # A bias lost in the fold is off by far more than 16 float16 eps.
    from keras_norms import folding

    model = _conv_bn("mixed_float16")
    real = folding.fold_batch_norms

    def lose_a_bias(*args, **kwargs):
        new, report = real(*args, **kwargs)
        for layer in new.layers:
            if isinstance(layer, L.Conv2D):
                layer.bias.assign(layer.bias.numpy() + 0.5)
        return new, report

    monkeypatch.setattr(folding, "fold_batch_norms", lose_a_bias)
    with pytest.raises(ValueError, match="differs from the original"):
        optimize_for_inference(model, verbose=0)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_float32_copy_of_a_mixed_model(policy):

    model = _conv_bn(policy)
    copy = _float32.float32_copy(model)
    assert _check.compute_dtype(copy) == "float32"
    assert all(
        layer.compute_dtype == "float32"
        for layer in copy.layers
        if not isinstance(layer, L.InputLayer)
    )
    for a, b in zip(model.get_weights(), copy.get_weights()):
        np.testing.assert_array_equal(np.asarray(a, "float32"), b)
    # The original keeps its policy; the copy differs from it by the
    # original's own rounding only.
    assert model.layers[1].dtype_policy.name == policy
    x = helpers.random_input((4, 8, 8, 3))
    want = to_numpy(model(x, training=False)).astype("float64")
    got = to_numpy(copy(x, training=False))
    assert got.dtype == np.float32
    assert np.max(np.abs(got - want)) <= 16 * EPS[policy] * (
        1 + np.max(np.abs(want))
    )


# ----------------------------------------------------------------------
# Inputs as a structure: a dict, a nested structure
# ----------------------------------------------------------------------
def _dict_model(nested=False):
    """Two inputs of one shape (a swap changes the output), keys sorted
    otherwise than inserted; `nested`: {"z": {"y": ..., "x": ...}, ...}."""
    z = keras.Input((6, 6, 3), name="z")
    a = keras.Input((6, 6, 3), name="a")
    x = L.Conv2D(4, 3)(z)
    x = L.BatchNormalization()(x)
    y = L.Conv2D(4, 3)(a * 3.0)
    x = L.GlobalAveragePooling2D()(L.Concatenate()([x, y]))
    outputs = L.Dense(3)(x)
    if nested:
        w = keras.Input((5,), name="w")
        outputs = outputs + L.Dense(3)(w)
        model = keras.Model({"z": z, "inner": {"w": w, "a": a}}, outputs)
    else:
        model = keras.Model({"z": z, "a": a}, outputs)
    _randomize_bns(model)
    return model


@pytest.mark.parametrize("nested", [False, True])
def test_dict_inputs_sample_and_check(nested):

    model = _dict_model(nested)
    sample = _check.sample_batch(model)
    assert isinstance(sample, dict) and set(sample) == set(
        ["z", "inner"] if nested else ["z", "a"]
    )
    leaves = keras.tree.flatten(sample)
    assert [x.shape for x in leaves] == [
        (4,) + tuple(x.shape[1:]) for x in model.inputs
    ]
    new, report = optimize_for_inference(model, verbose=0, return_report=True)
    assert report.folded and report.check.passed
    # The check would see a swap of the two same-shaped inputs.
    swapped = dict(sample)
    if nested:
        swapped["inner"] = dict(sample["inner"], a=sample["z"])
        swapped["z"] = sample["inner"]["a"]
    else:
        swapped["a"], swapped["z"] = sample["z"], sample["a"]
    want = to_numpy(model(sample, training=False))
    assert np.max(np.abs(to_numpy(new(swapped, training=False)) - want)) > 0.1
    np.testing.assert_allclose(
        to_numpy(new(sample, training=False)), want, atol=1e-5, rtol=1e-4
    )


def test_weights_changing_during_the_check_are_named(monkeypatch):
    # A model trained in another thread while it is exported: its weights
    # change between the reference outputs and the rewrite. The error must
    # say so, not blame the fold.
    from keras_norms import _inference_rewrite
    from keras_norms.inference import OutputMismatchError

    model = keras.Sequential(
        [
            keras.Input((6, 6, 3)),
            keras.layers.Conv2D(4, 3),
            kn.BatchNormalization(),
            keras.layers.Flatten(),
            keras.layers.Dense(2),
        ]
    )
    real = _inference_rewrite.rewrite

    def a_training_step_then_rewrite(m):
        kernel = m.layers[-1].kernel
        kernel.assign(kernel.value * 1.5 + 0.1)
        return real(m)

    monkeypatch.setattr(
        _inference_rewrite, "rewrite", a_training_step_then_rewrite
    )
    with pytest.raises(OutputMismatchError, match="changed while it was"):
        kn.optimize_for_inference(model, verbose=0)
    with pytest.raises(OutputMismatchError, match="weights changed during"):
        kn.optimize_for_inference(model, verbose=0)
