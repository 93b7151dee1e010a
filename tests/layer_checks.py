"""The checks every public layer passes, shared by the modules in tests/layers/.

Keras' own layer-test helper is private, so this is ours: one function per
check, each usable on its own, and `LayerChecks`, a base class that runs
them all on a module's cases. A layer module subclasses it once:

    class TestSharedChecks(layer_checks.LayerChecks):
        cases = {
            "channels_first": layer_checks.Case(
                lambda: kn.BatchNormalization(momentum=0.5, axis=1),
                (4, 3, 5, 6),
                state=("moving_mean", "moving_variance"),
                twin=lambda: keras.layers.BatchNormalization(
                    momentum=0.5, axis=1
                ),
            ),
        }
        masking = layer_checks.Masking(
            kn.BatchNormalization, (4, 6, 3), excludes_masked=True
        )

and gets, per case: config round trip, symbolic and eager call, a `fit`
step then `.keras` save/load with all state (unless `fit=False`), mixed
precision (`mixed_float16` and `mixed_bfloat16`), an empty batch, weights
against the `keras.layers` twin (where `twin` is set); and one masking
check. A layer without a `keras.layers` twin sets
`test_weights_match_keras_twin = None`. A layer called on a list of inputs
gives a list of shapes, one per input (`Case(make, [(2, 4, 3), (2, 5)])`):
each input gets its own random values, and the empty batch 0 rows in each.

The checks use only the public API (`keras_norms.X`, `keras.*`), so they
hold whatever the layers do inside.
"""

import dataclasses
import json
from typing import Callable
from typing import Optional

import keras
import numpy as np
import pytest

from tests import helpers

POLICIES = ("mixed_float16", "mixed_bfloat16")
# Output tolerances under each policy, against a float32 layer on the same
# (rounded) input. float16 keeps 11 significant bits, bfloat16 8: rounding
# the output alone costs up to 2.5e-4 and 2e-3 of its size; the statistics
# are computed in float32, so little more is allowed.
MIXED_TOLERANCE = {
    "mixed_float16": dict(rtol=2e-3, atol=5e-3),
    "mixed_bfloat16": dict(rtol=1e-2, atol=2e-2),
}
# WeightNormalization and WeightStandardization run the wrapped Dense/Conv
# in the compute dtype, as the plain Keras layer does: a sum of products of
# rounded inputs and kernel, whose bfloat16 error grows with the fan-in.
WRAPPER_MIXED_TOLERANCE = {
    "mixed_float16": dict(rtol=5e-3, atol=5e-3),
    "mixed_bfloat16": dict(rtol=5e-2, atol=1e-1),
}


@dataclasses.dataclass(frozen=True)
class Case:
    """One configuration of a layer for the shared checks.

    Attributes:
        make: Callable returning a fresh, unbuilt layer.
        shape: Input shape, batch included; for a layer called on a list
            of inputs, the list of their shapes.
        state: Names of the non-trainable weights a training step moves
            (moving statistics, ...); every other one must stay put.
        twin: Callable returning the `keras.layers` layer with the same
            arguments, or `None` where Keras has none.
        mixed_tolerance: Overrides `MIXED_TOLERANCE` (policy -> kwargs of
            `assert_allclose`).
        fit: Whether the `fit` step and save/load run on this case. They
            compile a train step on JAX and TensorFlow (seconds each): one
            or two cases per layer, those with the most state, suffice.
    """

    make: Callable
    shape: tuple
    state: tuple = ()
    twin: Optional[Callable] = None
    mixed_tolerance: Optional[dict] = None
    fit: bool = True


@dataclasses.dataclass(frozen=True)
class Masking:
    """How a layer treats a Keras mask.

    Attributes:
        make: Callable returning a fresh layer for a rank-3 input.
        shape: A rank-3 `(batch, steps, channels)` input shape; for a layer
            of several inputs, a list of shapes whose first is that one
            (the only input masked).
        excludes_masked: Whether training statistics skip the masked
            positions (`call` takes `mask`, as keras.layers.BatchNormalization).
            Otherwise the layer only passes the mask on.
    """

    make: Callable
    shape: tuple
    excludes_masked: bool = False


def _per_input(fn, value):
    """`fn(value)`, or `[fn(v) for v in value]` where `value` is a list:
    the shapes, arrays or tensors of a layer's several inputs."""
    if isinstance(value, list):
        return [fn(v) for v in value]
    return fn(value)


