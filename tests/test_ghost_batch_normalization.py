"""Ghost batch normalization: `BatchNormalization(virtual_batch_size=k)`.

Against NumPy written from Hoffer et al. (2017) and tf_keras' semantics
(each group of `k` consecutive samples normalized with its own batch
statistics; the moving statistics blended once per step with the mean
over the groups of their means and biased variances), and against the
peer: Keras' own BatchNormalization run on each group, whose outputs and
input gradients the ghost batch must reproduce, and whose weight
gradients it must sum.
"""

import keras
import numpy as np
import pytest

import keras_norms as kn
from tests import helpers

CASES = [
    ((8, 6), -1),
    ((8, 5, 6), -1),
    ((8, 6, 5), 1),
    ((8, 3, 4, 6), -1),
    ((8, 6, 3, 4), 1),
    ((8, 2, 3, 2, 6), -1),
]


def _groups_reference(x, k, axis, gamma, beta, epsilon):
    ndim = x.ndim
    axis %= ndim
    reduce = tuple(a for a in range(ndim) if a != axis)
    g = helpers.broadcast_param(gamma, ndim, axis)
    b = helpers.broadcast_param(beta, ndim, axis)
    outputs, means, variances = [], [], []
    for start in range(0, x.shape[0], k):
        chunk = x[start : start + k].astype("float64")
        outputs.append(helpers.numpy_normalize(chunk, reduce, epsilon, g, b))
        means.append(chunk.mean(reduce))
        variances.append(chunk.var(reduce))
    return (
        np.concatenate(outputs),
        np.mean(means, axis=0),
        np.mean(variances, axis=0),
    )


@pytest.mark.parametrize("shape,axis", CASES)
def test_ghost_batches_match_numpy(shape, axis):
    x = helpers.random_input(shape, loc=2.0, scale=3.0)
    layer = kn.BatchNormalization(axis=axis, momentum=0.8, virtual_batch_size=4)
    layer.build(shape)
    helpers.set_random_weights(layer)
    gamma, beta = helpers.to_numpy(layer.gamma), helpers.to_numpy(layer.beta)
    old_mean = helpers.to_numpy(layer.moving_mean)
    old_var = helpers.to_numpy(layer.moving_variance)
    y = helpers.to_numpy(layer(x, training=True))
    ref, mean, var = _groups_reference(x, 4, axis, gamma, beta, 1e-3)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        helpers.to_numpy(layer.moving_mean),
        old_mean * 0.8 + mean * 0.2,
        rtol=1e-5,
        atol=1e-5,
    )
    np.testing.assert_allclose(
        helpers.to_numpy(layer.moving_variance),
        old_var * 0.8 + var * 0.2,
        rtol=1e-5,
        atol=1e-5,
    )
    # Inference: the moving statistics, any batch size (tf_keras needed a
    # multiple of k here too).
    y = helpers.to_numpy(layer(x[:3], training=False))
    view = [1] * len(shape)
    view[axis % len(shape)] = -1
    ref = (x[:3] - helpers.to_numpy(layer.moving_mean).reshape(view)) / np.sqrt(
        helpers.to_numpy(layer.moving_variance).reshape(view) + 1e-3
    )
    ref = ref * gamma.reshape(view) + beta.reshape(view)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape,axis", [CASES[1], CASES[4]])
def test_gradients_equal_keras_batch_norm_per_group(shape, axis):
    x = helpers.random_input(shape, loc=1.0, scale=2.0)
    upstream = helpers.random_input(shape, seed=5)
    ghost = kn.BatchNormalization(axis=axis, virtual_batch_size=2)
    ghost.build(shape)
    helpers.set_random_weights(ghost)
    y, dx, grads = helpers.forward_and_grads(ghost, x, upstream)
    peer = keras.layers.BatchNormalization(axis=axis)
    peer.build((2,) + shape[1:])
    for w in ("gamma", "beta"):
        getattr(peer, w).assign(getattr(ghost, w).value)
    ys, dxs = [], []
    sums = {"gamma": 0.0, "beta": 0.0}
    for start in range(0, shape[0], 2):
        part = slice(start, start + 2)
        y_g, dx_g, g_g = helpers.forward_and_grads(
            peer, x[part], upstream[part]
        )
        ys.append(y_g)
        dxs.append(dx_g)
        for name in sums:
            sums[name] = sums[name] + g_g[name]
    np.testing.assert_allclose(y, np.concatenate(ys), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dx, np.concatenate(dxs), rtol=1e-3, atol=1e-4)
    for name in sums:
        np.testing.assert_allclose(grads[name], sums[name], rtol=1e-3, atol=1e-4)


def test_fit_saves_loads_and_folds(tmp_path):
    x = helpers.random_input((32, 4, 4, 3), loc=1.0, scale=2.0)
    y = helpers.random_input((32, 2), seed=3)
    model = keras.Sequential(
        [
            keras.Input((4, 4, 3)),
            keras.layers.Conv2D(4, 3, use_bias=False),
            kn.BatchNormalization(virtual_batch_size=4),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(2),
        ]
    )
    model.compile("sgd", "mse")
    before = helpers.to_numpy(model.layers[1].moving_mean)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert not np.allclose(helpers.to_numpy(model.layers[1].moving_mean), before)
    loaded = helpers.assert_saves_and_loads(model, x[:5], tmp_path)
    assert loaded.layers[1].virtual_batch_size == 4
    helpers.assert_config_round_trip(model.layers[1])
    folded = kn.fold_batch_norms(model)
    assert helpers.count_layers(folded, kn.BatchNormalization) == 0
    np.testing.assert_allclose(
        helpers.infer(folded, x[:7]), helpers.infer(model, x[:7]),
        rtol=1e-4, atol=1e-4,
    )


def test_mixed_precision_statistics_in_float32():
    x = helpers.random_input((8, 3, 3, 4), loc=2.0)
    layer = kn.BatchNormalization(virtual_batch_size=4, dtype="mixed_float16")
    y = layer(x, training=True)
    assert keras.backend.standardize_dtype(y.dtype) == "float16"
    assert layer.moving_mean.dtype == "float32"
    ref, _, _ = _groups_reference(x, 4, -1, np.ones(4), np.zeros(4), 1e-3)
    np.testing.assert_allclose(
        helpers.to_numpy(y).astype("float32"), ref, atol=2e-2
    )


def test_bad_arguments_and_batches():
    with pytest.raises(TypeError, match="Received: virtual_batch_size=2.5"):
        kn.BatchNormalization(virtual_batch_size=2.5)
    with pytest.raises(ValueError, match="Received: virtual_batch_size=0"):
        kn.BatchNormalization(virtual_batch_size=0)
    with pytest.raises(ValueError, match="renorm=True"):
        kn.BatchNormalization(virtual_batch_size=2, renorm=True)
    with pytest.raises(ValueError, match="synchronized=True"):
        kn.SyncBatchNormalization(virtual_batch_size=2)
    layer = kn.BatchNormalization(virtual_batch_size=4)
    x = helpers.random_input((6, 3))
    with pytest.raises(ValueError, match="multiple of `virtual_batch_size`"):
        layer(x, training=True)
    layer(x, training=False)  # inference: any batch size
    state = [helpers.to_numpy(v) for v in layer.non_trainable_variables]
    empty = layer(x[:0], training=True)  # an empty batch: state unchanged
    assert tuple(empty.shape) == (0, 3)
    for v, before in zip(layer.non_trainable_variables, state):
        np.testing.assert_array_equal(helpers.to_numpy(v), before)
