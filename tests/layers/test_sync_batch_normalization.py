"""SyncBatchNormalization: global-batch statistics through each backend's
own distribution machinery.

In process (every backend): outside any distribution it is exactly
BatchNormalization. Distributed (the current KERAS_BACKEND only, in a
subprocess, because device counts and process groups must be configured
before the backend initializes): two replicas, each with its shard of a
global batch, must give the outputs, input and parameter gradients and
moving statistics of BatchNormalization on the whole global batch on one
device, where plain BatchNormalization (per-replica statistics) does not.

- tensorflow: MirroredStrategy over two logical CPU devices
  (tests/sync_workers/tf_worker.py);
- jax: keras.distribution.DataParallel over two host devices
  (XLA_FLAGS=--xla_force_host_platform_device_count=2; jax_worker.py);
- torch: two processes on the gloo backend (torch_worker.py).

Plus the shared checks (tests/layer_checks.py).
"""

import inspect
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_norms as kn
from keras_norms import backend as kn_backend
from keras_norms.layers.batch_normalization import BatchNormalization
from keras_norms.layers.sync_batch_normalization import SyncBatchNormalization
from tests import helpers
from tests import layer_checks

BACKEND = keras.backend.backend()
TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(TESTS)
WORKERS = os.path.join(TESTS, "sync_workers")
sys.path.insert(0, WORKERS)

import _common  # noqa: E402

EPSILON = 1e-3  # the default of both layers
STATISTICS = ("moving_mean", "moving_variance")


class TestSharedChecks(layer_checks.LayerChecks):
    cases = {
        "channels_last": layer_checks.Case(
            lambda: kn.SyncBatchNormalization(),
            (2, 3, 3, 4),
            state=STATISTICS,
            twin=lambda: keras.layers.BatchNormalization(),
        ),
        "channels_first": layer_checks.Case(
            lambda: kn.SyncBatchNormalization(
                axis=1, momentum=0.9, center=False
            ),
            (4, 3, 5),
            state=STATISTICS,
            twin=lambda: keras.layers.BatchNormalization(
                axis=1, momentum=0.9, center=False
            ),
            fit=False,
        ),
    }
    masking = layer_checks.Masking(
        kn.SyncBatchNormalization, (4, 6, 3), excludes_masked=True
    )


# ----------------------------------------------------------------------
# Outside any distribution: exactly BatchNormalization.
# ----------------------------------------------------------------------
def _pair(**kwargs):
    sync = SyncBatchNormalization(**kwargs)
    plain = BatchNormalization(**kwargs)
    return sync, plain


@pytest.mark.parametrize("axis, shape", [(-1, (6, 3, 4)), (1, (4, 3, 2, 2))])
def test_equals_batch_normalization_outside_distribution(axis, shape):
    assert kn_backend.num_replicas() == 1
    x = helpers.random_input(shape, seed=2, loc=1000.0)
    sync, plain = _pair(axis=axis, momentum=0.5)
    for layer in (sync, plain):
        layer.build(shape)
        helpers.set_random_weights(layer, seed=3)
    # Training: outputs and every gradient identical.
    y_s, dx_s, g_s = helpers.forward_and_grads(sync, x)
    y_p, dx_p, g_p = helpers.forward_and_grads(plain, x)
    np.testing.assert_array_equal(y_s, y_p)
    np.testing.assert_array_equal(dx_s, dx_p)
    for name in g_p:
        np.testing.assert_array_equal(g_s[name], g_p[name])
    # ... and against the paper's formula in float64.
    reduce_axes = [a for a in range(len(shape)) if a != axis % len(shape)]
    gamma = helpers.broadcast_param(
        helpers.to_numpy(sync.gamma), len(shape), axis
    )
    beta = helpers.broadcast_param(
        helpers.to_numpy(sync.beta), len(shape), axis
    )
    np.testing.assert_allclose(
        y_s,
        helpers.numpy_normalize(x, reduce_axes, EPSILON, gamma, beta),
        atol=2e-3,
    )
    # Moving statistics after a stateful training call, then inference.
    for layer in (sync, plain):
        layer(x, training=True)
    for name in ("moving_mean", "moving_variance"):
        np.testing.assert_array_equal(
            helpers.to_numpy(getattr(sync, name)),
            helpers.to_numpy(getattr(plain, name)),
        )
    np.testing.assert_array_equal(
        helpers.to_numpy(sync(x, training=False)),
        helpers.to_numpy(plain(x, training=False)),
    )


