"""BatchInstanceNormalization, SwitchableNormalization, WeightNormalization.

References: NumPy (float64) written from the papers' formulas, with input
and parameter gradients by central finite differences of that NumPy code,
and `torch.nn.functional` peers (batch_norm, instance_norm, layer_norm) for
the equivalences (BIN rho=1/0, SN one-hot).
"""

import inspect

import keras
import numpy as np
import pytest

from keras_norms import inspection
from keras_norms.layers.batch_instance_normalization import (
    BatchInstanceNormalization,
)
from keras_norms.layers.batch_instance_normalization import ClipToUnitInterval
from keras_norms.layers.switchable_normalization import SwitchableNormalization
from keras_norms.layers.weight_normalization import WeightNormalization
from tests import helpers
from tests.helpers import to_numpy

EPS = 1e-3
AXES = [-1, 1]


def over_axes(test):
    """Run `test` channels-last (axis=-1) then channels-first (axis=1).

    A loop rather than a parametrization: every test pays a Keras
    `clear_session` in teardown, which is slow on JAX.
    """

    def run(**kwargs):
        for axis in AXES:
            test(axis=axis, **kwargs)

    signature = inspect.signature(test)
    run.__signature__ = signature.replace(
        parameters=[p for p in signature.parameters.values() if p.name != "axis"]
    )
    run.__name__ = test.__name__
    run.__doc__ = test.__doc__
    run.__dict__.update(test.__dict__)  # pytest marks (parametrize)
    return run


def _input(axis, seed=0, shape=(4, 5, 6, 3)):
    """A (N, H, W, C) or (N, C, H, W) input with a large-ish mean."""
    x = helpers.random_input(shape, seed=seed, loc=3.0, scale=2.0)
    return x if axis == -1 else np.ascontiguousarray(np.moveaxis(x, -1, 1))


def _spatial(x, axis):
    c = axis % x.ndim
    return tuple(a for a in range(1, x.ndim) if a != c)


def _param(v, x, axis):
    return helpers.broadcast_param(np.asarray(v, "float64"), x.ndim, axis % x.ndim)


def _numeric_grad(f, arr, eps=1e-6):
    """Central finite differences of the scalar `f()` w.r.t. `arr` (float64)."""
    grad = np.zeros_like(arr)
    flat, gflat = arr.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        hi = f()
        flat[i] = old - eps
        lo = f()
        flat[i] = old
        gflat[i] = (hi - lo) / (2 * eps)
    return grad


def _check_against_numpy(layer, x, ref, params, training=True, fd=True):
    """Forward, dx and parameter grads of `layer` vs `ref(x, **params)`."""
    x64 = x.astype("float64")
    p64 = {k: np.asarray(v, "float64") for k, v in params.items()}
    upstream = helpers.random_input(ref(x64, **p64).shape, seed=7)
    y, dx, grads = helpers.forward_and_grads(layer, x, upstream, training)
    np.testing.assert_allclose(y, ref(x64, **p64), rtol=1e-4, atol=1e-4)
    if not fd:
        return
    loss = lambda: float(np.sum(ref(x64, **p64) * upstream))  # noqa: E731
    np.testing.assert_allclose(dx, _numeric_grad(loss, x64), rtol=1e-3, atol=1e-4)
    for name, value in p64.items():
        np.testing.assert_allclose(
            grads[name], _numeric_grad(loss, value), rtol=1e-3, atol=1e-4,
            err_msg=name,
        )


def _set(layer, **values):
    for w in layer.weights:
        if w.name in values:
            w.assign(np.asarray(values[w.name], "float32"))


# ----------------------------------------------------------------------
# NumPy references from the papers' formulas
# ----------------------------------------------------------------------
def _moments(x, axes):
    mean = x.mean(axis=axes, keepdims=True)
    return mean, ((x - mean) ** 2).mean(axis=axes, keepdims=True)


