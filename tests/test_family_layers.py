"""RMSNormalization, FilterResponseNormalization (+ TLU) and
WeightStandardization against independent references (NumPy from the
papers' formulas, `torch.nn.functional.rms_norm`, `keras.layers` peers),
forward and gradients, on every backend."""

import keras
import numpy as np
import pytest

from keras_norms.layers.filter_response_normalization import (
    FilterResponseNormalization,
)
from keras_norms.layers.rms_normalization import RMSNormalization
from keras_norms.layers.weight_normalization import WeightNormalization
from keras_norms.layers.weight_standardization import WeightStandardization
from tests import helpers

torch = pytest.importorskip("torch")
F = torch.nn.functional

# Float32 layers against float64 references.
TOL = dict(rtol=2e-4, atol=2e-4)


def _tiny_fit(model, x, y, steps=3):
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    history = model.fit(x, y, epochs=steps, batch_size=len(x), verbose=0)
    return history.history["loss"]


# ---------------------------------------------------------------------------
# RMSNormalization
# ---------------------------------------------------------------------------
RMS_CASES = [
    ((6, 8), -1),
    ((3, 4, 5), -1),
    ((3, 4, 5), [1, 2]),
    ((2, 3, 4, 5), [-2, -1]),
    ((2, 3, 4, 5), 1),  # a non-trailing axis
    ((2, 3, 4, 5), [1, 3]),  # non-contiguous axes
]


def _rms_torch(axes, ndim, eps):
    """`F.rms_norm` over `axes`: move them to the end, normalize, move back."""
    axes = sorted(a % ndim for a in ([axes] if isinstance(axes, int) else axes))
    tail = list(range(ndim - len(axes), ndim))

    def fn(t, weight):
        moved = t.movedim(axes, tail)
        out = F.rms_norm(moved, tuple(moved.shape[-len(axes):]), weight, eps)
        return out.movedim(tail, axes)

    return fn


@pytest.mark.parametrize("shape,axis", RMS_CASES)
def test_rms_matches_torch_forward_and_grads(shape, axis):
    eps = 1e-5
    x = helpers.random_input(shape, loc=0.5, scale=2.0)
    layer = RMSNormalization(axis=axis, epsilon=eps)
    layer.build(shape)
    helpers.set_random_weights(layer)
    scale = helpers.to_numpy(layer.scale)
    up = helpers.random_input(shape, seed=7)
    y, dx, grads = helpers.forward_and_grads(layer, x, up)
    ry, rdx, rgrads = helpers.torch_reference(
        _rms_torch(axis, len(shape), eps), x, {"weight": scale}, up, 1
    )
    np.testing.assert_allclose(y, ry, **TOL)
    np.testing.assert_allclose(dx, rdx, **TOL)
    np.testing.assert_allclose(grads["scale"], rgrads["weight"], **TOL)


def test_rms_matches_numpy_formula():
    x = helpers.random_input((4, 3, 6), loc=1.0)
    layer = RMSNormalization(axis=-1, epsilon=1e-6)
    layer.build(x.shape)
    helpers.set_random_weights(layer)
    scale = helpers.to_numpy(layer.scale).astype("float64")
    x64 = x.astype("float64")
    expected = x64 / np.sqrt((x64**2).mean(-1, keepdims=True) + 1e-6) * scale
    np.testing.assert_allclose(helpers.to_numpy(layer(x)), expected, **TOL)


@pytest.mark.parametrize(
    "shape,axis", [((6, 8), -1), ((3, 4, 5), [1, 2]), ((2, 3, 4, 5), [-2, -1])]
)
def test_rms_is_a_drop_in_for_keras(shape, axis):
    peer = keras.layers.RMSNormalization(axis=axis, epsilon=1e-5)
    peer.build(shape)
    helpers.set_random_weights(peer)
    # Keras' config (its build turns `axis` into a sorted list) builds ours.
    ours = RMSNormalization.from_config(peer.get_config())
    ours.build(shape)
    assert [w.name for w in ours.weights] == [w.name for w in peer.weights]
    assert [w.shape for w in ours.weights] == [w.shape for w in peer.weights]
    ours.set_weights(peer.get_weights())
    x = helpers.random_input(shape, loc=-0.5, scale=1.5)
    up = helpers.random_input(shape, seed=5)
    y, dx, grads = helpers.forward_and_grads(ours, x, up)
    # Keras' call takes no `training`; a Sequential passes it on for it.
    peer_model = keras.Sequential([keras.Input(shape[1:]), peer])
    py, pdx, pgrads = helpers.forward_and_grads(peer_model, x, up)
    tol = dict(rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y, py, **tol)
    np.testing.assert_allclose(dx, pdx, **tol)
    np.testing.assert_allclose(grads["scale"], pgrads["scale"], **tol)