def test_same_arguments_and_weights_as_batch_normalization():
    assert issubclass(SyncBatchNormalization, BatchNormalization)
    # It adds no argument: BatchNormalization's, with synchronized forced.
    assert inspect.signature(SyncBatchNormalization) == inspect.signature(
        BatchNormalization
    )
    assert SyncBatchNormalization(synchronized=False).synchronized
    sync, plain = _pair(axis=1, momentum=0.9, epsilon=1e-5, center=False)
    sync.build((2, 3, 4))
    plain.build((2, 3, 4))
    assert [w.name for w in sync.weights] == [w.name for w in plain.weights]
    clone = helpers.assert_config_round_trip(sync)
    assert isinstance(clone, SyncBatchNormalization)
    assert clone.get_config()["synchronized"] is True
    assert clone.get_config()["momentum"] == 0.9


def test_one_value_per_channel_outside_distribution_as_keras():
    layer = SyncBatchNormalization(momentum=0.5)
    x = np.full((1, 4), 3.0, "float32")
    y = helpers.to_numpy(layer(x, training=True))
    np.testing.assert_array_equal(y, 0.0)  # beta
    np.testing.assert_allclose(helpers.to_numpy(layer.moving_mean), 1.5)
    np.testing.assert_allclose(helpers.to_numpy(layer.moving_variance), 0.5)


@pytest.mark.parametrize("shape,axis", layer_checks.MASK_AXIS_CASES)
def test_mask_on_any_axis_is_expanded_at_the_last_axis_as_keras(shape, axis):
    layer_checks.check_mask_on_any_axis_as_keras(
        kn.SyncBatchNormalization, shape, axis
    )


def test_masked_shards_combine_into_the_masked_global_moments(monkeypatch):
    # The masked combine of cross_replica_moments, the replicas' one
    # collective replaced by the rows of two shards: channels-first, with
    # Keras' mask (all axes but the last, expanded at the last axis).
    from keras_norms import ops as kn_ops

    x = helpers.random_input((7, 3, 4), loc=2.0, scale=3.0)
    mask = np.random.RandomState(2).rand(7, 3) > 0.4
    layer = SyncBatchNormalization(axis=1)
    layer.build(x.shape)
    axes = layer._reduction_axes
    rows = {}

    def gather(row):
        rows.setdefault("first", row)
        return keras.ops.stack([rows["first"], row])

    monkeypatch.setattr(kn_backend, "all_gather_rows", gather)
    shards = [(x[:3], mask[:3]), (x[3:], mask[3:])]
    for shard, shard_mask in shards:
        mean, variance = kn_ops.cross_replica_moments(
            keras.ops.convert_to_tensor(shard),
            axes,
            layer._channel_mask(shard, keras.ops.convert_to_tensor(shard_mask)),
        )
    kept = np.moveaxis(np.broadcast_to(mask[..., None], x.shape), 1, -1)
    values = np.moveaxis(x, 1, -1).astype("float64")
    weights = kept.reshape(-1, 3)
    values = values.reshape(-1, 3)
    expected_mean = (weights * values).sum(0) / weights.sum(0)
    expected_var = (weights * (values - expected_mean) ** 2).sum(
        0
    ) / weights.sum(0)
    np.testing.assert_allclose(
        helpers.to_numpy(mean).ravel(), expected_mean, rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        helpers.to_numpy(variance).ravel(), expected_var, rtol=1e-5, atol=1e-5
    )


