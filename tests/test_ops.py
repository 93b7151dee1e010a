"""The functional ops of `keras_norms.ops`: against NumPy written from the
papers, against the `keras.ops` implementation where they pick a fused
kernel (`keras_norms.backend.native`: same outputs, input and weight
gradients and moving statistics, in every layout they take; the
large-mean stability of the shifted channels-last group norm), and the
guarantee that replaced the compiled eager calls: a result never depends
on how many times a layer was called, and a changed attribute takes effect
at the next call.

On backends without fused kernels both runs of a comparison take the
`keras.ops` path, so it holds trivially there; the torch (and, for batch
norm, TensorFlow) runs are the ones that matter.
"""

import contextlib

import keras
import numpy as np
import pytest

import keras_norms as kn
from keras_norms.backend import native
from tests import helpers

FACTORIES = {
    "batch": lambda axis: kn.BatchNormalization(axis=axis, momentum=0.7),
    "batch_no_affine": lambda axis: kn.BatchNormalization(
        axis=axis, center=False, scale=False
    ),
    "layer": lambda axis: kn.LayerNormalization(axis=axis),
    "layer_two_axes": lambda axis: kn.LayerNormalization(
        axis=[1, -1] if axis == -1 else [0 + 1, 2]
    ),
    "instance": lambda axis: kn.InstanceNormalization(axis=axis),
    "group": lambda axis: kn.GroupNormalization(groups=2, axis=axis),
    "group_beta_only": lambda axis: kn.GroupNormalization(
        groups=3, axis=axis, scale=False
    ),
    "batch_instance": lambda axis: kn.BatchInstanceNormalization(axis=axis),
    "switchable": lambda axis: kn.SwitchableNormalization(axis=axis),
    "rms": lambda axis: kn.RMSNormalization(axis=axis),
    "rms_two_axes": lambda axis: kn.RMSNormalization(axis=[-2, -1]),
}
NEED_SPATIAL = (
    "instance",
    "batch_instance",
    "switchable",
    "layer_two_axes",
    "rms_two_axes",
)
# The layers each backend has a fast path for (keras_norms.backend.native).
NATIVE = {
    "torch": tuple(FACTORIES),
    "tensorflow": ("batch", "batch_no_affine"),  # FusedBatchNormV3
}
LAYOUTS = [
    ((5, 6), -1),
    ((3, 4, 6), -1),
    ((3, 6, 4), 1),
    ((2, 3, 4, 6), -1),
    ((2, 6, 3, 4), 1),
    ((2, 2, 3, 2, 6), -1),
]


def _run(name, shape, axis, training, use_native):
    if name in NEED_SPATIAL and len(shape) < 3:
        pytest.skip("needs a spatial axis")
    layer = FACTORIES[name](axis)
    layer.build(shape)
    helpers.set_random_weights(layer)
    x = helpers.random_input(shape, loc=2.0, scale=3.0)
    if use_native:
        y, dx, grads = helpers.forward_and_grads(layer, x, training=training)
        out = layer(x, training=training)
    else:
        with native.disabled():
            y, dx, grads = helpers.forward_and_grads(
                layer, x, training=training
            )
            out = layer(x, training=training)
    state = [helpers.to_numpy(v) for v in layer.non_trainable_variables]
    return y, dx, grads, helpers.to_numpy(out), state


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape,axis", LAYOUTS)
@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_native_path_matches_keras_ops_path(name, shape, axis, training):
    if name not in NATIVE.get(keras.backend.backend(), ()):
        pytest.skip(
            "no native fast path for this layer on this backend: "
            "both runs would take the same keras.ops path"
        )
    fast = _run(name, shape, axis, training, use_native=True)
    slow = _run(name, shape, axis, training, use_native=False)
    tol = dict(rtol=1e-4, atol=1e-4)
    for a, b in ((fast[0], slow[0]), (fast[1], slow[1]), (fast[3], slow[3])):
        np.testing.assert_allclose(a, b, **tol)
    assert fast[2].keys() == slow[2].keys()
    for key in fast[2]:
        if fast[2][key] is None or slow[2][key] is None:
            assert fast[2][key] is None and slow[2][key] is None, key
        else:
            np.testing.assert_allclose(fast[2][key], slow[2][key], **tol)
    for a, b in zip(fast[4], slow[4]):  # moving statistics after one call
        np.testing.assert_allclose(a, b, **tol)