def test_rms_default_arguments_equal_keras():
    ours, peer = RMSNormalization(), keras.layers.RMSNormalization()
    assert (ours.axis, ours.epsilon) == (peer.axis, peer.epsilon)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_rms_mixed_precision(policy):
    x = helpers.random_input((4, 5, 8), loc=3.0, scale=2.0)
    reference = RMSNormalization()
    reference.build(x.shape)
    helpers.set_random_weights(reference)
    keras.mixed_precision.set_global_policy(policy)
    layer = RMSNormalization()
    layer.build(x.shape)
    layer.set_weights(reference.get_weights())
    assert layer.scale.dtype == "float32"
    y = layer(x)
    assert keras.backend.standardize_dtype(y.dtype) == policy.split("_")[1]
    keras.mixed_precision.set_global_policy("float32")
    tol = 1e-2 if policy == "mixed_bfloat16" else 2e-3
    np.testing.assert_allclose(
        helpers.to_numpy(y).astype("float32"),
        helpers.to_numpy(reference(x)),
        rtol=tol,
        atol=tol * 4,
    )


def test_rms_config_save_and_fit(tmp_path):
    layer = RMSNormalization(axis=[1, 2], epsilon=1e-4)
    helpers.assert_config_round_trip(layer)
    x = helpers.random_input((8, 3, 4))
    model = keras.Sequential(
        [
            keras.Input((3, 4)),
            RMSNormalization(axis=[1, 2]),
            keras.layers.Flatten(),
        ]
    )
    losses = _tiny_fit(model, x, np.zeros((8, 12), "float32"))
    assert losses[-1] < losses[0]
    helpers.assert_saves_and_loads(model, x, tmp_path)


@pytest.mark.parametrize(
    "kwargs,error",
    [
        (dict(axis="x"), TypeError),
        (dict(axis=[1, 1]), ValueError),  # ints, one twice: a wrong value
        (dict(epsilon=0.0), ValueError),
        (dict(epsilon=None), TypeError),
    ],
)
def test_rms_bad_arguments(kwargs, error):
    with pytest.raises(error, match="Received"):
        RMSNormalization(**kwargs)


def test_rms_bad_input_shapes():
    with pytest.raises(ValueError, match="batch axis"):
        RMSNormalization(axis=0).build((2, 3))
    with pytest.raises(ValueError, match="out of range"):
        RMSNormalization(axis=3).build((2, 3))
    with pytest.raises(ValueError, match="known size"):
        RMSNormalization(axis=-1).build((2, None))


# ---------------------------------------------------------------------------
# FilterResponseNormalization + TLU
# ---------------------------------------------------------------------------
FRN_LAYOUTS = [
    ((3, 5, 4), -1),  # NTC
    ((3, 4, 5), 1),  # NCT
    ((2, 4, 5, 3), -1),  # NHWC
    ((2, 3, 4, 5), 1),  # NCHW
    ((2, 3, 4, 3, 2), -1),  # NDHWC
]


def _frn_numpy(x, axis, eps, gamma, beta, tau):
    """The paper's Algorithm 1 in float64 NumPy."""
    x = x.astype("float64")
    ndim = x.ndim
    axis %= ndim
    spatial = tuple(a for a in range(1, ndim) if a != axis)
    nu2 = (x**2).mean(axis=spatial, keepdims=True)
    g, b, t = (
        helpers.broadcast_param(p, ndim, axis) for p in (gamma, beta, tau)
    )
    return np.maximum(g * x / np.sqrt(nu2 + eps) + b, t)