# ----------------------------------------------------------------------
# Distributed: the current backend's setup, in a subprocess.
# ----------------------------------------------------------------------
WORKER = {
    "tensorflow": "tf_worker.py",
    "jax": "jax_worker.py",
    "torch": "torch_worker.py",
}


def _make_inputs():
    rng = np.random.RandomState(0)
    f32 = "float32"
    return {
        # A large mean against the spread: a one-pass E[x^2] - E[x]^2
        # combination would be off by percents here.
        "x": (1000.0 + rng.randn(8, 3, 4)).astype(f32),
        "up_x": rng.randn(8, 3, 4).astype(f32),
        "x1": rng.randn(1, 4).astype(f32),
        "up_x1": rng.randn(1, 4).astype(f32),
        "gamma": rng.uniform(0.5, 1.5, 4).astype(f32),
        "beta": rng.randn(4).astype(f32),
        "target": rng.randn(8, 3, 4).astype(f32),
    }


@pytest.fixture(scope="module")
def inputs():
    return _make_inputs()


@pytest.fixture(scope="module")
def distributed(inputs, tmp_path_factory):
    """Run the current backend's distributed worker once; its results."""
    if BACKEND not in WORKER:
        pytest.skip(f"no distributed setup for the {BACKEND} backend")
    directory = tmp_path_factory.mktemp("sync_bn")
    inputs_path = str(directory / "inputs.npz")
    np.savez(inputs_path, **inputs)
    env = dict(os.environ)
    env["KERAS_BACKEND"] = BACKEND
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    # The workers import this checkout's keras_norms, not an installed one.
    env["PYTHONPATH"] = os.pathsep.join(
        [ROOT] + [p for p in [env.get("PYTHONPATH")] if p]
    )
    if BACKEND == "jax":
        env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(WORKERS, WORKER[BACKEND]),
            inputs_path,
            str(directory),
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    results = {}
    for name in sorted(os.listdir(directory)):
        if name.endswith(".npz") and name != "inputs.npz":
            with np.load(directory / name) as data:
                results.update({k: data[k] for k in data.files})
    return results


def _global_reference(inputs, n):
    """BatchNormalization on one device on the global batch of `n`."""
    x, up = inputs["x"][:n], inputs["up_x"][:n]
    layer = BatchNormalization(momentum=_common.MOMENTUM)
    layer.build((None,) + x.shape[1:])
    _common.set_weights(layer, inputs)
    y, dx, grads = helpers.forward_and_grads(layer, x, up)
    x64 = x.astype("float64")
    mean, var = x64.mean(axis=(0, 1)), x64.var(axis=(0, 1))
    m = _common.MOMENTUM
    return {
        "y": y,
        "y_numpy": helpers.numpy_normalize(
            x, (0, 1), EPSILON, inputs["gamma"], inputs["beta"]
        ),
        "dx": dx,
        "dgamma": grads["gamma"],
        "dbeta": grads["beta"],
        "moving_mean": m * 0.0 + (1 - m) * mean,
        "moving_variance": m * 1.0 + (1 - m) * var,
    }


def _cases(results):
    return [c for c in _common.CASES if f"{c}/0/y" in results]


def _concat(results, case, name):
    return np.concatenate([results[f"{case}/{r}/{name}"] for r in (0, 1)])


def _param_grad(results, case, name):
    """Gradient of the global loss: per-replica parts summed (TF, torch), or
    computed globally already (JAX)."""
    key = f"{case}/global/{name}"
    if key in results:
        return results[key]
    return results[f"{case}/0/{name}"] + results[f"{case}/1/{name}"]