def bin_reference(x, gamma, beta, rho, axis, moving=None):
    """Nam & Kim eq.: gamma * (rho * x_bn + (1 - rho) * x_in) + beta."""
    sp = _spatial(x, axis)
    if moving is None:
        mean_bn, var_bn = _moments(x, (0,) + sp)
    else:
        mean_bn, var_bn = (_param(m, x, axis) for m in moving)
    mean_in, var_in = _moments(x, sp)
    x_bn = (x - mean_bn) / np.sqrt(var_bn + EPS)
    x_in = (x - mean_in) / np.sqrt(var_in + EPS)
    rho = _param(rho, x, axis)
    return _param(gamma, x, axis) * (rho * x_bn + (1 - rho) * x_in) + _param(
        beta, x, axis
    )


def _softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def sn_reference(x, gamma, beta, mean_weights, variance_weights, axis,
                 moving=None):
    """Luo et al. eq. (3)-(5), biased variances, directly over x."""
    sp = _spatial(x, axis)
    mean_in, var_in = _moments(x, sp)
    mean_ln, var_ln = _moments(x, tuple(range(1, x.ndim)))
    if moving is None:
        mean_bn, var_bn = _moments(x, (0,) + sp)
    else:
        mean_bn, var_bn = (_param(m, x, axis) for m in moving)
    wm, wv = _softmax(mean_weights), _softmax(variance_weights)
    mean = wm[0] * mean_in + wm[1] * mean_ln + wm[2] * mean_bn
    var = wv[0] * var_in + wv[1] * var_ln + wv[2] * var_bn
    y = (x - mean) / np.sqrt(var + EPS)
    return y * _param(gamma, x, axis) + _param(beta, x, axis)


# ----------------------------------------------------------------------
# BatchInstanceNormalization
# ----------------------------------------------------------------------
def _torch_peer(kind, x, axis, gamma, beta, upstream):
    import torch.nn.functional as F

    def bn(t, gamma, beta):
        return F.batch_norm(t, None, None, gamma, beta, training=True, eps=EPS)

    def inn(t, gamma, beta):
        return F.instance_norm(t, weight=gamma, bias=beta, eps=EPS)

    def ln(t, gamma, beta):
        y = F.layer_norm(t, t.shape[1:], eps=EPS)
        shape = (1, -1) + (1,) * (t.ndim - 2)
        return y * gamma.view(shape) + beta.view(shape)

    fn = {"batch": bn, "instance": inn, "layer": ln}[kind]
    return helpers.torch_reference(
        fn, x, {"gamma": gamma, "beta": beta}, upstream, axis % x.ndim
    )


def _check_against_peer(layer, kind, x, axis):
    rng = np.random.RandomState(3)
    gamma = rng.uniform(0.5, 1.5, x.shape[axis]).astype("float32")
    beta = rng.randn(x.shape[axis]).astype("float32")
    _set(layer, gamma=gamma, beta=beta)
    upstream = helpers.random_input(x.shape, seed=7)
    y, dx, grads = helpers.forward_and_grads(layer, x, upstream, True)
    ry, rdx, rgrads = _torch_peer(kind, x, axis, gamma, beta, upstream)
    np.testing.assert_allclose(y, ry, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dx, rdx, rtol=1e-3, atol=1e-4)
    for name in ("gamma", "beta"):
        np.testing.assert_allclose(grads[name], rgrads[name], rtol=1e-3, atol=1e-3)


@over_axes
@pytest.mark.parametrize("rho,kind", [(1.0, "batch"), (0.0, "instance")])
def test_bin_endpoints_equal_bn_and_in(axis, rho, kind):
    x = _input(axis)
    layer = BatchInstanceNormalization(axis=axis, epsilon=EPS)
    layer.build(x.shape)
    _set(layer, rho=np.full(x.shape[axis], rho))
    _check_against_peer(layer, kind, x, axis)