@pytest.mark.parametrize("groups", [1, 2, 8])
@pytest.mark.parametrize("axis", [-1, 1])
def test_group_norm_large_mean_is_exact(groups, axis):
    # torch's channels-last group_norm kernel sums x and x**2 in one pass:
    # off by ~100 standard deviations here without the per-group shift.
    shape = (4, 5, 6, 8) if axis == -1 else (4, 8, 5, 6)
    x = helpers.random_input(shape, loc=1e4, scale=1.0)
    layer = kn.GroupNormalization(groups=groups, axis=axis, epsilon=1e-3)
    y = helpers.to_numpy(layer(x))
    view = np.moveaxis(x.astype("float64"), axis, 1).reshape(4, groups, -1)
    ref = (view - view.mean(-1, keepdims=True)) / np.sqrt(
        view.var(-1, keepdims=True) + 1e-3
    )
    ref = np.moveaxis(ref.reshape(np.moveaxis(x, axis, 1).shape), 1, axis)
    np.testing.assert_allclose(y, ref, atol=2e-2)


def test_fit_with_bias_only_group_norm_on_model_input():
    # Two torch 2.13 traps on the channels-last path: a bias without a
    # weight, and weights needing gradients while the input does not.
    x = helpers.random_input((8, 3, 4, 6))
    model = keras.Sequential(
        [
            keras.Input((3, 4, 6)),
            kn.GroupNormalization(groups=2, scale=False),
            kn.InstanceNormalization(axis=-1),
            keras.layers.Flatten(),
            keras.layers.Dense(1),
        ]
    )
    model.compile("sgd", "mse")
    model.fit(x, x.mean(axis=(1, 2, 3))[:, None], epochs=1, verbose=0)


def test_disabled_restores_the_switch():
    before = native.enabled()
    with native.disabled():
        assert not native.enabled()
    assert native.enabled() == before
    # torch and TensorFlow have fused kernels; JAX's are XLA's own.
    assert before == (keras.backend.backend() in ("torch", "tensorflow"))


def _tf_graph_op_types(layer, x, training, jit_compile):
    import tensorflow as tf

    fn = tf.function(
        lambda t: layer(t, training=training), jit_compile=jit_compile
    )
    graph = fn.get_concrete_function(tf.constant(x)).graph
    return {op.type for op in graph.get_operations()}


@pytest.mark.parametrize("training", [True, False])
def test_tf_fused_batch_norm_only_outside_xla(training):
    # FusedBatchNormV3 where ops run one by one (eager, plain tf.function);
    # the keras.ops path, which XLA fuses, under jit_compile=True.
    if keras.backend.backend() != "tensorflow":
        pytest.skip("TensorFlow's fused batch norm")
    layer = kn.BatchNormalization()
    x = helpers.random_input((4, 5, 6, 8))
    layer.build(x.shape)
    assert "FusedBatchNormV3" in _tf_graph_op_types(layer, x, training, False)
    assert "FusedBatchNormV3" not in _tf_graph_op_types(
        layer, x, training, True
    )
    with native.disabled():
        assert "FusedBatchNormV3" not in _tf_graph_op_types(
            layer, x, training, False
        )


def test_tf_fused_batch_norm_skips_tiny_epsilon():
    if keras.backend.backend() != "tensorflow":
        pytest.skip("TensorFlow's fused batch norm")
    layer = kn.BatchNormalization(epsilon=1e-6)  # below the kernel's minimum
    x = helpers.random_input((4, 5, 6, 8))
    layer.build(x.shape)
    assert "FusedBatchNormV3" not in _tf_graph_op_types(layer, x, True, False)
    y = helpers.to_numpy(layer(x, training=True))
    ref = (x - x.mean((0, 1, 2))) / np.sqrt(x.var((0, 1, 2)) + 1e-6)
    np.testing.assert_allclose(y, ref, atol=1e-4)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("axis", [-1, 1])
