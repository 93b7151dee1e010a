"""Backend-agnostic test helpers shared by the test modules.

Keras' own layer-test helper is private, so this is a small one of ours:
forward and gradients on any backend, independent references (NumPy from
the papers' formulas, and `torch.nn.functional` as a peer), and the checks
every layer must pass (config round trip, `.keras` save/load with state,
a `fit` that lowers the loss, mixed precision).
"""

import os
import tempfile

import keras
import numpy as np

from keras_norms import backend as kn_backend

BACKEND = keras.backend.backend()


def to_numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def infer(model, x):
    """`model(x, training=False)` as NumPy, wherever the backend can run it.

    A plain Keras channels-first convolution cannot run op by op on a
    TensorFlow CPU without oneDNN; there the call is XLA-compiled
    (`keras_norms.backend.call_for_inference`), as a user's would be.
    """
    return to_numpy(kn_backend.call_for_inference(model, x))


def all_layers(model):
    """Every layer of `model`, nested models' layers included."""
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from all_layers(layer)


def count_layers(model, classes):
    """How many layers of `model` (nested included) are `classes`."""
    return sum(isinstance(layer, classes) for layer in all_layers(model))


def skip_without_channels_first_conv():
    """Skip where TensorFlow cannot run an NCHW convolution op by op."""
    import pytest

    if not kn_backend.channels_first_conv_supported():
        pytest.skip(
            "TensorFlow's CPU convolution kernels refuse channels-first "
            "(NCHW) inputs outside XLA when oneDNN is off (probed)"
        )


def random_input(shape, seed=0, loc=0.0, scale=1.0, dtype="float32"):
    rng = np.random.RandomState(seed)
    return (loc + scale * rng.randn(*shape)).astype(dtype)


def set_random_weights(layer, seed=1):
    """Give every weight a random value (variances positive)."""
    rng = np.random.RandomState(seed)
    for w in layer.weights:
        value = rng.uniform(0.5, 1.5, size=w.shape)
        if "variance" not in w.name and "rho" not in w.name:
            value = rng.randn(*w.shape)
        # np.asarray: a scalar weight draws a Python float.
        w.assign(np.asarray(value, "float32"))


def forward_and_grads(layer, x, upstream=None, training=True):
    """`(y, dx, {weight name: grad})` for `loss = sum(y * upstream)`.

    Uses `stateless_call`, so state updates are not applied. Works on the
    TensorFlow, JAX and torch backends with the backend's own autodiff.
    For a layer of several inputs, `x` is a list of arrays and `dx` the
    list of their gradients (the default `upstream` has the first
    input's shape).
    """
    several = isinstance(x, (list, tuple))
    if several:
        x = [np.asarray(a, dtype="float32") for a in x]
        shape = [a.shape for a in x]
    else:
        x = np.asarray(x, dtype="float32")
        shape = x.shape
    if not layer.built:
        layer.build(shape)
    if upstream is None:
        upstream = random_input(shape[0] if several else shape, seed=123)
    upstream = np.asarray(upstream, dtype="float32")
    names = [v.name for v in layer.trainable_variables]
    if len(set(names)) < len(names):  # sublayers' "kernel", "bias", ...
        names = [v.path for v in layer.trainable_variables]
    tv = [to_numpy(v) for v in layer.trainable_variables]
    ntv = [v.value for v in layer.non_trainable_variables]

    if BACKEND == "jax":
        import jax
        import jax.numpy as jnp

        def loss(tv, x):
            y, _ = layer.stateless_call(tv, ntv, x, training=training)
            return jnp.sum(y.astype("float32") * upstream), y

        # One compiled function rather than op-by-op dispatch: faster.
        (_, y), (gtv, gx) = jax.jit(
            jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)
        )([jnp.asarray(t) for t in tv], jax.tree_util.tree_map(jnp.asarray, x))
    elif BACKEND == "tensorflow":
        import tensorflow as tf

        tvt = [tf.constant(t) for t in tv]
        xt = [tf.constant(a) for a in x] if several else tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(tvt)
            tape.watch(xt)
            y, _ = layer.stateless_call(tvt, ntv, xt, training=training)
            loss = tf.reduce_sum(tf.cast(y, "float32") * upstream)
        gtv, gx = tape.gradient(loss, [tvt, xt])
    elif BACKEND == "torch":
        import torch

        tvt = [torch.tensor(t, requires_grad=True) for t in tv]
        if several:
            xt = [torch.tensor(a, requires_grad=True) for a in x]
        else:
            xt = torch.tensor(x, requires_grad=True)
        y, _ = layer.stateless_call(tvt, ntv, xt, training=training)
        loss = torch.sum(y.float() * torch.tensor(upstream))
        loss.backward()
        gtv = [t.grad for t in tvt]
        gx = [t.grad for t in xt] if several else xt.grad
    else:  # pragma: no cover
        raise NotImplementedError(BACKEND)
    grads = {
        n: (None if g is None else to_numpy(g)) for n, g in zip(names, gtv)
    }
    gx = [to_numpy(g) for g in gx] if several else to_numpy(gx)
    return to_numpy(y), gx, grads