@over_axes
def test_bin_matches_numpy_training(axis):
    x = _input(axis, shape=(3, 4, 3, 2))
    layer = BatchInstanceNormalization(axis=axis, epsilon=EPS)
    layer.build(x.shape)
    params = {"gamma": [0.7, 1.3], "beta": [0.2, -0.4], "rho": [0.3, 0.8]}
    _set(layer, **params)
    _check_against_numpy(
        layer, x, lambda x, **p: bin_reference(x, axis=axis, **p), params
    )


@over_axes
def test_bin_inference_uses_moving_statistics(axis):
    x = _input(axis)
    layer = BatchInstanceNormalization(axis=axis, epsilon=EPS)
    layer.build(x.shape)
    params = {"gamma": [0.7, 1.3, 1.0], "beta": [0.2, -0.4, 0.0],
              "rho": [0.3, 0.8, 1.0]}
    moving = ([2.5, 3.5, 3.0], [3.0, 5.0, 4.0])
    _set(layer, moving_mean=moving[0], moving_variance=moving[1], **params)
    y = to_numpy(layer(x, training=False))
    ref = bin_reference(x.astype("float64"), axis=axis, moving=moving,
                        **{k: np.asarray(v) for k, v in params.items()})
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)
    # Inference does not touch the moving statistics.
    np.testing.assert_allclose(to_numpy(layer.moving_mean), moving[0])


# ----------------------------------------------------------------------
# SwitchableNormalization
# ----------------------------------------------------------------------
@over_axes
@pytest.mark.parametrize("hot,kind", [(0, "instance"), (1, "layer"), (2, "batch")])
def test_sn_one_hot_equals_in_ln_bn(axis, hot, kind):
    x = _input(axis)
    layer = SwitchableNormalization(axis=axis, epsilon=EPS)
    layer.build(x.shape)
    logits = np.zeros(3)
    logits[hot] = 50.0
    _set(layer, mean_weights=logits, variance_weights=logits)
    _check_against_peer(layer, kind, x, axis)


@over_axes
def test_sn_matches_numpy_training(axis):
    x = _input(axis, shape=(3, 4, 3, 2))
    layer = SwitchableNormalization(axis=axis, epsilon=EPS)
    layer.build(x.shape)
    params = {"gamma": [0.7, 1.3], "beta": [0.2, -0.4],
              "mean_weights": [0.5, -0.3, 0.1],
              "variance_weights": [-0.2, 0.4, 0.3]}
    _set(layer, **params)
    _check_against_numpy(
        layer, x, lambda x, **p: sn_reference(x, axis=axis, **p), params
    )


@over_axes
def test_sn_inference_uses_moving_statistics(axis):
    x = _input(axis)
    layer = SwitchableNormalization(axis=axis, epsilon=EPS)
    layer.build(x.shape)
    params = {"gamma": [0.7, 1.3, 1.0], "beta": [0.2, -0.4, 0.0],
              "mean_weights": [0.5, -0.3, 0.1],
              "variance_weights": [-0.2, 0.4, 0.3]}
    moving = ([2.5, 3.5, 3.0], [3.0, 5.0, 4.0])
    _set(layer, moving_mean=moving[0], moving_variance=moving[1], **params)
    y = to_numpy(layer(x, training=False))
    ref = sn_reference(x.astype("float64"), axis=axis, moving=moving,
                       **{k: np.asarray(v) for k, v in params.items()})
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("cls", [BatchInstanceNormalization,
                                 SwitchableNormalization])