def _first(value):
    """The first input of several (the one the output is shaped like)."""
    return value[0] if isinstance(value, list) else value


def _with_first(value, first):
    """`value` with its first input (of several) replaced by `first`."""
    return [first] + value[1:] if isinstance(value, list) else first


def _random(shape, seed=0, **kwargs):
    """`helpers.random_input`, each of several inputs of its own seed."""
    if isinstance(shape, list):
        return [
            helpers.random_input(s, seed=seed + i, **kwargs)
            for i, s in enumerate(shape)
        ]
    return helpers.random_input(shape, seed=seed, **kwargs)


def _keras_input(shape):
    """`keras.Input`(s) for `shape` without its batch size."""
    return _per_input(lambda s: keras.Input(s[1:]), shape)


def _assert_plain_python(value, where="config"):
    """JSON types only: no NumPy scalars hiding in a config."""
    if isinstance(value, dict):
        for key, item in value.items():
            _assert_plain_python(item, f"{where}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _assert_plain_python(item, f"{where}[{i}]")
    else:
        assert not isinstance(value, np.generic), where


def _json(config):
    return json.loads(json.dumps(config))


def _weight_summary(layer):
    return [
        (
            w.name,
            tuple(w.shape),
            w.trainable,
            keras.backend.standardize_dtype(w.dtype),
        )
        for w in layer.weights
    ]


def check_config_round_trip(layer, input_shape=None):
    """`from_config(get_config())` gives the same config, before and after
    `build`; the config is plain JSON and the class registered for saving.

    Returns:
        The clone made from the unbuilt layer's config.
    """
    config = layer.get_config()
    json.dumps(config)
    _assert_plain_python(config)
    clone = helpers.assert_config_round_trip(layer)
    assert type(clone) is type(layer)
    name = keras.saving.get_registered_name(type(layer))
    assert name.startswith("keras_norms>"), name
    if input_shape is not None:
        layer.build(input_shape)
        built = helpers.assert_config_round_trip(layer)
        built.build(input_shape)
        assert _weight_summary(built) == _weight_summary(layer)
    return clone


def check_symbolic_and_eager_call(make, shape):
    """A symbolic call (`keras.Input`, unknown batch) infers the eager
    call's shape; a functional model on it gives the eager output; a layer
    built by an eager call gives it too."""
    symbolic_shape = _per_input(lambda s: (None,) + tuple(s[1:]), shape)
    layer = make()
    inputs = _keras_input(shape)
    outputs = layer(inputs)
    expected = tuple(layer.compute_output_shape(symbolic_shape))
    assert tuple(outputs.shape) == expected
    model = keras.Model(inputs, outputs)
    helpers.set_random_weights(layer)
    x = _random(shape, loc=1.0, scale=2.0)
    eager = helpers.to_numpy(layer(x, training=False))
    assert eager.shape == (_first(shape)[0],) + expected[1:]
    assert np.all(np.isfinite(eager))
    np.testing.assert_array_equal(
        helpers.to_numpy(model(x, training=False)), eager
    )
    fresh = make()
    fresh(x, training=False)  # built by an eager call
    fresh.set_weights(layer.get_weights())
    np.testing.assert_allclose(
        helpers.to_numpy(fresh(x, training=False)), eager, rtol=1e-6, atol=1e-6
    )
    assert tuple(fresh(_keras_input(shape)).shape) == expected


def check_fit_step(case, epochs=4):
    """`fit` lowers the loss, moves every trainable weight of the layer
    and exactly the non-trainable ones named in `case.state`.

    The layer sits before `Flatten` and `Dense(1)`, the target a function
    of its (first) input; train steps are compiled on TensorFlow and JAX
    (XLA) and eager on torch (torch.compile is too slow to start on CPU
    for a unit test).

    Returns:
        `(model, x)`: the trained model and its inputs.
    """
    n = 32
    shape = _per_input(lambda s: (n,) + tuple(s[1:]), case.shape)
    x = _random(shape, loc=2.0, scale=3.0)
    y = np.tanh(_first(x).reshape(n, -1).mean(axis=1, keepdims=True))
    inputs = _keras_input(shape)
    layer = case.make()
    outputs = keras.layers.Dense(1)(keras.layers.Flatten()(layer(inputs)))
    model = keras.Model(inputs, outputs)
    before = [helpers.to_numpy(w).copy() for w in layer.weights]
    model.compile(
        keras.optimizers.Adam(0.02),
        "mse",
        jit_compile=helpers.BACKEND != "torch",
    )
    loss_before = model.evaluate(x, y, verbose=0)
    model.fit(x, y, epochs=epochs, batch_size=8, verbose=0)
    loss_after = model.evaluate(x, y, verbose=0)
    assert loss_after < loss_before, (loss_before, loss_after)
    for w, old in zip(layer.weights, before):
        moved = not np.array_equal(helpers.to_numpy(w), old)
        should_move = w.trainable or w.name in case.state
        assert moved == should_move, (w.path, "moved" if moved else "stayed")
    return model, x


def check_saves_and_loads(model, x, tmp_path):
    """`.keras` save/load without custom_objects: every variable (moving
    statistics and the like included) and the inference output equal."""
    loaded = helpers.assert_saves_and_loads(model, x, tmp_path)
    assert len(loaded.weights) == len(model.weights)
    for ours, theirs in zip(model.layers, loaded.layers):
        assert type(theirs) is type(ours)
        # Through JSON: a wrapped layer's build_config shape comes back a list.
        assert _json(theirs.get_config()) == _json(ours.get_config())
    return loaded


def check_mixed_precision(case, policy):
    """Under `policy`: output in the compute dtype, weights and statistics
    in float32, the output (training and inference) that of a float32
    layer on the same rounded input, the statistics equal to its.

    Returns:
        `(layer, reference)`, the mixed and the float32 layer after the
        calls (training, then inference).
    """
    x = _random(case.shape, loc=1.0, scale=2.0)
    reference = case.make()
    reference.build(case.shape)
    helpers.set_random_weights(reference)
    keras.mixed_precision.set_global_policy(policy)
    try:
        layer = case.make()
    finally:
        keras.mixed_precision.set_global_policy("float32")
    layer.build(case.shape)
    layer.set_weights(reference.get_weights())
    compute = policy.split("_")[1]
    assert layer.compute_dtype == compute
    x_half = _per_input(lambda a: keras.ops.cast(a, compute), x)
    # The reference sees the same rounding of the input: what is compared
    # is the layer's own error.
    x_rounded = _per_input(
        lambda a: helpers.to_numpy(keras.ops.cast(a, "float32")), x_half
    )
    tolerance = (case.mixed_tolerance or MIXED_TOLERANCE)[policy]
    for training in (True, False):
        y = layer(x_half, training=training)
        assert keras.backend.standardize_dtype(y.dtype) == compute
        np.testing.assert_allclose(
            helpers.to_numpy(keras.ops.cast(y, "float32")),
            helpers.to_numpy(reference(x_rounded, training=training)),
            err_msg=f"training={training}",
            **tolerance,
        )
    for w, ref in zip(layer.weights, reference.weights):
        assert keras.backend.standardize_dtype(w.dtype) == "float32", w.path
        if not w.trainable:
            np.testing.assert_allclose(
                helpers.to_numpy(w),
                helpers.to_numpy(ref),
                rtol=1e-5,
                atol=1e-6,
                err_msg=w.path,
            )
    return layer, reference


def check_masking(masking):
    """A Keras mask flows on through the layer (a masked average after it
    sees the kept steps only); where the layer `excludes_masked`, values at
    masked positions reach neither the output nor the statistics. Of
    several inputs, the first is masked."""
    n, steps, _ = _first(masking.shape)
    mask = np.random.RandomState(4).rand(n, steps) > 0.35
    mask[:, 0] = True
    x = _random(masking.shape, loc=1.0, scale=2.0)
    _first(x)[~mask] = 0.0  # keras.layers.Masking(0.0) marks all-zero steps
    make = masking.make
    layer = make()
    inputs = _keras_input(masking.shape)
    h = layer(_with_first(inputs, keras.layers.Masking(0.0)(_first(inputs))))
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling1D()(h))
    assert layer.supports_masking
    helpers.set_random_weights(layer)
    full = helpers.to_numpy(layer(x, training=False))
    expected = (full * mask[..., None]).sum(1) / mask.sum(1)[:, None]
    np.testing.assert_allclose(
        helpers.to_numpy(model(x, training=False)),
        expected,
        rtol=1e-5,
        atol=1e-5,
    )
    if not masking.excludes_masked:
        return
    junk = _with_first(x, _first(x).copy())
    _first(junk)[~mask] = 1e3
    masks = _with_first(_per_input(lambda a: None, x), mask)
    first, second = make(), make()
    for other in (first, second):
        other.build(masking.shape)
        other.set_weights(layer.get_weights())
    y = helpers.to_numpy(first(x, training=True, mask=masks))
    y_junk = helpers.to_numpy(second(junk, training=True, mask=masks))
    np.testing.assert_allclose(y_junk[mask], y[mask], rtol=1e-5, atol=1e-5)
    for a, b in zip(first.weights, second.weights):
        np.testing.assert_allclose(
            helpers.to_numpy(b),
            helpers.to_numpy(a),
            rtol=1e-5,
            atol=1e-6,
            err_msg=a.path,
        )


