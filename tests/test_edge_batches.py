"""Edge batches: a batch of one, an empty batch, on every backend.

- One value per channel (or per group) in training behaves as Keras does:
  the variance is 0, the output `beta`, and the moving statistics move
  towards the value and towards 0 (issue 20, item 3). So `fit` on a data
  set whose last batch holds one sample trains.
- An empty batch gives an empty output and leaves every state as it was
  (moving statistics, renorm statistics, WeightNormalization's
  data-dependent init), in training and at inference, with finite
  gradients (issue 21, item 4).
"""

import keras
import numpy as np
import pytest

import keras_norms as kn
from tests import helpers

BACKEND = keras.backend.backend()


def _copy_weights(source, target):
    """Same values for the weights the two layers share by name."""
    values = {w.name: helpers.to_numpy(w) for w in source.weights}
    for w in target.weights:
        w.assign(values[w.name])


# ----------------------------------------------------------------------
# A batch of one
# ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "axis, shape", [(-1, (1, 4)), (1, (1, 3, 1, 1)), (-1, (1, 1, 1, 3))]
)
def test_batch_norm_batch_of_one_matches_keras(axis, shape):
    x = helpers.random_input(shape, seed=1, loc=2.0)
    ours = kn.BatchNormalization(axis=axis, momentum=0.5)
    ref = keras.layers.BatchNormalization(axis=axis, momentum=0.5)
    for layer in (ours, ref):
        layer.build(shape)
    helpers.set_random_weights(ref, seed=2)
    _copy_weights(ref, ours)
    for _ in range(3):  # eager warm-up, then the compiled call on JAX/TF
        y = helpers.to_numpy(ours(x, training=True))
        y_ref = helpers.to_numpy(ref(x, training=True))
        # (x * a + b against Keras' (x - mean) * a: rounding only.)
        np.testing.assert_allclose(y, y_ref, atol=2e-5)
    beta = helpers.broadcast_param(helpers.to_numpy(ref.beta), len(shape), axis)
    np.testing.assert_allclose(y, np.broadcast_to(beta, shape), atol=2e-5)
    for name in ("moving_mean", "moving_variance"):
        np.testing.assert_allclose(
            helpers.to_numpy(getattr(ours, name)),
            helpers.to_numpy(getattr(ref, name)),
            atol=1e-6,
            err_msg=name,
        )
    # Gradients are finite (the input's is 0: the output is beta).
    _, dx, grads = helpers.forward_and_grads(ours, x)
    np.testing.assert_allclose(dx, 0.0, atol=1e-5)
    assert all(np.all(np.isfinite(g)) for g in grads.values())


@pytest.mark.parametrize("shape", [(2, 1, 4), (2, 1, 1, 4), (3, 4)])
def test_one_value_per_group_matches_keras(shape):
    x = helpers.random_input(shape, seed=3)
    ref = keras.layers.GroupNormalization(groups=-1)
    ours = kn.GroupNormalization(groups=-1)
    for layer in (ours, ref):
        layer.build(shape)
    helpers.set_random_weights(ref, seed=4)
    _copy_weights(ref, ours)
    y_ref = helpers.to_numpy(ref(x, training=True))
    np.testing.assert_allclose(
        helpers.to_numpy(ours(x, training=True)), y_ref, atol=2e-5
    )
    if len(shape) > 2:  # InstanceNormalization needs a spatial axis
        inorm = kn.InstanceNormalization()
        inorm.build(shape)
        _copy_weights(ref, inorm)
        np.testing.assert_allclose(
            helpers.to_numpy(inorm(x)), y_ref, atol=2e-5
        )


