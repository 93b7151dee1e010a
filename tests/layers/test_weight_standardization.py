"""WeightStandardization: against the plain wrapped layer with a kernel
standardized in NumPy, and torch autograd for the gradients, on every
backend; plus the shared checks (tests/layer_checks.py)."""

import keras
import numpy as np
import pytest

import keras_norms as kn
from tests import helpers
from tests import layer_checks

torch = pytest.importorskip("torch")

# Float32 layers against float64 references.
TOL = dict(rtol=2e-4, atol=2e-4)


class TestSharedChecks(layer_checks.LayerChecks):
    cases = {
        "conv2d": layer_checks.Case(
            lambda: kn.WeightStandardization(
                keras.layers.Conv2D(4, 3, padding="same", use_bias=False)
            ),
            (2, 3, 3, 4),
            mixed_tolerance=layer_checks.WRAPPER_MIXED_TOLERANCE,
        ),
        "dense": layer_checks.Case(
            lambda: kn.WeightStandardization(
                keras.layers.Dense(3), epsilon=1e-5
            ),
            (5, 4),
            mixed_tolerance=layer_checks.WRAPPER_MIXED_TOLERANCE,
            fit=False,
        ),
    }
    test_weights_match_keras_twin = None  # keras.layers has no WS


WS_CASES = [
    (lambda: keras.layers.Dense(3, activation="tanh"), (5, 4)),
    (lambda: keras.layers.Dense(2, use_bias=False), (2, 3, 6)),
    (
        lambda: keras.layers.Conv1D(3, 3, padding="causal", dilation_rate=2),
        (2, 7, 4),
    ),
    (
        lambda: keras.layers.Conv2D(
            4, 3, strides=2, padding="same", activation="relu"
        ),
        (2, 6, 6, 3),
    ),
    (
        lambda: keras.layers.Conv2D(3, 2, data_format="channels_first"),
        (2, 2, 5, 5),
    ),
    (lambda: keras.layers.Conv3D(2, 2), (1, 3, 4, 3, 2)),
]


def _standardize_numpy(kernel, eps):
    k = kernel.astype("float64")
    axes = tuple(range(k.ndim - 1))
    mean = k.mean(axis=axes, keepdims=True)
    var = ((k - mean) ** 2).mean(axis=axes, keepdims=True)
    return (k - mean) / np.sqrt(var + eps)


def _plain_copy(layer, input_shape, kernel, bias):
    plain = type(layer).from_config(layer.get_config())
    plain.build(input_shape)
    plain.kernel.assign(kernel.astype("float32"))
    if bias is not None:
        plain.bias.assign(bias)
    return plain


@pytest.mark.parametrize("make,shape", WS_CASES)
def test_ws_matches_plain_layer_with_numpy_standardized_kernel(make, shape):
    eps = 1e-6
    ws = kn.WeightStandardization(make(), epsilon=eps)
    ws.build(shape)
    # A kernel with a large mean and spread per unit, a bias that matters.
    rng = np.random.RandomState(2)
    kernel = 3.0 + 2.0 * rng.randn(*ws.layer.kernel.shape)
    ws.layer.kernel.assign(kernel.astype("float32"))
    bias = None
    if ws.layer.bias is not None:
        bias = rng.randn(*ws.layer.bias.shape).astype("float32")
        ws.layer.bias.assign(bias)
    w_hat = _standardize_numpy(helpers.to_numpy(ws.layer.kernel), eps)
    np.testing.assert_allclose(
        helpers.to_numpy(ws.standardized_kernel()), w_hat, rtol=1e-5, atol=1e-5
    )
    plain = _plain_copy(ws.layer, shape, w_hat, bias)
    x = helpers.random_input(shape)
    expected = helpers.infer(plain, x)
    np.testing.assert_allclose(helpers.infer(ws, x), expected, **TOL)
    if getattr(ws.layer, "data_format", None) == "channels_first":
        helpers.skip_without_channels_first_conv()
    # The same through stateless_call with autodiff (as in a train step).
    up = helpers.random_input(expected.shape, seed=8)
    y, _, grads = helpers.forward_and_grads(ws, x, up, training=True)
    np.testing.assert_allclose(y, expected, **TOL)
    # w_hat does not change when a unit's weights are shifted or scaled, so
    # the kernel gradient per unit sums to 0 and is orthogonal to w - mean.
    g = grads["kernel"].astype("float64")
    axes = tuple(range(g.ndim - 1))
    assert np.abs(g).max() > 1e-3
    np.testing.assert_allclose(g.sum(axis=axes), 0.0, atol=1e-4)
    centered = kernel - kernel.mean(axis=axes, keepdims=True)
    np.testing.assert_allclose((g * centered).sum(axis=axes), 0.0, atol=2e-3)


