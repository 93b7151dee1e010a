"""The native fast paths (`keras_norms.backend.native`) against the one
`keras.ops` implementation they stand in for: same outputs, input and
weight gradients, and moving statistics, in every layout they take, and the
large-mean stability of the shifted channels-last group norm.

On backends without fast paths both runs take the `keras.ops` path, so the
comparison holds trivially there; the torch run is the one that matters.
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
        pytest.skip("no native fast path for this layer on this backend: "
                    "both runs would take the same keras.ops path")
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
    assert before  # every backend has fast paths


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


def _eager_grad(layer, x):
    """d sum(y**2) / dx by the backend's eager autodiff, stateless."""
    tv = [v.value for v in layer.trainable_variables]
    ntv = [v.value for v in layer.non_trainable_variables]
    if keras.backend.backend() == "jax":
        import jax
        import jax.numpy as jnp

        def loss(x):
            y, _ = layer.stateless_call(tv, ntv, x, training=True)
            return jnp.sum(y**2)

        return np.asarray(jax.grad(loss)(x))
    import tensorflow as tf

    with tf.GradientTape() as tape:
        tape.watch(x)
        y, _ = layer.stateless_call(tv, ntv, x, training=True)
        loss = tf.reduce_sum(y**2)
    return tape.gradient(loss, x).numpy()


@pytest.mark.parametrize("axis", [-1, 1])
@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_repeated_eager_calls_are_compiled_and_exact(name, axis):
    # JAX and TensorFlow compile a layer's eager call once it repeats
    # (backend/compiled.py): the same outputs, moving statistics and eager
    # gradients as the op-by-op keras.ops path, call after call.
    from keras_norms.backend import compiled

    if keras.backend.backend() not in ("jax", "tensorflow"):
        pytest.skip("compiled eager calls: JAX and TensorFlow")
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
            outputs = [
                helpers.to_numpy(layer(x, training=True))
                for _ in range(compiled.WARM_UP + 2)
            ]
            dx = _eager_grad(layer, x)
        state = [helpers.to_numpy(v) for v in layer.non_trainable_variables]
        runs.append((outputs, dx, state, layer))
    (outputs, dx, state, layer), (outputs0, dx0, state0, _) = runs
    for y, y0 in zip(outputs, outputs0):
        np.testing.assert_allclose(y, y0, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, dx0, rtol=1e-4, atol=1e-4)
    for a, b in zip(state, state0):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    programs = compiled.programs(layer)
    if name in NATIVE.get(keras.backend.backend(), ()) and axis == -1:
        # TF's fused kernel, the faster eagerly channels-last
        assert not programs
    else:
        assert len(programs) == 1


def test_compiled_eager_call_follows_python_attributes():
    # Freezing the statistics after the call was compiled selects another
    # program (inference mode), not the stale training one.
    from keras_norms.backend import compiled

    if keras.backend.backend() not in ("jax", "tensorflow"):
        pytest.skip("compiled eager calls: JAX and TensorFlow")
    x = helpers.random_input((2, 3, 4, 6), loc=2.0, scale=3.0)
    layer = kn.GroupNormalization(groups=2)
    for _ in range(compiled.WARM_UP + 1):
        layer(x)
    layer.epsilon = 10.0
    for _ in range(compiled.WARM_UP + 1):
        y = helpers.to_numpy(layer(x))
    view = x.astype("float64").reshape(2, 3, 4, 2, 3)
    ref = (view - view.mean((1, 2, 4), keepdims=True)) / np.sqrt(
        view.var((1, 2, 4), keepdims=True) + 10.0
    )
    np.testing.assert_allclose(y, ref.reshape(x.shape), atol=1e-5)
    bn = kn.BatchInstanceNormalization()
    for _ in range(compiled.WARM_UP + 1):
        bn(x, training=True)
    moving = (bn.moving_mean, bn.moving_variance)
    before = [helpers.to_numpy(v) for v in moving]
    bn.trainable = False  # Keras: a frozen layer runs in inference mode
    for _ in range(compiled.WARM_UP + 1):
        bn(x, training=True)
    after = [helpers.to_numpy(v) for v in moving]
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)  # statistics left alone


@pytest.mark.parametrize("backend_fast_paths", [True, False])
def test_fit_run_eagerly_matches_compiled_fit(backend_fast_paths):
    # `fit(run_eagerly=True)` calls every layer eagerly each step: from the
    # third step on, the compiled eager calls (JAX, TF) or fused kernels
    # run. The weights after training equal those of a compiled fit, on
    # every backend.
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


def test_compiled_programs_are_freed_with_their_layer():
    import gc
    import weakref

    from keras_norms.backend import compiled

    if keras.backend.backend() not in ("jax", "tensorflow"):
        pytest.skip("compiled eager calls: JAX and TensorFlow")
    x = helpers.random_input((2, 3, 4, 6))
    layer = kn.LayerNormalization()
    for _ in range(compiled.WARM_UP + 1):
        layer(x)
    assert len(compiled.programs(layer)) == 1
    layer_ref = weakref.ref(layer)
    del layer
    gc.collect()
    assert layer_ref() is None  # its programs did not keep it alive