def test_fit_with_a_last_batch_of_one():
    rng = np.random.RandomState(0)
    x = rng.randn(33, 4).astype("float32")
    y = rng.randn(33, 1).astype("float32")
    model = keras.Sequential(
        [keras.Input((4,)), kn.BatchNormalization(), keras.layers.Dense(1)]
    )
    model.compile(optimizer="sgd", loss="mse")
    history = model.fit(x, y, batch_size=32, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    bn = model.layers[0]
    assert np.all(np.isfinite(helpers.to_numpy(bn.moving_mean)))
    # The last step (one sample) moved the variance towards 0, as Keras.
    assert np.all(helpers.to_numpy(bn.moving_variance) < 1.0)


# ----------------------------------------------------------------------
# Empty batches
# ----------------------------------------------------------------------
EMPTY_LAYERS = {
    "batch": lambda: kn.BatchNormalization(momentum=0.5),
    "batch_cf": lambda: kn.BatchNormalization(axis=1, momentum=0.5),
    "batch_renorm": lambda: kn.BatchNormalization(renorm=True),
    "sync": lambda: kn.SyncBatchNormalization(),
    "batch_instance": lambda: kn.BatchInstanceNormalization(),
    "switchable": lambda: kn.SwitchableNormalization(),
    "group": lambda: kn.GroupNormalization(groups=2),
    "group_cf": lambda: kn.GroupNormalization(groups=3, axis=1),
    "instance": lambda: kn.InstanceNormalization(),
    "layer": lambda: kn.LayerNormalization(),
    "rms": lambda: kn.RMSNormalization(),
    "frn": lambda: kn.FilterResponseNormalization(),
    "evo_s0": lambda: kn.EvoNormS0(groups=2),
    "evo_b0": lambda: kn.EvoNormB0(momentum=0.5),
    "evo_b0_cf": lambda: kn.EvoNormB0(axis=1, momentum=0.5),
    "lrn": lambda: kn.LocalResponseNormalization(depth_radius=1),
    "affine": lambda: kn.Affine(),
    "weight_norm": lambda: kn.WeightNormalization(
        keras.layers.Conv2D(4, 3, padding="same"), data_init=True
    ),
    "weight_std": lambda: kn.WeightStandardization(
        keras.layers.Conv2D(4, 3, padding="same")
    ),
}


# Layers called on two inputs, whose empty-batch tests live in their own
# test modules (tests/layers/test_<name>.py).
TWO_INPUTS = {"AdaptiveInstanceNormalization", "ConditionalNormalization"}


def test_empty_layer_list_covers_the_public_layers():
    public = {
        name
        for name in kn.__all__
        if isinstance(getattr(kn, name), type)
        and issubclass(getattr(kn, name), keras.layers.Layer)
    } - TWO_INPUTS
    covered = {type(make()).__name__ for make in EMPTY_LAYERS.values()}
    assert public <= covered, public - covered


@pytest.mark.parametrize("name", sorted(EMPTY_LAYERS))
def test_empty_batch_gives_empty_output_and_keeps_state(name):
    layer = EMPTY_LAYERS[name]()
    x = helpers.random_input((2, 3, 3, 4), seed=5)
    layer.build(x.shape)
    state = {
        w.path: helpers.to_numpy(w) for w in layer.non_trainable_weights
    }
    empty = x[:0]
    for training in (True, False, True):  # 3 calls: the compiled one too
        y = helpers.to_numpy(layer(empty, training=training))
        assert y.shape[0] == 0 and y.shape[1:] == (3, 3, 4)
        for w in layer.non_trainable_weights:
            np.testing.assert_array_equal(
                helpers.to_numpy(w), state[w.path], err_msg=w.path
            )
    if layer.trainable_weights and name != "weight_norm":
        # Gradients of an empty batch: zeros, never NaN.
        _, dx, grads = helpers.forward_and_grads(layer, empty)
        assert dx.shape == empty.shape
        for key, g in grads.items():
            if g is not None:
                np.testing.assert_array_equal(g, 0.0, err_msg=key)


def test_weight_normalization_data_init_waits_for_a_non_empty_batch():
    x = helpers.random_input((6, 5), seed=6)

    def fresh():
        layer = kn.WeightNormalization(keras.layers.Dense(3), data_init=True)
        layer.build(x.shape)
        return layer

    layer, reference = fresh(), fresh()
    _copy_weights(reference, layer)
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


@pytest.mark.skipif(BACKEND != "tensorflow", reason="a graph of unknown batch")
def test_empty_batch_in_a_graph_of_unknown_batch_size_keeps_state():
    import tensorflow as tf

    for make in (
        EMPTY_LAYERS["batch"],
        EMPTY_LAYERS["batch_renorm"],
        EMPTY_LAYERS["switchable"],
        EMPTY_LAYERS["evo_b0"],
    ):
        layer = make()
        x = helpers.random_input((2, 3, 3, 4), seed=7)
        layer.build(x.shape)
        state = [helpers.to_numpy(w) for w in layer.non_trainable_weights]
        call = tf.function(
            lambda t: layer(t, training=True),
            input_signature=[tf.TensorSpec((None, 3, 3, 4), tf.float32)],
        )
        assert tuple(call(x[:0]).shape) == (0, 3, 3, 4)
        for w, before in zip(layer.non_trainable_weights, state):
            np.testing.assert_array_equal(helpers.to_numpy(w), before)
        call(x)  # a batch with samples still updates
        assert not np.array_equal(
            helpers.to_numpy(layer.moving_mean), state[0]
        )


# ----------------------------------------------------------------------
# JAX named axes: synchronized statistics refuse what they cannot combine
# ----------------------------------------------------------------------
@pytest.mark.skipif(BACKEND != "jax", reason="JAX's pmap / shard_map")
def test_sync_batch_norm_refuses_jax_named_axes():
    # The refusal depends on the trace (named axes), not on the device
    # count: a pmap over the one host device shows it in process.
    import jax

    layer = kn.SyncBatchNormalization()
    x = helpers.random_input((1, 4, 3), seed=8)
    layer.build(x.shape[1:])
    tv = [v.value for v in layer.trainable_variables]
    ntv = [v.value for v in layer.non_trainable_variables]

    def step(x, training=True):
        return layer.stateless_call(tv, ntv, x, training=training)[0]

    for mapped in (
        jax.pmap(step, axis_name="devices"),
        jax.vmap(step, axis_name="devices"),
    ):
        with pytest.raises(ValueError, match=r"Received: axis_names=\('devices',\)"):
            mapped(x)
    # Inference (moving statistics, no collective) and plain
    # BatchNormalization (per-device statistics by definition) are fine.
    jax.pmap(lambda x: step(x, training=False), axis_name="devices")(x)
    plain = kn.BatchNormalization()
    plain.build(x.shape[1:])
    jax.pmap(
        lambda x: plain.stateless_call(
            [v.value for v in plain.trainable_variables],
            [v.value for v in plain.non_trainable_variables],
            x,
            training=True,
        )[0],
        axis_name="devices",
    )(x)