def check_empty_batch(make, shape, gradients=True):
    """An empty batch gives an empty output and leaves every state as it
    was, in training and at inference; its gradients are zeros, not NaN."""
    layer = make()
    x = _random(shape, seed=5)
    layer.build(shape)
    state = {w.path: helpers.to_numpy(w) for w in layer.non_trainable_weights}
    empty = _per_input(lambda a: a[:0], x)
    expected = tuple(layer.compute_output_shape(shape))[1:]
    for training in (True, False, True):
        y = helpers.to_numpy(layer(empty, training=training))
        assert y.shape == (0,) + expected
        for w in layer.non_trainable_weights:
            np.testing.assert_array_equal(
                helpers.to_numpy(w), state[w.path], err_msg=w.path
            )
    if gradients and layer.trainable_weights:
        upstream = np.zeros((0,) + expected, "float32")
        _, dx, grads = helpers.forward_and_grads(layer, empty, upstream)
        shapes = _per_input(np.shape, dx)
        assert shapes == _per_input(np.shape, empty)
        for key, g in grads.items():
            if g is not None:
                np.testing.assert_array_equal(g, 0.0, err_msg=key)


def check_empty_batch_in_an_unknown_batch_graph(make):
    """TensorFlow: in a `tf.function` of unknown batch size, an empty batch
    keeps every state; a batch with samples still updates it."""
    import tensorflow as tf

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
    assert not np.array_equal(helpers.to_numpy(layer.moving_mean), state[0])