@pytest.mark.parametrize("case", list(_common.CASES))
def test_distributed_matches_global_batch(distributed, inputs, case):
    if f"{case}/0/y" not in distributed:
        pytest.skip(
            "keras.distribution.DataParallel shards the batch evenly over "
            "the devices; unequal or empty shards cannot be fed"
        )
    sizes = _common.CASES[case]
    ref = _global_reference(inputs, sum(sizes))
    for r, size in enumerate(sizes):
        assert distributed[f"{case}/{r}/y"].shape[0] == size
    y = _concat(distributed, case, "y")
    assert np.all(np.isfinite(y))
    # Float32 noise at a mean of 1000 is ~1e-4 here; a one-pass
    # combination would be off by ~0.1 (test_inputs_defeat_one_pass).
    np.testing.assert_allclose(y, ref["y"], atol=5e-4)
    np.testing.assert_allclose(y, ref["y_numpy"], atol=5e-4)
    dx = _concat(distributed, case, "dx")
    assert np.all(np.isfinite(dx))
    np.testing.assert_allclose(dx, ref["dx"], atol=5e-4)
    for name in ("dgamma", "dbeta"):
        np.testing.assert_allclose(
            _param_grad(distributed, case, name),
            ref[name],
            rtol=2e-3,
            atol=2e-3,
        )
    for name in ("moving_mean", "moving_variance"):
        # Identical on every replica, and those of the global batch.
        np.testing.assert_array_equal(
            distributed[f"{case}/0/{name}"], distributed[f"{case}/1/{name}"]
        )
        np.testing.assert_allclose(
            distributed[f"{case}/0/{name}"], ref[name], rtol=1e-6, atol=1e-3
        )


def test_inputs_defeat_one_pass(inputs):
    """The distributed inputs make the tolerances above meaningful: a
    one-pass `E[x^2] - E[x]^2` over raw float32 sums misses the variance by
    far more than they allow."""
    x = inputs["x"]
    n = x.shape[0] * x.shape[1]
    s = x.sum(axis=(0, 1), dtype="float32")
    ss = (x * x).sum(axis=(0, 1), dtype="float32")
    one_pass = ss / np.float32(n) - (s / np.float32(n)) ** 2
    exact = x.astype("float64").var(axis=(0, 1))
    assert np.max(np.abs(one_pass - exact)) > 0.05


def test_plain_batch_normalization_per_replica(distributed, inputs):
    """Plain BN uses per-replica statistics where the backend runs one
    program per replica; on JAX the one GSPMD program already sees the
    global batch, so plain BN is synchronized there too."""
    ref = _global_reference(inputs, sum(_common.CASES["equal"]))
    bn_y = _concat(distributed, "equal", "bn_y")
    if BACKEND == "jax":
        np.testing.assert_allclose(bn_y, ref["y"], atol=2e-4)
        np.testing.assert_array_equal(bn_y, _concat(distributed, "equal", "y"))
        return
    assert np.max(np.abs(bn_y - ref["y"])) > 0.05
    # ... and equals BN applied to each shard on its own.
    for r, part in enumerate(
        _common.shards(inputs["x"], _common.CASES["equal"])
    ):
        layer = BatchNormalization()
        layer.build(part.shape)
        _common.set_weights(layer, inputs)
        np.testing.assert_allclose(
            distributed[f"equal/{r}/bn_y"],
            helpers.to_numpy(layer(part, training=True)),
            atol=2e-4,
        )


@pytest.mark.parametrize("case", list(_common.EDGE_CASES))
def test_distributed_one_value_or_none_per_channel(distributed, inputs, case):
    """As BatchNormalization on the global batch (Keras' answer): one value
    per channel gives `beta` and moves the moving variance towards 0; no
    value at all gives empty outputs and leaves the state unchanged."""
    if BACKEND == "jax":
        pytest.skip(
            "a global batch of one sample (or none) cannot be sharded over "
            "two devices; the layer sees the global shape "
            "(the shared empty-batch check, tests/layer_checks.py)"
        )
    sizes = _common.EDGE_CASES[case]
    x = inputs["x1"][: sum(sizes)].astype("float64")
    m = _common.MOMENTUM
    if sum(sizes):
        moving = {"moving_mean": (1 - m) * x[0], "moving_variance": m}
    else:
        moving = {"moving_mean": 0.0, "moving_variance": 1.0}
    prefixes = (
        [case] if BACKEND == "torch" else [f"{case}_eager", f"{case}_graph"]
    )
    for prefix in prefixes:
        for r, size in enumerate(sizes):
            y = distributed[f"{prefix}/{r}/y"]
            assert y.shape == (size, 4)
            np.testing.assert_allclose(
                y, np.broadcast_to(inputs["beta"], y.shape), atol=1e-5
            )
            for name in ("dx", "dgamma", "dbeta"):
                assert np.all(np.isfinite(distributed[f"{prefix}/{r}/{name}"]))
            for name, value in moving.items():
                np.testing.assert_allclose(
                    distributed[f"{prefix}/{r}/{name}"],
                    np.broadcast_to(value, (4,)),
                    atol=1e-6,
                    err_msg=f"{prefix}/{r}/{name}",
                )


