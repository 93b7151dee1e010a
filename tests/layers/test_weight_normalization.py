"""WeightNormalization: against the plain wrapped layer with a kernel
`g * v / ||v||` and NumPy (gradients by central finite differences), the
data-dependent init, on every backend; plus the shared checks
(tests/layer_checks.py).

Elsewhere: the channels-first convolution fallback in
tests/test_channels_first.py.
"""

import keras
import numpy as np
import pytest

import keras_norms as kn
from tests import helpers
from tests import layer_checks
from tests.helpers import to_numpy
from tests.layers._common import assign
from tests.layers._common import check_against_numpy


class TestSharedChecks(layer_checks.LayerChecks):
    cases = {
        "conv2d_data_init": layer_checks.Case(
            lambda: kn.WeightNormalization(
                keras.layers.Conv2D(4, 3, padding="same"), data_init=True
            ),
            (2, 3, 3, 4),
            state=("data_initialized", "g_offset", "bias_offset"),
            mixed_tolerance=layer_checks.WRAPPER_MIXED_TOLERANCE,
        ),
        "dense": layer_checks.Case(
            lambda: kn.WeightNormalization(keras.layers.Dense(3)),
            (6, 5),
            mixed_tolerance=layer_checks.WRAPPER_MIXED_TOLERANCE,
            fit=False,
        ),
    }
    test_weights_match_keras_twin = None  # keras.layers has no WN
    # The data-dependent init has no gradient on an empty batch.
    empty_batch_gradients = False
    # A wrapped Dense passes the mask on, as a plain one does.
    masking = layer_checks.Masking(
        lambda: kn.WeightNormalization(keras.layers.Dense(3)), (4, 6, 3)
    )


def test_masks_flow_as_through_the_wrapped_layer():
    for inner in (keras.layers.Dense(3), keras.layers.Conv1D(3, 2)):
        wrapped = kn.WeightNormalization(inner)
        assert wrapped.supports_masking == inner.supports_masking


def _wn_cases():
    return {
        "dense": (lambda: keras.layers.Dense(4), (6, 5)),
        "conv1d_causal": (
            lambda: keras.layers.Conv1D(
                3, 3, padding="causal", dilation_rate=2
            ),
            (2, 7, 2),
        ),
        "conv2d_nchw": (
            lambda: keras.layers.Conv2D(
                3, 2, strides=2, data_format="channels_first"
            ),
            (2, 2, 6, 8),
        ),
        "conv3d": (
            lambda: keras.layers.Conv3D(2, 2, padding="same"),
            (1, 3, 3, 3, 2),
        ),
    }


