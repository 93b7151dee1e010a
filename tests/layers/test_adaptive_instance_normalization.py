"""AdaptiveInstanceNormalization and its op against the paper's formula."""

import keras
import numpy as np
import pytest

import keras_norms as kn
from tests import helpers
from tests import layer_checks

# (content shape, style shape) channels-last: batch 2, 3 channels, the
# style of another spatial size.
SHAPES = {
    3: ((2, 5, 3), (2, 7, 3)),
    4: ((2, 4, 3, 3), (2, 2, 5, 3)),
    5: ((2, 3, 2, 2, 3), (2, 2, 3, 2, 3)),
}
EPSILON = 1e-5


def layout(shape, axis):
    """A channels-last shape in the layout of `axis` (-1 or 1)."""
    return shape if axis == -1 else (shape[0], shape[-1]) + shape[1:-1]


def inputs(rank, axis, seed=0):
    content_shape, style_shape = (layout(s, axis) for s in SHAPES[rank])
    content = helpers.random_input(content_shape, seed=seed, loc=1.0, scale=2.0)
    style = helpers.random_input(
        style_shape, seed=seed + 1, loc=-3.0, scale=0.5
    )
    return content, style


def reference(content, style, axis, epsilon=EPSILON):
    """Huang & Belongie's equation 8 in float64; epsilon where their
    `AdaptiveInstanceNormalization.lua` puts it (the content's instance
    norm), the style's biased std without it."""
    channel = axis % content.ndim
    spatial = tuple(a for a in range(1, content.ndim) if a != channel)
    content = content.astype("float64")
    style = style.astype("float64")
    mu_x = content.mean(axis=spatial, keepdims=True)
    sigma_x = np.sqrt(content.var(axis=spatial, keepdims=True) + epsilon)
    mu_y = style.mean(axis=spatial, keepdims=True)
    sigma_y = style.std(axis=spatial, keepdims=True)
    return sigma_y * (content - mu_x) / sigma_x + mu_y


def numeric_gradient(f, x, step=1e-4):
    grad = np.zeros_like(x, dtype="float64")
    flat = x.astype("float64").reshape(-1)
    for i in range(flat.size):
        up, down = flat.copy(), flat.copy()
        up[i] += step
        down[i] -= step
        grad.reshape(-1)[i] = (
            f(up.reshape(x.shape)) - f(down.reshape(x.shape))
        ) / (2 * step)
    return grad


@pytest.mark.parametrize("axis", [-1, 1])
@pytest.mark.parametrize("rank", [3, 4, 5])
def test_matches_the_paper_in_both_modes(rank, axis):
    content, style = inputs(rank, axis)
    layer = kn.AdaptiveInstanceNormalization(axis=axis)
    expected = reference(content, style, axis)
    for training in (True, False):
        got = helpers.to_numpy(layer([content, style], training=training))
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    op = kn.ops.adaptive_instance_normalization(content, style, axis=axis)
    np.testing.assert_allclose(
        helpers.to_numpy(op), expected, rtol=1e-5, atol=1e-5
    )
    # The output's statistics are the style's (up to epsilon).
    spatial = tuple(a for a in range(1, rank) if a != axis % rank)
    np.testing.assert_allclose(
        got.mean(axis=spatial), style.mean(axis=spatial), atol=1e-4
    )
    assert layer.weights == []


@pytest.mark.parametrize("axis", [-1, 1])
@pytest.mark.parametrize("rank", [3, 4, 5])
def test_gradients_of_both_inputs_match_numeric_ones(rank, axis):
    content, style = inputs(rank, axis, seed=3)
    upstream = helpers.random_input(content.shape, seed=9)
    layer = kn.AdaptiveInstanceNormalization(axis=axis)
    y, (d_content, d_style), _ = helpers.forward_and_grads(
        layer, [content, style], upstream
    )
    np.testing.assert_allclose(
        y, reference(content, style, axis), rtol=1e-5, atol=1e-5
    )

    def loss_of_content(c):
        return np.sum(reference(c, style, axis) * upstream)

    def loss_of_style(s):
        return np.sum(reference(content, s, axis) * upstream)

    np.testing.assert_allclose(
        d_content, numeric_gradient(loss_of_content, content), atol=2e-3
    )
    np.testing.assert_allclose(
        d_style, numeric_gradient(loss_of_style, style), atol=2e-3
    )
    assert np.abs(d_style).max() > 0.1  # the style's gradient is not cut