@over_axes
def test_moving_statistics_update_like_bn(cls, axis):
    x = _input(axis)
    layer = cls(axis=axis, momentum=0.6)
    layer(x, training=True)
    layer(x + 1.0, training=True)
    axes = (0,) + _spatial(x, axis)
    mean, var = x.mean(axis=axes), x.var(axis=axes)
    expected_mean = (0.0 * 0.6 + mean * 0.4) * 0.6 + (mean + 1.0) * 0.4
    expected_var = (1.0 * 0.6 + var * 0.4) * 0.6 + var * 0.4
    np.testing.assert_allclose(to_numpy(layer.moving_mean), expected_mean,
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(to_numpy(layer.moving_variance), expected_var,
                               rtol=1e-5, atol=1e-5)
    # use_global_stats: training normalizes with (and keeps) the moving stats.
    frozen = cls(axis=axis, use_global_stats=True)
    frozen(x, training=True)
    np.testing.assert_allclose(to_numpy(frozen.moving_mean), 0.0)


# ----------------------------------------------------------------------
# WeightNormalization
# ----------------------------------------------------------------------
def _wn_cases():
    return {
        "dense": (lambda: keras.layers.Dense(4), (6, 5)),
        "conv1d_causal": (
            lambda: keras.layers.Conv1D(3, 3, padding="causal", dilation_rate=2),
            (2, 7, 2),
        ),
        "conv2d_nchw": (
            lambda: keras.layers.Conv2D(
                3, 2, strides=2, data_format="channels_first"
            ),
            (2, 2, 6, 8),
        ),
        "conv3d": (lambda: keras.layers.Conv3D(2, 2, padding="same"), (1, 3, 3, 3, 2)),
    }


@pytest.mark.parametrize("case", list(_wn_cases()))
def test_wn_equals_plain_layer_at_init_and_after_changing_g(case):
    make, shape = _wn_cases()[case]
    x = helpers.random_input(shape)
    inner = make()
    wn = WeightNormalization(inner)
    y = to_numpy(wn(x))
    inner.bias.assign(np.linspace(-1, 1, inner.bias.shape[0]).astype("float32"))
    y = to_numpy(wn(x))
    np.testing.assert_allclose(y, helpers.infer(inner, x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        to_numpy(wn.g),
        np.sqrt((to_numpy(inner.kernel) ** 2)
                .reshape(-1, inner.kernel.shape[-1]).sum(0)),
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
    np.testing.assert_allclose(to_numpy(wn(x)), helpers.infer(plain, x),
                               rtol=1e-5, atol=1e-5)
    kernel, bias = wn.effective_kernel_and_bias()
    np.testing.assert_allclose(to_numpy(kernel), w, rtol=1e-5, atol=1e-6)


def test_wn_gradients_match_numpy():
    x = helpers.random_input((6, 4))
    wn = WeightNormalization(keras.layers.Dense(3))
    wn.build(x.shape)
    rng = np.random.RandomState(4)
    params = {"g": rng.uniform(0.5, 1.5, 3), "kernel": rng.randn(4, 3),
              "bias": rng.randn(3)}
    _set(wn, g=params["g"])
    _set(wn.layer, kernel=params["kernel"], bias=params["bias"])
    params = {k: v.astype("float32") for k, v in params.items()}

    def ref(x, g, kernel, bias):
        return x @ (g * kernel / np.sqrt((kernel**2).sum(0))) + bias

    _check_against_numpy(wn, x, ref, params)


@pytest.mark.parametrize("case", ["dense", "conv2d_nchw"])
def test_wn_data_init_normalizes_first_batch_once(case):
    make, shape = _wn_cases()[case]
    shape = (16,) + shape[1:]
    x = helpers.random_input(shape, loc=2.0, scale=3.0)
    unit_axis = 1 if "nchw" in case else -1
    wn = WeightNormalization(make(), data_init=True)
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
    wn = WeightNormalization(keras.layers.Dense(3), data_init=True)
    model = keras.Sequential([keras.Input((5,)), wn])
    model.compile(keras.optimizers.SGD(0.0), "mse")
    model.fit(x, np.zeros((32, 3)), batch_size=32, epochs=1, verbose=0)
    y = to_numpy(model(x, training=False))
    np.testing.assert_allclose(y.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(y.std(0), 1.0, atol=1e-4)


# ----------------------------------------------------------------------
# Training, constraints, saving, config, mixed precision, arguments
# ----------------------------------------------------------------------
def _model(axis=-1, data_init=True):
    shape = (6, 6, 2) if axis == -1 else (2, 6, 6)
    fmt = "channels_last" if axis == -1 else "channels_first"
    return keras.Sequential(
        [
            keras.Input(shape),
            # Off-center, so the moving statistics move from their init.
            keras.layers.Rescaling(2.0, offset=1.0),
            BatchInstanceNormalization(
                axis=axis, rho_initializer=keras.initializers.Constant(0.5),
                name="bin",
            ),
            SwitchableNormalization(axis=axis, name="sn"),
            # After the norms: a gain g in front of one would get no gradient.
            WeightNormalization(
                keras.layers.Conv2D(4, 3, padding="same", data_format=fmt),
                data_init=data_init, name="wn",
            ),
            keras.layers.GlobalAveragePooling2D(data_format=fmt),
            keras.layers.Dense(1),
        ]
    )


def _data(axis, n=8, seed=0):
    x = helpers.random_input((n, 6, 6, 2), seed=seed, loc=1.0)
    if axis == 1:
        x = np.ascontiguousarray(np.moveaxis(x, -1, 1))
    y = helpers.random_input((n, 1), seed=seed + 1)
    return x, y


def _learned(model):
    return {
        "rho": to_numpy(model.get_layer("bin").rho),
        "mean_weights": to_numpy(model.get_layer("sn").mean_weights),
        "variance_weights": to_numpy(model.get_layer("sn").variance_weights),
        "g": to_numpy(model.get_layer("wn").g),
        "v": to_numpy(model.get_layer("wn").layer.kernel),
        "bin_moving_mean": to_numpy(model.get_layer("bin").moving_mean),
        "bin_moving_variance": to_numpy(model.get_layer("bin").moving_variance),
    }


def test_rho_stays_in_unit_interval_with_huge_learning_rate():
    model = _model(data_init=False)
    model.compile(keras.optimizers.SGD(1e3), "mse")
    x, y = _data(-1)
    model.fit(x, y * 10.0, batch_size=8, epochs=1, verbose=0)
    rho = to_numpy(model.get_layer("bin").rho)
    assert rho.min() >= 0.0 and rho.max() <= 1.0, rho
    # The clip acted (a step of lr=1e3 from 0.5 lands far outside [0, 1]).
    assert np.any((rho == 0.0) | (rho == 1.0)), rho
    assert isinstance(model.get_layer("bin").rho.constraint, ClipToUnitInterval)


def test_fit_learns_every_weight_and_saves_and_loads_all_state(tmp_path):
    """Gradients reach rho, both switch vectors, g and v; .keras keeps all."""
    model = _model(1)
    before = _learned(model)
    model.compile(keras.optimizers.SGD(0.1), "mse")
    x, y = _data(1)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    state = _learned(model)
    for name in before:
        assert np.abs(state[name] - before[name]).max() > 1e-7, name
    assert np.abs(state["bin_moving_mean"]).max() > 1e-3
    assert np.abs(state["bin_moving_variance"] - 1.0).max() > 1e-3
    assert float(to_numpy(model.get_layer("wn").data_initialized)) == 1.0
    loaded = helpers.assert_saves_and_loads(model, x, tmp_path)
    for name, value in _learned(loaded).items():
        np.testing.assert_array_equal(value, state[name], err_msg=name)
    np.testing.assert_array_equal(
        to_numpy(loaded.get_layer("wn").g_offset),
        to_numpy(model.get_layer("wn").g_offset),
    )
    # The loaded data_init layer keeps its flag: it will not re-initialize.
    assert float(to_numpy(loaded.get_layer("wn").data_initialized)) == 1.0


def test_config_round_trips():
    for layer in (
        BatchInstanceNormalization(axis=1, momentum=0.9, epsilon=1e-5,
                                   rho_initializer="zeros",
                                   use_global_stats=True, center=False),
        SwitchableNormalization(axis=1, momentum=0.9, scale=False,
                                gamma_regularizer="l2"),
        WeightNormalization(keras.layers.Conv2D(3, 2, activation="relu"),
                            data_init=True, name="wn_conv"),
    ):
        clone = helpers.assert_config_round_trip(layer)
        assert type(clone) is type(layer)
    clone = helpers.assert_config_round_trip(
        WeightNormalization(keras.layers.Dense(3, use_bias=False))
    )
    assert isinstance(clone.layer, keras.layers.Dense)
    assert clone.layer.units == 3


def test_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    x = _input(-1)
    for layer in (
        BatchInstanceNormalization(),
        SwitchableNormalization(),
        WeightNormalization(keras.layers.Dense(4), data_init=True),
    ):
        for training in (True, False):
            y = layer(x, training=training)
            assert keras.backend.standardize_dtype(y.dtype) == "float16"
            assert np.all(np.isfinite(to_numpy(y)))
        for w in layer.weights:
            assert keras.backend.standardize_dtype(w.dtype) == "float32", w.path
    # Statistics in float32: the training output still matches float64.
    layer = SwitchableNormalization()
    y = to_numpy(layer(x, training=True)).astype("float64")
    ref = sn_reference(x.astype("float64"), np.ones(3), np.zeros(3),
                       np.ones(3), np.ones(3), axis=-1)
    np.testing.assert_allclose(y, ref, atol=1e-2)


def test_bad_arguments_raise_clearly():
    with pytest.raises(TypeError, match="Received: axis="):
        BatchInstanceNormalization(axis="channels")
    with pytest.raises(ValueError, match="Received: momentum=2"):
        SwitchableNormalization(momentum=2.0)
    with pytest.raises(ValueError, match="Received: epsilon=0"):
        BatchInstanceNormalization(epsilon=0.0)
    with pytest.raises(TypeError, match="use_global_stats"):
        SwitchableNormalization(use_global_stats=1)
    for cls in (BatchInstanceNormalization, SwitchableNormalization):
        with pytest.raises(ValueError, match="spatial axis"):
            cls()(np.ones((4, 3), "float32"))
        with pytest.raises(ValueError, match="Received: axis=4"):
            cls(axis=4)(np.ones((2, 3, 3, 2), "float32"))
    with pytest.raises(TypeError, match="conv2d_transpose"):
        WeightNormalization(keras.layers.Conv2DTranspose(2, 3))
    with pytest.raises(TypeError, match="kernel"):
        WeightNormalization(keras.layers.LayerNormalization())
    with pytest.raises(TypeError, match="Received: layer='dense'"):
        WeightNormalization("dense")
    with pytest.raises(TypeError, match="Received: data_init="):
        WeightNormalization(keras.layers.Dense(2), data_init="yes")
    with pytest.raises(ValueError, match="use_bias=False"):
        WeightNormalization(keras.layers.Dense(2, use_bias=False),
                            data_init=True)(np.ones((2, 3), "float32"))


def test_switchable_importances_walks_nested_models():
    inner = keras.Sequential(
        [keras.Input((5, 5, 2)), SwitchableNormalization(name="sn_inner")],
        name="inner",
    )
    model = keras.Sequential(
        [keras.Input((5, 5, 2)), inner, SwitchableNormalization(name="sn_outer"),
         BatchInstanceNormalization(name="bin")]
    )
    inner.get_layer("sn_inner").mean_weights.assign(
        np.array([0.0, np.log(2.0), np.log(3.0)], "float32")
    )
    imp = inspection.switchable_importances(model)
    assert list(imp) == ["sn_inner", "sn_outer"]
    np.testing.assert_allclose(
        [imp["sn_inner"]["mean"][k] for k in ("instance", "layer", "batch")],
        [1 / 6, 2 / 6, 3 / 6], rtol=1e-5,
    )
    for parts in imp["sn_outer"].values():
        np.testing.assert_allclose(list(parts.values()), [1 / 3] * 3, rtol=1e-5)
    table = inspection.format_importances(imp)
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["layer", "mean", "IN"]
    assert lines[1].startswith("sn_inner") and "0.500" in lines[1]