@pytest.mark.parametrize("case", list(_wn_cases()))
def test_wn_equals_plain_layer_at_init_and_after_changing_g(case):
    make, shape = _wn_cases()[case]
    x = helpers.random_input(shape)
    inner = make()
    wn = kn.WeightNormalization(inner)
    y = to_numpy(wn(x))
    inner.bias.assign(np.linspace(-1, 1, inner.bias.shape[0]).astype("float32"))
    y = to_numpy(wn(x))
    np.testing.assert_allclose(y, helpers.infer(inner, x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        to_numpy(wn.g),
        np.sqrt(
            (to_numpy(inner.kernel) ** 2)
            .reshape(-1, inner.kernel.shape[-1])
            .sum(0)
        ),
        rtol=1e-6,
    )
    # w = g * v / ||v||, norm over all kernel axes but the last.
    g = np.linspace(0.5, 2.0, wn.g.shape[0]).astype("float32")
    wn.g.assign(g)
    v = to_numpy(inner.kernel).astype("float64")
    norm = np.sqrt((v**2).sum(axis=tuple(range(v.ndim - 1)), keepdims=True))
    w = g * v / norm
    plain = make()
    plain.build(shape)
    plain.kernel.assign(w.astype("float32"))
    plain.bias.assign(to_numpy(inner.bias))
    np.testing.assert_allclose(
        to_numpy(wn(x)), helpers.infer(plain, x), rtol=1e-5, atol=1e-5
    )
    kernel, bias = wn.effective_kernel_and_bias()
    np.testing.assert_allclose(to_numpy(kernel), w, rtol=1e-5, atol=1e-6)


def test_wn_gradients_match_numpy():
    x = helpers.random_input((6, 4))
    wn = kn.WeightNormalization(keras.layers.Dense(3))
    wn.build(x.shape)
    rng = np.random.RandomState(4)
    params = {
        "g": rng.uniform(0.5, 1.5, 3),
        "kernel": rng.randn(4, 3),
        "bias": rng.randn(3),
    }
    assign(wn, g=params["g"])
    assign(wn.layer, kernel=params["kernel"], bias=params["bias"])
    params = {k: v.astype("float32") for k, v in params.items()}

    def ref(x, g, kernel, bias):
        return x @ (g * kernel / np.sqrt((kernel**2).sum(0))) + bias

    check_against_numpy(wn, x, ref, params)


@pytest.mark.parametrize("case", ["dense", "conv2d_nchw"])
def test_wn_data_init_normalizes_first_batch_once(case):
    make, shape = _wn_cases()[case]
    shape = (16,) + shape[1:]
    x = helpers.random_input(shape, loc=2.0, scale=3.0)
    unit_axis = 1 if "nchw" in case else -1
    wn = kn.WeightNormalization(make(), data_init=True)
    y = to_numpy(wn(x, training=False))  # builds; no init at inference
    assert float(to_numpy(wn.data_initialized)) == 0.0
    y = to_numpy(wn(x, training=True))
    axes = tuple(a for a in range(y.ndim) if a != unit_axis % y.ndim)
    np.testing.assert_allclose(y.mean(axis=axes), 0.0, atol=1e-4)
    np.testing.assert_allclose(y.std(axis=axes), 1.0, atol=1e-4)
    assert float(to_numpy(wn.data_initialized)) == 1.0
    # The init persists and happens once: a second batch is not re-normalized.
    np.testing.assert_allclose(to_numpy(wn(x, training=False)), y, atol=1e-4)
    y2 = to_numpy(wn(3.0 * x + 1.0, training=True))
    assert np.abs(y2.mean(axis=axes)).max() > 0.5


def test_wn_data_init_inside_fit():
    """The init survives a compiled train step (JAX drops trainable assigns)."""
    x = helpers.random_input((32, 5), loc=2.0, scale=3.0)
    wn = kn.WeightNormalization(keras.layers.Dense(3), data_init=True)
    model = keras.Sequential([keras.Input((5,)), wn])
    model.compile(keras.optimizers.SGD(0.0), "mse")
    model.fit(x, np.zeros((32, 3)), batch_size=32, epochs=1, verbose=0)
    y = to_numpy(model(x, training=False))
    np.testing.assert_allclose(y.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(y.std(0), 1.0, atol=1e-4)


def test_wn_data_init_flag_survives_fit_and_saving(tmp_path):
    """A channels-first convolution learns g and v in fit; the loaded
    data_init layer keeps its flag and offsets: it will not re-initialize."""
    model = keras.Sequential(
        [
            keras.Input((2, 6, 6)),
            kn.WeightNormalization(
                keras.layers.Conv2D(
                    4, 3, padding="same", data_format="channels_first"
                ),
                data_init=True,
                name="wn",
            ),
            keras.layers.GlobalAveragePooling2D(data_format="channels_first"),
            keras.layers.Dense(1),
        ]
    )
    wn = model.get_layer("wn")
    before = {"g": to_numpy(wn.g), "v": to_numpy(wn.layer.kernel)}
    model.compile(keras.optimizers.SGD(0.1), "mse")
    x = np.ascontiguousarray(
        np.moveaxis(helpers.random_input((8, 6, 6, 2), loc=1.0), -1, 1)
    )
    y = helpers.random_input((8, 1), seed=1)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    after = {"g": to_numpy(wn.g), "v": to_numpy(wn.layer.kernel)}
    for name in before:
        assert np.abs(after[name] - before[name]).max() > 1e-7, name
    assert float(to_numpy(wn.data_initialized)) == 1.0
    loaded = layer_checks.check_saves_and_loads(model, x, tmp_path)
    np.testing.assert_array_equal(
        to_numpy(loaded.get_layer("wn").g_offset), to_numpy(wn.g_offset)
    )
    assert float(to_numpy(loaded.get_layer("wn").data_initialized)) == 1.0


def test_weight_normalization_data_init_waits_for_a_non_empty_batch():
    x = helpers.random_input((6, 5), seed=6)

    def fresh():
        layer = kn.WeightNormalization(keras.layers.Dense(3), data_init=True)
        layer.build(x.shape)
        return layer

    layer, reference = fresh(), fresh()
    layer.set_weights(reference.get_weights())
    layer(x[:0], training=True)
    assert float(helpers.to_numpy(layer.data_initialized)) == 0.0
    for w in (layer.g_offset, layer.bias_offset):
        np.testing.assert_array_equal(helpers.to_numpy(w), 0.0)
    # The first batch holding samples initializes it, as if the empty one
    # never came.
    y = helpers.to_numpy(layer(x, training=True))
    y_ref = helpers.to_numpy(reference(x, training=True))
    np.testing.assert_allclose(y, y_ref, atol=1e-6)
    assert float(helpers.to_numpy(layer.data_initialized)) == 1.0
    np.testing.assert_allclose(y.mean(axis=0), 0.0, atol=1e-5)


def test_config_round_trips_keep_the_wrapped_layer():
    layer_checks.check_config_round_trip(
        kn.WeightNormalization(
            keras.layers.Conv2D(3, 2, activation="relu"),
            data_init=True,
            name="wn_conv",
        )
    )
    clone = layer_checks.check_config_round_trip(
        kn.WeightNormalization(keras.layers.Dense(3, use_bias=False))
    )
    assert isinstance(clone.layer, keras.layers.Dense)
    assert clone.layer.units == 3


@pytest.mark.parametrize(
    "make,shape,bad,message", layer_checks.WRONG_RANK_CASES
)
def test_wrong_rank_input_same_message_as_the_wrapped_layer(
    make, shape, bad, message
):
    # Issue 21, item 9: checked with the wrapped layer's input spec, as
    # WeightStandardization (which calls the wrapped layer) does.
    layer_checks.check_wrong_rank_message(
        kn.WeightNormalization, make, shape, bad, message
    )


def test_bad_arguments_raise_clearly():
    with pytest.raises(TypeError, match="conv2d_transpose"):
        kn.WeightNormalization(keras.layers.Conv2DTranspose(2, 3))
    with pytest.raises(TypeError, match="kernel"):
        kn.WeightNormalization(keras.layers.LayerNormalization())
    with pytest.raises(TypeError, match="Received: layer='dense'"):
        kn.WeightNormalization("dense")
    with pytest.raises(TypeError, match="Received: data_init="):
        kn.WeightNormalization(keras.layers.Dense(2), data_init="yes")
    with pytest.raises(ValueError, match="use_bias=False"):
        kn.WeightNormalization(
            keras.layers.Dense(2, use_bias=False), data_init=True
        )(np.ones((2, 3), "float32"))