def test_ws_dense_grads_match_torch():
    eps = 1e-6
    ws = kn.WeightStandardization(keras.layers.Dense(3), epsilon=eps)
    ws.build((6, 5))
    helpers.set_random_weights(ws)
    kernel = helpers.to_numpy(ws.layer.kernel)
    bias = helpers.to_numpy(ws.layer.bias)
    x = helpers.random_input((6, 5), loc=1.0)
    up = helpers.random_input((6, 3), seed=9)
    y, dx, grads = helpers.forward_and_grads(ws, x, up)

    def fn(t, kernel, bias):
        mean = kernel.mean(dim=0, keepdim=True)
        var = ((kernel - mean) ** 2).mean(dim=0, keepdim=True)
        return t @ ((kernel - mean) / torch.sqrt(var + eps)) + bias

    ry, rdx, rgrads = helpers.torch_reference(
        fn, x, {"kernel": kernel, "bias": bias}, up, 1
    )
    np.testing.assert_allclose(y, ry, **TOL)
    np.testing.assert_allclose(dx, rdx, **TOL)
    np.testing.assert_allclose(grads["kernel"], rgrads["kernel"], **TOL)
    np.testing.assert_allclose(grads["bias"], rgrads["bias"], **TOL)


def test_ws_without_bias_holds_only_the_kernel():
    # The shared `conv2d` case fits and saves this configuration.
    ws = kn.WeightStandardization(keras.layers.Conv2D(4, 3, use_bias=False))
    ws.build((8, 6, 6, 2))
    assert [w.name for w in ws.weights] == ["kernel"]


def test_ws_activity_regularizer_counted_once():
    x = helpers.random_input((8, 5))
    zeros = np.zeros((8, 2), "float32")
    models = []
    for reg in (None, "l2"):
        models.append(
            keras.Sequential(
                [
                    keras.Input((5,)),
                    kn.WeightStandardization(
                        keras.layers.Dense(2, activity_regularizer=reg)
                    ),
                ]
            )
        )
        models[-1].compile(optimizer="sgd", loss="mse")
    models[1].set_weights(models[0].get_weights())
    out = helpers.to_numpy(models[0](x))
    expected = 0.01 * np.sum(out**2) / len(x)  # l2(0.01), per sample
    # Eager call: the loss is collected once.
    models[1](x)
    assert len(models[1].losses) == 1
    np.testing.assert_allclose(
        helpers.to_numpy(models[1].losses[0]), expected, rtol=1e-4
    )
    # Compiled evaluate (JAX: inside the trainer's stateless scope).
    difference = models[1].evaluate(x, zeros, verbose=0) - models[0].evaluate(
        x, zeros, verbose=0
    )
    np.testing.assert_allclose(difference, expected, rtol=1e-4)


def test_ws_config_round_trip():
    ws = kn.WeightStandardization(
        keras.layers.Conv2D(3, 2, name="c"), epsilon=1e-10
    )
    config = ws.get_config()
    clone = kn.WeightStandardization.from_config(config)
    assert clone.get_config() == config  # the config dict was not consumed
    assert clone.epsilon == 1e-10 and clone.layer.name == "c"


@pytest.mark.parametrize(
    "layer,match",
    [
        (keras.layers.DepthwiseConv2D(3, name="dw"), "not support.*'dw'"),
        (keras.layers.Conv2DTranspose(2, 3, name="tr"), "not support.*'tr'"),
        (keras.layers.SeparableConv2D(2, 3, name="sep"), "not support.*'sep'"),
        (keras.layers.Dropout(0.5, name="drop"), "'drop'.*no `kernel`"),
        (keras.layers.Embedding(4, 2, name="emb"), "'emb'.*no `kernel`"),
    ],
)
def test_ws_refuses_unsupported_layers(layer, match):
    with pytest.raises(ValueError, match=match):
        kn.WeightStandardization(layer)


def test_ws_refuses_bad_epsilon_and_fan_in_of_one():
    with pytest.raises(ValueError, match="Received: epsilon"):
        kn.WeightStandardization(keras.layers.Dense(2), epsilon=0.0)
    with pytest.raises(ValueError, match="fan-in"):
        kn.WeightStandardization(keras.layers.Dense(2)).build((3, 1))


def test_ws_refuses_quantized_and_lora_layers():
    quantized = keras.layers.Dense(3, name="q")
    quantized.build((2, 4))
    quantized.quantize("int8")
    with pytest.raises(ValueError, match="floating-point `kernel`.*'q'"):
        kn.WeightStandardization(quantized).build((2, 4))
    lora = keras.layers.Dense(3, name="l")
    lora.build((2, 4))
    lora.enable_lora(2)
    with pytest.raises(ValueError, match="'l' with LoRA"):
        kn.WeightStandardization(lora).build((2, 4))


@pytest.mark.parametrize(
    "make,shape,bad,message", layer_checks.WRONG_RANK_CASES
)
def test_wrong_rank_input_same_message_as_the_wrapped_layer(
    make, shape, bad, message
):
    # Issue 21, item 9: the wrapped layer's input-spec message, as
    # WeightNormalization gives.
    layer_checks.check_wrong_rank_message(
        kn.WeightStandardization, make, shape, bad, message
    )