def check_weights_match_keras_twin(ours, theirs, shape):
    """Built on `shape`, the same weights as the `keras.layers` twin: count,
    order, names, shapes, trainable flags and dtypes."""
    ours.build(shape)
    theirs.build(shape)
    assert _weight_summary(ours) == _weight_summary(theirs)


# ---------------------------------------------------------------------------
# BatchNormalization and SyncBatchNormalization: Keras' mask on any axis
# ---------------------------------------------------------------------------
# (4, 3, 3) has C == T, where expanding the mask at the channel axis
# computed other statistics silently; (5, 2, 3) did not broadcast at all.
MASK_AXIS_CASES = [
    ((4, 3, 3), 1),
    ((5, 2, 3), 1),
    ((5, 2, 3, 4), 2),
    ((5, 2, 3, 4), -1),
]


def _masked_moments(x, mask, axis):
    """NumPy reference: Keras' mask (all axes but the last) expanded at the
    last axis, the moments per `axis` over the unmasked positions."""
    weights = np.broadcast_to(mask[..., None], x.shape).astype("float64")
    reduce = tuple(a for a in range(x.ndim) if a != axis % x.ndim)
    count = weights.sum(axis=reduce, keepdims=True)
    mean = (weights * x).sum(axis=reduce, keepdims=True) / count
    var = (weights * (x - mean) ** 2).sum(axis=reduce, keepdims=True) / count
    return mean, var