def torch_reference(fn, x, params, upstream, channel_axis):
    """Run a `torch.nn.functional` norm in float64 with autograd.

    `x` is moved so its channel axis is axis 1 (torch's layout), and the
    output and input gradient moved back. `params` maps names to NumPy
    arrays that get gradients; `fn(x, **params)` is the torch call.

    Returns `(y, dx, {name: grad})` as NumPy arrays.
    """
    import torch

    xt = torch.tensor(
        np.moveaxis(x, channel_axis, 1), dtype=torch.float64, requires_grad=True
    )
    pt = {
        k: torch.tensor(v, dtype=torch.float64, requires_grad=True)
        for k, v in params.items()
    }
    y = fn(xt, **pt)
    up = torch.tensor(
        np.moveaxis(upstream, channel_axis, 1), dtype=torch.float64
    )
    (y * up).sum().backward()
    return (
        np.moveaxis(y.detach().numpy(), 1, channel_axis),
        np.moveaxis(xt.grad.numpy(), 1, channel_axis),
        {k: t.grad.numpy() for k, t in pt.items()},
    )


def numpy_normalize(x, reduce_axes, epsilon, gamma=None, beta=None):
    """The papers' formula in float64: `gamma * (x - mu) / sqrt(var + eps) + beta`."""
    x = x.astype("float64")
    mean = x.mean(axis=tuple(reduce_axes), keepdims=True)
    var = ((x - mean) ** 2).mean(axis=tuple(reduce_axes), keepdims=True)
    y = (x - mean) / np.sqrt(var + epsilon)
    if gamma is not None:
        y = y * gamma
    if beta is not None:
        y = y + beta
    return y


def broadcast_param(value, ndim, axis):
    """Reshape a per-channel vector to broadcast along `axis` of rank `ndim`."""
    shape = [1] * ndim
    shape[axis] = -1
    return np.reshape(value, shape)


def assert_config_round_trip(layer):
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    return clone


def assert_saves_and_loads(model, x, tmp_path=None):
    """Save as `.keras`, load without custom_objects, compare outputs + state."""
    directory = tmp_path or tempfile.mkdtemp()
    path = os.path.join(str(directory), "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    for a, b in zip(model.weights, loaded.weights):
        assert a.name == b.name
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    np.testing.assert_allclose(
        to_numpy(loaded(x, training=False)),
        to_numpy(model(x, training=False)),
        rtol=1e-6,
        atol=1e-6,
    )
    return loaded


def numeric_gradients(loss, arrays, eps=1e-6):
    """Central finite differences of the scalar `loss()` w.r.t. each array.

    `arrays` are float64 NumPy arrays that `loss` reads; each is perturbed
    in place one value at a time and restored. The gradient reference for
    a NumPy formula with no closed-form gradient at hand.
    """
    grads = []
    for array in arrays:
        grad = np.zeros_like(array)
        flat, gflat = array.reshape(-1), grad.reshape(-1)
        for i in range(flat.size):
            old = flat[i]
            flat[i] = old + eps
            hi = loss()
            flat[i] = old - eps
            lo = loss()
            flat[i] = old
            gflat[i] = (hi - lo) / (2 * eps)
        grads.append(grad)
    return grads


def channels_at(x, axis):
    """A channels-last array with its channels moved to `axis` (contiguous)."""
    return np.ascontiguousarray(np.moveaxis(x, -1, axis % x.ndim))


def run_python(source, timeout=300):
    """Run `source` in a fresh Python from the repository root.

    The child imports this checkout's `keras_norms` and the session's
    backend (`KERAS_BACKEND` is inherited); TensorFlow's C++ logging is
    off. Returns the `subprocess.CompletedProcess` (text output).
    """
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return subprocess.run(
        [sys.executable, "-c", source],
        cwd=root,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class Interrupted(OSError):
    """The simulated interruption of `interrupt_moves`."""


def interrupt_moves(monkeypatch, at, killed):
    """Make the `at`-th `os.replace` from now on raise `Interrupted`.

    `killed=False`: that move alone fails (an error the code can recover
    from). `killed=True`: every move from the `at`-th on fails, as if the
    process had died there: the files stay as they were at that moment,
    whatever the code tries next. Returns the list of the calls'
    `(source, destination)`, the failed ones included. Pass a
    `pytest.MonkeyPatch.context()` to restore `os.replace` when it ends.
    """
    real = os.replace
    calls = []

    def replace(source, destination, **kwargs):
        calls.append((source, destination))
        if len(calls) == at or (killed and len(calls) > at):
            raise Interrupted(f"interrupted at move {at}")
        real(source, destination, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    return calls