def test_batch_norm_fast_path_under_mixed_precision(policy, axis):
    # Half-precision inputs, float32 gamma/beta/statistics: the fused
    # kernel takes them as they are (TF); the same numbers as keras.ops.
    x = helpers.random_input((4, 6, 5, 3), loc=2.0, scale=3.0)
    results = []
    for use_native in (True, False):
        layer = kn.BatchNormalization(axis=axis, momentum=0.5, dtype=policy)
        layer.build(x.shape)
        helpers.set_random_weights(layer)
        if use_native:
            y = layer(x, training=True)
        else:
            with native.disabled():
                y = layer(x, training=True)
        assert keras.backend.standardize_dtype(y.dtype) == policy[6:]
        state = [helpers.to_numpy(v) for v in layer.non_trainable_variables]
        results.append((helpers.to_numpy(y).astype("float32"), state))
    tol = 2e-2 if policy == "mixed_bfloat16" else 4e-3
    np.testing.assert_allclose(results[0][0], results[1][0], atol=tol * 4)
    for a, b in zip(results[0][1], results[1][1]):
        assert a.dtype == np.float32
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("axis", [-1, 1])
@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_result_does_not_depend_on_call_count(name, axis):
    # Six eager calls in inference mode give bit-identical outputs, and
    # six training calls the same outputs and moving statistics as a
    # fresh layer called as often with the keras.ops path.
    if name.startswith("rms") and axis == 1:
        pytest.skip("RMSNormalization's axes are the trailing ones here")
    shape = (2, 3, 4, 6) if axis == -1 else (2, 6, 3, 4)
    x = keras.ops.convert_to_tensor(
        helpers.random_input(shape, loc=2.0, scale=3.0)
    )
    runs = []
    for use_native in (True, False):
        layer = FACTORIES[name](axis)
        layer.build(x.shape)
        helpers.set_random_weights(layer)
        with contextlib.ExitStack() as stack:
            if not use_native:
                stack.enter_context(native.disabled())
            inference = [
                helpers.to_numpy(layer(x, training=False)) for _ in range(6)
            ]
            training = [
                helpers.to_numpy(layer(x, training=True)) for _ in range(6)
            ]
        state = [helpers.to_numpy(v) for v in layer.non_trainable_variables]
        runs.append((inference, training, state))
    (inference, training, state), (_, training0, state0) = runs
    for y in inference[1:]:
        np.testing.assert_array_equal(y, inference[0])
    for y, y0 in zip(training, training0):
        np.testing.assert_allclose(y, y0, rtol=1e-5, atol=1e-5)
    for a, b in zip(state, state0):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def _copy_state(source, target):
    for s, t in zip(source.weights, target.weights):
        t.assign(s.value)


def test_changed_attributes_take_effect_after_repeated_calls():
    # Issue 16: after 5 eager calls, relaxing `renorm_clipping` (as the
    # Batch Renormalization paper prescribes), changing `momentum` and
    # `epsilon` each takes effect at the next call: the output and the
    # moving statistics equal a fresh layer built with the new value and
    # the same state.
    x = helpers.random_input((8, 3, 4, 6), loc=1.0, scale=3.0)
    layer = kn.BatchNormalization(
        renorm=True,
        renorm_clipping={"rmax": 1.0, "rmin": 1.0, "dmax": 0.0},
        momentum=0.9,
    )
    layer.build(x.shape)
    helpers.set_random_weights(layer)
    for _ in range(5):
        layer(x, training=True)
    changes = [
        ("renorm_clipping", {"rmax": 3.0, "rmin": 0.3, "dmax": 5.0}),
        ("momentum", 0.5),
        ("epsilon", 0.5),
    ]
    for name, value in changes:
        before = helpers.to_numpy(layer(x, training=True))
        setattr(layer, name, value)
        config = layer.get_config()
        fresh = kn.BatchNormalization.from_config(config)
        fresh.build(x.shape)
        _copy_state(layer, fresh)
        y = helpers.to_numpy(layer(x, training=True))
        y_fresh = helpers.to_numpy(fresh(x, training=True))
        np.testing.assert_allclose(y, y_fresh, rtol=1e-6, atol=1e-6)
        for a, b in zip(layer.weights, fresh.weights):
            np.testing.assert_allclose(
                helpers.to_numpy(a), helpers.to_numpy(b), rtol=1e-6, atol=1e-6
            )
        if name != "momentum":  # momentum moves the state, not this output
            assert np.abs(y - before).max() > 1e-3, name
    # Inference with the changed epsilon, against NumPy.
    y = helpers.to_numpy(layer(x, training=False))
    mean = helpers.to_numpy(layer.moving_mean)
    var = helpers.to_numpy(layer.moving_variance)
    gamma = helpers.to_numpy(layer.gamma)
    beta = helpers.to_numpy(layer.beta)
    ref = (x - mean) / np.sqrt(var + 0.5) * gamma + beta
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