def test_distributed_fit_step_matches_one_device(distributed, inputs):
    if "fit/0/gamma" not in distributed:
        pytest.skip("Keras' torch trainer does not drive torch.distributed")
    model = keras.Sequential(
        [keras.Input(inputs["x"].shape[1:]), BatchNormalization(momentum=0.5)]
    )
    _common.set_weights(model.layers[0], inputs)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    model.train_on_batch(inputs["x"], inputs["target"])
    for name in ("gamma", "beta", "moving_mean", "moving_variance"):
        np.testing.assert_array_equal(
            distributed[f"fit/0/{name}"], distributed[f"fit/1/{name}"]
        )
        np.testing.assert_allclose(
            distributed[f"fit/0/{name}"],
            helpers.to_numpy(getattr(model.layers[0], name)),
            rtol=1e-5,
            atol=1e-4,
        )


def test_one_collective_per_layer_per_step(distributed):
    """TensorFlow and torch: ONE collective per SyncBN layer in the forward
    (the packed [count, mean, M2] rows) and one in the backward (its
    gradient), counted in the traced TF graph and by a torch dispatch mode.
    JAX: no explicit collective; XLA inserts all-reduces, counted in the
    compiled HLO."""
    if BACKEND != "jax":
        assert float(distributed["collectives/forward"]) == 1
        assert float(distributed["collectives/train_step"]) == 2
        if BACKEND == "torch":
            assert "all_reduce" in str(distributed["collectives/names"])
        return
    # Each device really holds half of the batch.
    np.testing.assert_array_equal(distributed["equal/shard_sizes"], [4, 4])
    forward = {
        k.split("/")[-1]: int(v)
        for k, v in distributed.items()
        if k.startswith("hlo/forward/")
    }
    step = {
        k.split("/")[-1]: int(v)
        for k, v in distributed.items()
        if k.startswith("hlo/train_step/")
    }
    # The statistics are reduced across devices by all-reduces of
    # per-channel vectors that XLA inserts (the mean, then the variance that
    # depends on it: two in the forward; XLA 0.10 combines the variance's
    # with the backward's into one and adds one more, three in a step);
    # no gather of activations, no other collective.
    assert 1 <= forward["all-reduce"] <= 2, forward
    assert 1 <= step["all-reduce"] <= 4, step
    for counts in (forward, step):
        assert sum(counts.values()) == counts["all-reduce"], counts


def test_example_fits_under_mirrored_strategy():
    """examples/sync_batchnorm.py: model.fit under MirroredStrategy with two
    logical CPUs (TensorFlow only; the example sets its own backend)."""
    if BACKEND != "tensorflow":
        pytest.skip("the example runs MirroredStrategy; run once, on TF")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "examples", "sync_batchnorm.py"),
            "--epochs",
            "1",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "replicas in sync: 2" in proc.stdout
    assert proc.stdout.count("identical on replicas: True") == 2
    accuracy = float(proc.stdout.split("test accuracy: ")[1].split()[0])
    assert accuracy > 0.5


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
        with pytest.raises(
            ValueError, match=r"Received: axis_names=\('devices',\)"
        ):
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