def check_mask_on_any_axis_as_keras(cls, shape, axis):
    """Keras' mask marks all axes but the last and is expanded there, also
    with axis=1: output and moving statistics as
    keras.layers.BatchNormalization and as NumPy over the kept positions."""
    x = helpers.random_input(shape, loc=1.0, scale=2.0).astype("float64")
    mask = np.random.RandomState(5).rand(*shape[:-1]) > 0.35
    x[~mask] = np.nan  # masked positions never reach the statistics
    x = x.astype("float32")
    ours = cls(axis=axis, momentum=0.0)
    theirs = keras.layers.BatchNormalization(axis=axis, momentum=0.0)
    y = helpers.to_numpy(ours(x, training=True, mask=mask))
    ry = helpers.to_numpy(theirs(x, training=True, mask=mask))
    mean, var = _masked_moments(np.nan_to_num(x), mask, axis)
    expected = (x - mean) / np.sqrt(var + 1e-3)
    kept = np.broadcast_to(mask[..., None], shape)
    np.testing.assert_allclose(y[kept], expected[kept], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(y[kept], ry[kept], rtol=1e-4, atol=1e-4)
    for name in ("moving_mean", "moving_variance"):
        np.testing.assert_allclose(
            helpers.to_numpy(getattr(ours, name)),
            helpers.to_numpy(getattr(theirs, name)),
            rtol=1e-4,
            atol=1e-5,
        )
    np.testing.assert_allclose(
        helpers.to_numpy(ours.moving_mean), mean.ravel(), rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(
        helpers.to_numpy(ours.moving_variance),
        var.ravel(),
        rtol=1e-4,
        atol=1e-5,
    )


class LayerChecks:
    """Runs every shared check on a module's `cases` (see the module doc).

    Subclass it as `TestSharedChecks` in the layer's test module and set
    `cases` (name -> `Case`), `masking` (a `Masking`, or `None` where the
    layer drops masks) and, where the layer's gradients on an empty batch
    are not defined, `empty_batch_gradients = False`.
    """

    cases = {}
    masking = None
    empty_batch_gradients = True

    def pytest_generate_tests(self, metafunc):
        # pytest calls this method of a test class for each of its tests.
        if "case" in metafunc.fixturenames:
            cases = self.cases
            if metafunc.function.__name__.startswith("test_fit_step"):
                cases = {k: c for k, c in cases.items() if c.fit}
            if metafunc.function.__name__ == "test_weights_match_keras_twin":
                cases = {k: c for k, c in cases.items() if c.twin is not None}
                assert cases, (
                    "no case has a `twin`: set test_weights_match_keras_twin "
                    "= None where keras.layers has no such layer"
                )
            metafunc.parametrize("case", list(cases.values()), ids=list(cases))
        if "policy" in metafunc.fixturenames:
            metafunc.parametrize("policy", POLICIES)

    def test_config_round_trip(self, case):
        check_config_round_trip(case.make(), case.shape)

    def test_symbolic_and_eager_call(self, case):
        check_symbolic_and_eager_call(case.make, case.shape)

    def test_fit_step_then_save_and_load_all_state(self, case, tmp_path):
        model, x = check_fit_step(case)
        check_saves_and_loads(model, x, tmp_path)

    def test_mixed_precision(self, case, policy):
        check_mixed_precision(case, policy)

    def test_masking(self):
        if self.masking is None:
            # Keras drops the mask at such a layer; say so, so that adding
            # mask support comes with a `Masking` case here.
            case = next(iter(self.cases.values()))
            assert not case.make().supports_masking
            return
        check_masking(self.masking)

    def test_empty_batch(self, case):
        check_empty_batch(case.make, case.shape, self.empty_batch_gradients)

    def test_weights_match_keras_twin(self, case):
        check_weights_match_keras_twin(case.make(), case.twin(), case.shape)


# ---------------------------------------------------------------------------
# WeightNormalization and WeightStandardization: one message for a wrong rank
# ---------------------------------------------------------------------------
# (wrapped layer, a good input shape, a bad one, Keras' message for it)
WRONG_RANK_CASES = [
    (
        lambda: keras.layers.Conv2D(2, 3),
        (2, 5, 5, 3),
        (5, 5, 3),
        "expected min_ndim=4",
    ),
    (lambda: keras.layers.Dense(2), (2, 3), (3,), "expected min_ndim=2"),
]


def check_wrong_rank_message(wrapper, make, shape, bad, message):
    """The wrapper refuses an input of the wrong rank with the wrapped
    layer's own input-spec message, on every backend."""
    layer = wrapper(make())
    layer(np.ones(shape, "float32"))
    with pytest.raises(ValueError, match=message):
        layer(np.ones(bad, "float32"))