def test_constant_style_channel_gives_its_mean_and_finite_gradients():
    """A dead (constant) style channel: sigma 0, no NaN in the backward."""
    content, style = inputs(4, -1)
    style[..., 0] = 2.5
    upstream = helpers.random_input(content.shape, seed=9)
    layer = kn.AdaptiveInstanceNormalization()
    y, (d_content, d_style), _ = helpers.forward_and_grads(
        layer, [content, style], upstream
    )
    np.testing.assert_allclose(y[..., 0], 2.5, atol=1e-6)
    assert np.isfinite(d_content).all() and np.isfinite(d_style).all()
    # The mean still passes the gradient: d loss / d style = sum(up) / n.
    n = np.prod(style.shape[1:3])
    np.testing.assert_allclose(
        d_style[..., 0],
        np.broadcast_to(
            upstream[..., 0].sum(axis=(1, 2), keepdims=True) / n,
            d_style[..., 0].shape,
        ),
        rtol=1e-5,
        atol=1e-6,
    )


def test_epsilon_goes_under_the_content_variance_only():
    content = np.array([[[1.0], [3.0]]], "float32")  # variance 1
    style = np.array([[[10.0], [30.0]]], "float32")  # std 10, mean 20
    y = kn.ops.adaptive_instance_normalization(content, style, epsilon=3.0)
    np.testing.assert_allclose(
        helpers.to_numpy(y)[0, :, 0], [20 - 10 / 2, 20 + 10 / 2], rtol=1e-6
    )


def test_config_leaves_out_the_affine_arguments():
    config = kn.AdaptiveInstanceNormalization(axis=1, epsilon=1e-4).get_config()
    assert config["axis"] == 1 and config["epsilon"] == 1e-4
    assert "center" not in config and "gamma_initializer" not in config


def test_fit_trains_the_layers_before_it():
    """The content's gradient reaches a `Dense` before the layer in `fit`
    (the shared fit step has the layer first)."""
    content_in = keras.Input((None, None, 3))
    style_in = keras.Input((None, None, 3))
    dense = keras.layers.Dense(3)
    y = kn.AdaptiveInstanceNormalization()([dense(content_in), style_in])
    model = keras.Model([content_in, style_in], y)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    content, style = inputs(4, -1)
    target = np.flip(reference(content, style, -1), axis=1).astype("float32")
    kernel = helpers.to_numpy(dense.kernel).copy()
    history = model.fit(
        [content, style], target, epochs=3, batch_size=2, verbose=0
    )
    assert not np.allclose(helpers.to_numpy(dense.kernel), kernel)
    assert history.history["loss"][-1] < history.history["loss"][0]


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda c, s: [c], "list of two tensors"),
        (lambda c, s: [c, s, s], "list of two tensors"),
        (lambda c, s: c, "list of two tensors"),
        (lambda c, s: [c, s[:1]], "batch size"),
        (lambda c, s: [c, s[..., :2]], "channels"),
        (lambda c, s: [c, s[:, 0]], "rank"),
        (lambda c, s: [c[:, 0, 0], s[:, 0, 0]], "spatial axis"),
    ],
)
def test_bad_inputs_are_refused_at_build(call, match):
    content, style = inputs(4, -1)
    with pytest.raises(ValueError, match=match) as info:
        kn.AdaptiveInstanceNormalization()(call(content, style))
    assert "Received:" in str(info.value)


def test_bad_arguments():
    with pytest.raises(ValueError, match="epsilon"):
        kn.AdaptiveInstanceNormalization(epsilon=0.0)
    with pytest.raises((TypeError, ValueError), match="axis"):
        kn.AdaptiveInstanceNormalization(axis=[1, 2])
    with pytest.raises(ValueError, match="rank"):
        kn.ops.adaptive_instance_normalization(
            np.zeros((2, 3, 3)), np.zeros((2, 3, 3, 3))
        )


def test_empty_batch_gives_both_inputs_gradients_of_their_shape():
    """The shared check takes gradients of an empty batch for layers with
    weights only; AdaIN has none, but two inputs to differentiate."""
    content, style = (a[:0] for a in inputs(4, -1))
    layer = kn.AdaptiveInstanceNormalization()
    _, (d_content, d_style), _ = helpers.forward_and_grads(
        layer, [content, style], np.zeros(content.shape, "float32")
    )
    assert d_content.shape == content.shape and d_style.shape == style.shape


class TestSharedChecks(layer_checks.LayerChecks):
    # [content, style], the style of other spatial sizes. No weights, no
    # state, no keras.layers twin; it drops masks (supports_masking False).
    cases = {
        "channels_last": layer_checks.Case(
            lambda: kn.AdaptiveInstanceNormalization(),
            list(SHAPES[4]),
        ),
        "channels_first": layer_checks.Case(
            lambda: kn.AdaptiveInstanceNormalization(axis=1, epsilon=1e-3),
            [layout(s, 1) for s in SHAPES[3]],
            fit=False,
        ),
    }
    test_weights_match_keras_twin = None