def _frn_torch(eps, learned=False):
    """The same formula in torch (channels at axis 1), for autograd."""

    def fn(t, gamma, beta, tau, epsilon_l=None):
        view = (1, -1) + (1,) * (t.ndim - 2)
        nu2 = (t * t).mean(dim=tuple(range(2, t.ndim)), keepdim=True)
        e = eps + torch.abs(epsilon_l) if learned else eps
        y = gamma.view(view) * t * torch.rsqrt(nu2 + e) + beta.view(view)
        return torch.maximum(y, tau.view(view))

    return fn


def _frn_weights(layer):
    return {w.name: helpers.to_numpy(w) for w in layer.weights}


@pytest.mark.parametrize("shape,axis", FRN_LAYOUTS)
def test_frn_matches_numpy_and_torch_grads(shape, axis):
    eps = 1e-6
    x = helpers.random_input(shape, loc=0.3, scale=2.0)
    layer = FilterResponseNormalization(axis=axis, epsilon=eps)
    layer.build(shape)
    helpers.set_random_weights(layer)
    assert [w.name for w in layer.weights] == ["gamma", "beta", "tau"]
    w = _frn_weights(layer)
    expected = _frn_numpy(x, axis, eps, w["gamma"], w["beta"], w["tau"])
    # The TLU clips a real share of the outputs with these weights.
    tau = helpers.broadcast_param(w["tau"], len(shape), axis)
    assert 0.1 < np.mean(expected == tau) < 0.9
    up = helpers.random_input(shape, seed=7)
    y, dx, grads = helpers.forward_and_grads(layer, x, up)
    np.testing.assert_allclose(y, expected, **TOL)
    np.testing.assert_allclose(
        helpers.to_numpy(layer(x, training=False)), expected, **TOL
    )
    ry, rdx, rgrads = helpers.torch_reference(
        _frn_torch(eps), x, w, up, axis % len(shape)
    )
    np.testing.assert_allclose(y, ry, **TOL)
    np.testing.assert_allclose(dx, rdx, **TOL)
    for name in ("gamma", "beta", "tau"):
        np.testing.assert_allclose(grads[name], rgrads[name], **TOL)