def test_frozen_statistics_take_effect_after_repeated_calls():
    # Freezing after repeated training calls runs inference mode at once.
    x = helpers.random_input((2, 3, 4, 6), loc=2.0, scale=3.0)
    layer = kn.BatchInstanceNormalization()
    for _ in range(5):
        layer(x, training=True)
    moving = (layer.moving_mean, layer.moving_variance)
    before = [helpers.to_numpy(v) for v in moving]
    layer.trainable = False  # Keras: a frozen layer runs in inference mode
    for _ in range(3):
        layer(x, training=True)
    after = [helpers.to_numpy(v) for v in moving]
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)  # statistics left alone


@pytest.mark.parametrize("backend_fast_paths", [True, False])
def test_fit_run_eagerly_matches_compiled_fit(backend_fast_paths):
    # `fit(run_eagerly=True)` calls every layer eagerly each step (op by
    # op, with the fused kernels where the ops pick them). The weights
    # after training equal those of a compiled fit, on every backend.
    x = helpers.random_input((32, 4, 4, 6), loc=1.0, scale=2.0)
    y = helpers.random_input((32, 4), seed=3)

    def train(run_eagerly):
        keras.utils.set_random_seed(0)
        model = keras.Sequential(
            [
                keras.Input((4, 4, 6)),
                kn.BatchNormalization(momentum=0.5),
                kn.GroupNormalization(groups=2),
                kn.LayerNormalization(),
                keras.layers.GlobalAveragePooling2D(),
                keras.layers.Dense(4),
            ]
        )
        model.compile("sgd", "mse", run_eagerly=run_eagerly)
        with contextlib.ExitStack() as stack:
            if not backend_fast_paths:
                stack.enter_context(native.disabled())
            model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
        return [helpers.to_numpy(w) for w in model.weights]

    for a, b in zip(train(True), train(False)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------
# The public functional ops against NumPy from the papers' formulas.
# ----------------------------------------------------------------------
def _np_normalize(x, axes, gamma=None, beta=None, eps=1e-3, center=True):
    x = x.astype("float64")
    mean = x.mean(axes, keepdims=True) if center else 0.0
    second = ((x - mean) ** 2).mean(axes, keepdims=True)
    y = (x - mean) / np.sqrt(second + eps)
    if gamma is not None:
        y = y * gamma
    if beta is not None:
        y = y + beta
    return y


def _channel_weights(channels, axis, ndim, seed=1):
    rng = np.random.RandomState(seed)
    gamma = rng.uniform(0.5, 1.5, channels).astype("float32")
    beta = rng.uniform(-1, 1, channels).astype("float32")
    view = [1] * ndim
    view[axis] = channels
    return gamma, beta, gamma.reshape(view), beta.reshape(view)


@pytest.mark.parametrize("axis", [-1, 1])
def test_batch_normalization_op(axis):
    x = helpers.random_input(
        (4, 5, 3, 6) if axis == -1 else (4, 6, 5, 3), loc=3.0, scale=2.0
    )
    axis_c = axis % 4
    gamma, beta, g, b = _channel_weights(6, axis_c, 4)
    axes = tuple(a for a in range(4) if a != axis_c)
    result = kn.ops.batch_normalization(x, axis, gamma, beta, epsilon=1e-3)
    np.testing.assert_allclose(
        helpers.to_numpy(result.outputs),
        _np_normalize(x, axes, g, b),
        rtol=1e-4,
        atol=1e-4,
    )
    np.testing.assert_allclose(
        helpers.to_numpy(result.mean), x.mean(axes), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        helpers.to_numpy(result.variance), x.var(axes), rtol=1e-5, atol=1e-5
    )
    assert bool(helpers.to_numpy(result.has_values))
    # Inference with given statistics (plain tensors: the keras.ops path).
    mean, var = x.mean(axes) + 1.0, x.var(axes) * 2.0
    y = kn.ops.batch_normalization(
        x, axis, gamma, beta, mean, var, epsilon=1e-3
    ).outputs
    view = [1] * 4
    view[axis_c] = 6
    ref = (x - mean.reshape(view)) / np.sqrt(var.reshape(view) + 1e-3)
    np.testing.assert_allclose(
        helpers.to_numpy(y), ref * g + b, rtol=1e-4, atol=1e-4
    )


def test_batch_normalization_op_mask_and_errors():
    x = helpers.random_input((3, 4, 2))
    mask = np.array([[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0]], bool)
    result = kn.ops.batch_normalization(x, -1, mask=mask[..., None])
    kept = x[mask]
    np.testing.assert_allclose(
        helpers.to_numpy(result.mean), kept.mean(0), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        helpers.to_numpy(result.variance), kept.var(0), rtol=1e-5, atol=1e-6
    )
    with pytest.raises(ValueError, match="both `mean` and `variance`"):
        kn.ops.batch_normalization(x, -1, mean=np.zeros(2, "float32"))
    with pytest.raises(TypeError, match="Received: axis=\\[1, 2\\]"):
        kn.ops.batch_normalization(x, [1, 2])


@pytest.mark.parametrize("axis", [-1, [1, 2]])
def test_layer_and_rms_normalization_ops(axis):
    x = helpers.random_input((3, 4, 5), loc=2.0, scale=3.0)
    axes = (2,) if axis == -1 else (1, 2)
    shape = tuple(x.shape[a] for a in axes)
    rng = np.random.RandomState(2)
    gamma = rng.uniform(0.5, 1.5, shape).astype("float32")
    beta = rng.uniform(-1, 1, shape).astype("float32")
    view = [1, 1, 1]
    for a in axes:
        view[a] = x.shape[a]
    g, b = gamma.reshape(view), beta.reshape(view)
    y = kn.ops.layer_normalization(x, axis, gamma, beta, epsilon=1e-3)
    np.testing.assert_allclose(
        helpers.to_numpy(y),
        _np_normalize(x, axes, g, b),
        rtol=1e-4,
        atol=1e-4,
    )
    y = kn.ops.rms_normalization(x, axis, gamma, epsilon=1e-6)
    ref = _np_normalize(x, axes, g, eps=1e-6, center=False)
    np.testing.assert_allclose(helpers.to_numpy(y), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("axis", [-1, 1])
def test_group_instance_and_filter_response_ops(axis):
    shape = (2, 3, 4, 6) if axis == -1 else (2, 6, 3, 4)
    x = helpers.random_input(shape, loc=2.0, scale=3.0)
    axis_c = axis % 4
    gamma, beta, g, b = _channel_weights(6, axis_c, 4)
    spatial = tuple(a for a in range(1, 4) if a != axis_c)
    # GroupNormalization with 2 groups of 3 channels.
    moved = np.moveaxis(x, axis_c, -1).astype("float64")
    view = moved.reshape(moved.shape[:-1] + (2, 3))
    ref = (view - view.mean((1, 2, 4), keepdims=True)) / np.sqrt(
        view.var((1, 2, 4), keepdims=True) + 1e-3
    )
    ref = np.moveaxis(ref.reshape(moved.shape), -1, axis_c) * g + b
    y = kn.ops.group_normalization(x, 2, axis, gamma, beta)
    np.testing.assert_allclose(helpers.to_numpy(y), ref, rtol=1e-4, atol=1e-4)
    y = kn.ops.instance_normalization(x, axis, gamma, beta)
    np.testing.assert_allclose(
        helpers.to_numpy(y),
        _np_normalize(x, spatial, g, b),
        rtol=1e-4,
        atol=1e-4,
    )
    tau = np.full(6, -0.5, "float32")
    y = kn.ops.filter_response_normalization(x, axis, gamma, beta, tau)
    ref = _np_normalize(x, spatial, g, b, eps=1e-6, center=False)
    np.testing.assert_allclose(
        helpers.to_numpy(y), np.maximum(ref, -0.5), rtol=1e-4, atol=1e-4
    )
    with pytest.raises(ValueError, match="Received: groups=4"):
        kn.ops.group_normalization(x, 4, axis)
    with pytest.raises(TypeError, match="Received: groups=2.0"):
        kn.ops.group_normalization(x, 2.0, axis)
    with pytest.raises(ValueError, match="spatial|besides the batch"):
        kn.ops.instance_normalization(
            x[:, 0, 0, :] if axis == -1 else x[:, :, 0, 0], axis
        )