@pytest.mark.parametrize("axis", [-1, 1])
def test_frn_learned_epsilon_gradient(axis):
    # 1x1 spatial: nu2 = x**2, where epsilon matters most (the paper's case).
    shape = (4, 1, 1, 3) if axis == -1 else (4, 3, 1, 1)
    x = helpers.random_input(shape, scale=0.01)
    layer = FilterResponseNormalization(axis=axis, learned_epsilon=True)
    layer.build(shape)
    helpers.set_random_weights(layer)
    layer.epsilon_l.assign([-2e-4])  # used as |epsilon_l|
    w = _frn_weights(layer)
    assert list(w) == ["gamma", "beta", "tau", "epsilon_l"]
    up = helpers.random_input(shape, seed=4)
    y, dx, grads = helpers.forward_and_grads(layer, x, up)
    ry, rdx, rgrads = helpers.torch_reference(
        _frn_torch(1e-6, learned=True), x, w, up, axis % 4
    )
    np.testing.assert_allclose(y, ry, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(dx, rdx, rtol=1e-3, atol=1e-2)
    for name in w:
        np.testing.assert_allclose(
            grads[name], rgrads[name], rtol=1e-3, atol=1e-3
        )
    assert abs(grads["epsilon_l"][0]) > 1.0


def test_frn_learned_epsilon_learns_in_fit():
    # 1x1 spatial, TLU inactive, targets made with epsilon = 4e-4: the
    # learned |epsilon_l| (starting at 1e-4) must grow toward 4e-4 - 1e-6.
    x = helpers.random_input((16, 1, 1, 3), scale=0.02)
    target = (x / np.sqrt(x**2 + 4e-4)).astype("float32")
    model = keras.Sequential(
        [
            keras.Input((1, 1, 3)),
            FilterResponseNormalization(
                learned_epsilon=True,
                tau_initializer=keras.initializers.Constant(-10.0),
            ),
        ]
    )
    frn = model.layers[0]
    before = float(helpers.to_numpy(frn.epsilon_l)[0])
    # d loss / d epsilon is large (~1/epsilon): a tiny learning rate.
    model.compile(optimizer=keras.optimizers.SGD(1e-7), loss="mse")
    losses = model.fit(x, target, epochs=3, batch_size=16, verbose=0)
    after = float(helpers.to_numpy(frn.epsilon_l)[0])
    assert before == pytest.approx(1e-4)
    assert 1.2e-4 < after < 4e-4
    assert losses.history["loss"][-1] < losses.history["loss"][0]


def test_frn_one_by_one_without_learned_epsilon_is_allowed():
    x = helpers.random_input((3, 1, 1, 2))
    layer = FilterResponseNormalization(
        tau_initializer=keras.initializers.Constant(-5.0)
    )
    # nu2 = x**2: the output is sign(x) (up to epsilon).
    y = helpers.to_numpy(layer(x))
    np.testing.assert_allclose(y, np.sign(x), atol=1e-3)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_frn_mixed_precision(policy):
    x = helpers.random_input((2, 4, 4, 3), loc=2.0, scale=3.0)
    reference = FilterResponseNormalization(learned_epsilon=True)
    reference.build(x.shape)
    helpers.set_random_weights(reference)
    keras.mixed_precision.set_global_policy(policy)
    layer = FilterResponseNormalization(learned_epsilon=True)
    layer.build(x.shape)
    layer.set_weights(reference.get_weights())
    assert all(w.dtype == "float32" for w in layer.weights)
    y = layer(x)
    assert keras.backend.standardize_dtype(y.dtype) == policy.split("_")[1]
    keras.mixed_precision.set_global_policy("float32")
    tol = 2e-2 if policy == "mixed_bfloat16" else 3e-3
    np.testing.assert_allclose(
        helpers.to_numpy(y).astype("float32"),
        helpers.to_numpy(reference(x)),
        rtol=tol,
        atol=tol * 4,
    )


def test_frn_config_save_and_fit(tmp_path):
    layer = FilterResponseNormalization(
        axis=1,
        epsilon=1e-5,
        learned_epsilon=True,
        learned_epsilon_constraint="non_neg",
        tau_initializer="ones",
        tau_regularizer="l2",
    )
    clone = helpers.assert_config_round_trip(layer)
    assert clone.learned_epsilon and clone.axis == 1
    x = helpers.random_input((6, 4, 4, 2))
    model = keras.Sequential(
        [
            keras.Input((4, 4, 2)),
            keras.layers.Conv2D(3, 3),
            FilterResponseNormalization(learned_epsilon=True),
            keras.layers.GlobalAveragePooling2D(),
        ]
    )
    losses = _tiny_fit(model, x, np.ones((6, 3), "float32"))
    assert losses[-1] < losses[0]
    helpers.set_random_weights(model.layers[1])
    loaded = helpers.assert_saves_and_loads(model, x, tmp_path)
    assert isinstance(loaded.layers[1], FilterResponseNormalization)


@pytest.mark.parametrize(
    "kwargs,error",
    [
        (dict(axis=[1, 2]), TypeError),  # the channel axis, not TFA's list
        (dict(epsilon=-1.0), ValueError),
        (dict(learned_epsilon="yes"), TypeError),
        (dict(center=1), TypeError),
    ],
)
def test_frn_bad_arguments(kwargs, error):
    with pytest.raises(error, match="Received"):
        FilterResponseNormalization(**kwargs)


@pytest.mark.parametrize("shape", [(4, 3), (1, 2, 2, 2, 2, 2)])
def test_frn_refuses_inputs_without_spatial_axes(shape):
    with pytest.raises(ValueError, match="rank 3 to 5"):
        FilterResponseNormalization().build(shape)


# ---------------------------------------------------------------------------
# WeightStandardization
# ---------------------------------------------------------------------------
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
    ws = WeightStandardization(make(), epsilon=eps)
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
    ws = WeightStandardization(keras.layers.Dense(3), epsilon=eps)
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


def test_ws_fit_updates_kernel_and_saves(tmp_path):
    x = helpers.random_input((8, 6, 6, 2))
    y = helpers.random_input((8, 2), seed=3)
    model = keras.Sequential(
        [
            keras.Input((6, 6, 2)),
            WeightStandardization(keras.layers.Conv2D(4, 3, use_bias=False)),
            keras.layers.GroupNormalization(groups=2),
            keras.layers.ReLU(),
            keras.layers.GlobalAveragePooling2D(),
            WeightStandardization(keras.layers.Dense(2)),
        ]
    )
    conv = model.layers[0]
    assert [w.name for w in conv.weights] == ["kernel"]
    before = helpers.to_numpy(conv.layer.kernel).copy()
    losses = _tiny_fit(model, x, y, steps=4)
    assert losses[-1] < losses[0]
    change = helpers.to_numpy(conv.layer.kernel) - before
    assert np.abs(change).max() > 1e-5
    loaded = helpers.assert_saves_and_loads(model, x, tmp_path)
    assert isinstance(loaded.layers[0], WeightStandardization)
    assert loaded.layers[0].epsilon == conv.epsilon


def test_ws_activity_regularizer_counted_once():
    x = helpers.random_input((8, 5))
    zeros = np.zeros((8, 2), "float32")
    models = []
    for reg in (None, "l2"):
        models.append(
            keras.Sequential(
                [
                    keras.Input((5,)),
                    WeightStandardization(
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


def test_ws_mixed_precision():
    x = helpers.random_input((4, 6))
    reference = WeightStandardization(keras.layers.Dense(3))
    reference.build(x.shape)
    keras.mixed_precision.set_global_policy("mixed_float16")
    ws = WeightStandardization(keras.layers.Dense(3))
    ws.build(x.shape)
    ws.set_weights(reference.get_weights())
    assert ws.layer.kernel.dtype == "float32"
    y = ws(x)
    assert keras.backend.standardize_dtype(y.dtype) == "float16"
    keras.mixed_precision.set_global_policy("float32")
    np.testing.assert_allclose(
        helpers.to_numpy(y).astype("float32"),
        helpers.to_numpy(reference(x)),
        rtol=5e-3,
        atol=5e-3,
    )


def test_ws_config_round_trip():
    ws = WeightStandardization(
        keras.layers.Conv2D(3, 2, name="c"), epsilon=1e-10
    )
    config = ws.get_config()
    clone = WeightStandardization.from_config(config)
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
        WeightStandardization(layer)


def test_ws_refuses_bad_epsilon_and_fan_in_of_one():
    with pytest.raises(ValueError, match="Received: epsilon"):
        WeightStandardization(keras.layers.Dense(2), epsilon=0.0)
    with pytest.raises(ValueError, match="fan-in"):
        WeightStandardization(keras.layers.Dense(2)).build((3, 1))


def test_ws_refuses_quantized_and_lora_layers():
    quantized = keras.layers.Dense(3, name="q")
    quantized.build((2, 4))
    quantized.quantize("int8")
    with pytest.raises(ValueError, match="floating-point `kernel`.*'q'"):
        WeightStandardization(quantized).build((2, 4))
    lora = keras.layers.Dense(3, name="l")
    lora.build((2, 4))
    lora.enable_lora(2)
    with pytest.raises(ValueError, match="'l' with LoRA"):
        WeightStandardization(lora).build((2, 4))


@pytest.mark.parametrize(
    "make,shape,bad,message",
    [
        (lambda: keras.layers.Conv2D(2, 3), (2, 5, 5, 3), (5, 5, 3), "expected min_ndim=4"),
        (lambda: keras.layers.Dense(2), (2, 3), (3,), "expected min_ndim=2"),
    ],
)
def test_wrong_rank_input_same_message_for_wn_and_ws(make, shape, bad, message):
    # Issue 21, item 9: WeightNormalization checks its input with the
    # wrapped layer's input spec, as WeightStandardization (which calls the
    # wrapped layer) does: one message on every backend.
    for wrapper in (WeightNormalization, WeightStandardization):
        layer = wrapper(make())
        layer(np.ones(shape, "float32"))
        with pytest.raises(ValueError, match=message):
            layer(np.ones(bad, "float32"))
