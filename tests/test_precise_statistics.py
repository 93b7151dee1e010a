"""Precise BatchNorm statistics: recompute, callback, report.

The reference is NumPy: the forward pass of a Dense -> BN -> ReLU -> Dense
-> BN model written from the weights, each BN normalizing with its batch
statistics (or its moving ones when frozen), the batch means and biased
variances averaged with weights equal to the batch sizes.
"""

import keras
import numpy as np
import pytest

from keras_norms import callbacks
from keras_norms import precise
from keras_norms.layers.batch_normalization import BatchNormalization
from keras_norms.layers.sync_batch_normalization import SyncBatchNormalization

BACKEND = keras.backend.backend()
_np = precise._numpy  # variable -> NumPy, without NumPy 2's copy warning
BN_CLASSES = {
    "keras": keras.layers.BatchNormalization,
    "ours": BatchNormalization,
    "sync": SyncBatchNormalization,
}


def _model(bn="ours", frozen=None, use_global_stats=False, seed=0):
    """Dense(5) -> BN -> ReLU -> Dense(4) -> BN, random weights."""
    cls = BN_CLASSES[bn]
    inp = keras.Input((3,))
    h = keras.layers.Dense(5, name="dense1")(inp)
    kwargs = {"use_global_stats": True} if use_global_stats else {}
    h = cls(momentum=0.9, epsilon=1e-3, name="bn1", **kwargs)(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.Dense(4, name="dense2")(h)
    out = cls(momentum=0.9, epsilon=1e-3, name="bn2")(h)
    model = keras.Model(inp, out)
    rng = np.random.RandomState(seed)
    for layer in model.layers:
        for w in layer.weights:
            if "variance" in w.path:
                value = rng.uniform(0.5, 2.0, size=w.shape)
            else:
                value = rng.randn(*w.shape)
            w.assign(value.astype("float32"))
    if frozen:
        model.get_layer(frozen).trainable = False
    return model


def _weights(model):
    return {w.path: _np(w) for w in model.weights}


def _data(n=10, seed=1):
    rng = np.random.RandomState(seed)
    x = (rng.randn(n, 3) * 2.0 + 1.0).astype("float32")
    y = rng.randn(n, 4).astype("float32")
    return x, y


def _reference(weights, x, batch_size, frozen=()):
    """NumPy precise statistics of bn1, bn2 for the model of `_model`."""
    w = {
        k.split("/")[0] + "/" + k.split("/")[-1]: v for k, v in weights.items()
    }

    def bn(name, h):
        if name in frozen:
            m, v = w[f"{name}/moving_mean"], w[f"{name}/moving_variance"]
        else:
            m, v = h.mean(0), h.var(0)
        y = (h - m) / np.sqrt(v + 1e-3) * w[f"{name}/gamma"] + w[f"{name}/beta"]
        return y, m, v

    sums = {k: 0.0 for k in ("bn1_m", "bn1_v", "bn2_m", "bn2_v")}
    total = 0
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size].astype(np.float64)
        n = len(xb)
        h = xb @ w["dense1/kernel"] + w["dense1/bias"]
        h, m1, v1 = bn("bn1", h)
        h = np.maximum(h, 0) @ w["dense2/kernel"] + w["dense2/bias"]
        _, m2, v2 = bn("bn2", h)
        for k, v in (
            ("bn1_m", m1),
            ("bn1_v", v1),
            ("bn2_m", m2),
            ("bn2_v", v2),
        ):
            sums[k] = sums[k] + n * v
        total += n
    return {k: v / total for k, v in sums.items()}


def _assert_stats(model, ref, layers=("bn1", "bn2"), rtol=1e-5, atol=1e-5):
    for name in layers:
        layer = model.get_layer(name)
        np.testing.assert_allclose(
            _np(layer.moving_mean), ref[f"{name}_m"], rtol, atol
        )
        np.testing.assert_allclose(
            _np(layer.moving_variance),
            ref[f"{name}_v"],
            rtol,
            atol,
        )


# ----------------------------------------------------------------------
# recompute_batch_norm_statistics
# ----------------------------------------------------------------------
@pytest.mark.parametrize("bn", ["keras", "ours", "sync"])
def test_recompute_matches_numpy(bn):
    model = _model(bn)
    x, _ = _data(10)
    before = _weights(model)
    ref = _reference(before, x, batch_size=4)  # batches of 4, 4, 2
    result = precise.recompute_batch_norm_statistics(
        model, x, batch_size=4, verbose=0
    )
    _assert_stats(model, ref)
    assert result["num_batches"] == 3 and result["num_samples"] == 10
    assert set(result["layers"]) == {"bn1", "bn2"}
    np.testing.assert_allclose(
        result["layers"]["bn2"]["moving_variance"], ref["bn2_v"], 1e-5, 1e-5
    )
    # Every other weight bit-identical; momentum untouched.
    after = _weights(model)
    for path, value in before.items():
        if "moving" not in path:
            np.testing.assert_array_equal(after[path], value, err_msg=path)
    assert model.get_layer("bn1").momentum == 0.9
    # Unequal batches matter: the unweighted mean of batch means differs.
    assert not np.allclose(
        ref["bn1_m"], _reference(before, x[:8], batch_size=4)["bn1_m"]
    )


def test_recompute_replaces_non_finite_statistics_and_keeps_seed_state():
    inp = keras.Input((3,))
    h = keras.layers.Dense(6)(inp)
    h = keras.layers.Dropout(0.5, seed=3)(h)
    out = BatchNormalization(name="bn")(h)
    model = keras.Model(inp, out)
    bn = model.get_layer("bn")
    bn.moving_mean.assign(np.full((6,), np.nan, "float32"))
    bn.moving_variance.assign(np.full((6,), np.inf, "float32"))
    all_vars = [_np(v) for v in model.variables]
    x, _ = _data(12)
    precise.recompute_batch_norm_statistics(model, x, batch_size=4, verbose=0)
    assert np.all(np.isfinite(_np(bn.moving_mean)))
    assert np.all(np.isfinite(_np(bn.moving_variance)))
    for v, old in zip(model.variables, all_vars):
        if "moving" not in v.path:  # seed generator state included
            np.testing.assert_array_equal(_np(v), old, v.path)


def test_recompute_restores_what_a_training_forward_pass_writes():
    # The pass snapshots only the state a training-mode forward may write
    # (non-trainable variables): a WeightNormalization(data_init=True) not
    # yet initialized sets its flag and offsets on its first training
    # batch, a frozen BatchNormalization made trainable by
    # `include_frozen` moves its statistics. All of it comes back; only
    # the recomputed statistics change.
    from keras_norms.layers.weight_normalization import WeightNormalization

    inp = keras.Input((3,))
    h = WeightNormalization(keras.layers.Dense(5), data_init=True, name="wn")(
        inp
    )
    h = BatchNormalization(name="bn1")(h)
    h = keras.layers.Dense(4)(h)
    h = keras.layers.GaussianNoise(0.1, seed=5)(h)
    out = BatchNormalization(name="bn2")(h)
    model = keras.Model(inp, out)
    model.get_layer("bn1").trainable = False
    wn = model.get_layer("wn")
    assert float(_np(wn.data_initialized)) == 0.0
    before = {v.path: _np(v) for v in model.variables}
    trainable_before = [v.trainable for v in model.variables]
    x, _ = _data(12)
    result = precise.recompute_batch_norm_statistics(
        model, x, batch_size=4, verbose=0, include_frozen=True
    )
    assert sorted(result["layers"]) == ["bn1", "bn2"]
    assert float(_np(wn.data_initialized)) == 0.0  # still uninitialized
    assert [v.trainable for v in model.variables] == trainable_before
    changed = set()
    for v in model.variables:
        if not np.array_equal(_np(v), before[v.path]):
            changed.add(v.path)
    assert changed == {
        f"{bn}/{stat}"
        for bn in ("bn1", "bn2")
        for stat in ("moving_mean", "moving_variance")
    }


def _as_generator(x, y, batch_size):
    for start in range(0, len(x), batch_size):
        yield x[start : start + batch_size], y[start : start + batch_size]


class _Batches(keras.utils.PyDataset):
    def __init__(self, x, y, batch_size):
        super().__init__()
        self.x, self.y, self.batch_size = x, y, batch_size

    def __len__(self):
        return -(-len(self.x) // self.batch_size)

    def __getitem__(self, i):
        s = slice(i * self.batch_size, (i + 1) * self.batch_size)
        return self.x[s], self.y[s]


@pytest.mark.parametrize(
    "kind", ["tuple_generator", "x_generator", "tf_data", "torch", "pydataset"]
)
def test_input_types(kind):
    model = _model("ours")
    x, y = _data(10)
    ref = _reference(_weights(model), x, batch_size=4)
    if kind == "tuple_generator":
        data = _as_generator(x, y, 4)
    elif kind == "x_generator":
        data = (b for b, _ in _as_generator(x, y, 4))
    elif kind == "tf_data":
        import tensorflow as tf

        data = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    elif kind == "torch":
        import torch

        data = torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(torch.tensor(x), torch.tensor(y)),
            batch_size=4,
        )
    else:
        data = _Batches(x, y, 4)
    result = precise.recompute_batch_norm_statistics(model, data, verbose=0)
    assert result["num_samples"] == 10
    _assert_stats(model, ref)


def test_steps_limits_batches():
    model = _model("ours")
    x, _ = _data(10)
    ref = _reference(_weights(model), x[:8], batch_size=4)
    result = precise.recompute_batch_norm_statistics(
        model, x, batch_size=4, steps=2, verbose=0
    )
    assert result["num_batches"] == 2
    _assert_stats(model, ref)
    # Without batch_size, arrays come in batches of 32 whatever `steps`.
    x = np.concatenate([x] * 7)
    ref = _reference(_weights(model), x[:64], batch_size=32)
    result = precise.recompute_batch_norm_statistics(
        model, x, steps=2, verbose=0
    )
    assert result["num_batches"] == 2 and result["num_samples"] == 64
    _assert_stats(model, ref)


def test_progress_bar(capsys):
    model = _model("ours")
    x, _ = _data(10)
    precise.recompute_batch_norm_statistics(model, x, batch_size=4)
    assert "3/3" in capsys.readouterr().out
    precise.recompute_batch_norm_statistics(model, x, batch_size=4, verbose=0)
    assert capsys.readouterr().out == ""


def test_nested_model_and_moving_statistics_duck_type():
    class Moving(keras.layers.Layer):
        """A minimal BN-like layer: moving_mean, moving_variance, momentum."""

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.momentum = 0.9

        def build(self, shape):
            self.moving_mean = self.add_weight(
                shape=shape[-1:], initializer="zeros", trainable=False
            )
            self.moving_variance = self.add_weight(
                shape=shape[-1:], initializer="ones", trainable=False
            )

        def call(self, x, training=None):
            if training:
                m = keras.ops.mean(x, axis=0)
                v = keras.ops.var(x, axis=0)
                for w, b in ((self.moving_mean, m), (self.moving_variance, v)):
                    w.assign(w * self.momentum + b * (1 - self.momentum))
            return x

    inner = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(5), BatchNormalization()],
        name="inner",
    )
    inp = keras.Input((3,))
    h = inner(inp)
    out = Moving(name="moving")(h)
    model = keras.Model(inp, out)
    found = precise.batch_norm_layers(model)
    assert [type(layer).__name__ for layer in found] == [
        "BatchNormalization",
        "Moving",
    ]
    x, _ = _data(10)
    precise.recompute_batch_norm_statistics(model, x, batch_size=5, verbose=0)
    dense, bn = inner.layers
    k, b = (_np(w).astype(np.float64) for w in dense.weights)
    h = x.astype(np.float64) @ k + b
    means = [h[:5].mean(0), h[5:].mean(0)]
    np.testing.assert_allclose(
        _np(bn.moving_mean), np.mean(means, 0), 1e-5, 1e-5
    )
    # The duck-typed layer sees the BN's training-mode outputs: mean beta.
    np.testing.assert_allclose(
        _np(model.get_layer("moving").moving_mean),
        _np(bn.beta),
        atol=1e-5,
    )
    assert model.get_layer("moving").momentum == 0.9


# ----------------------------------------------------------------------
# Frozen layers
# ----------------------------------------------------------------------
@pytest.mark.parametrize("how", ["trainable", "use_global_stats"])
def test_frozen_layers_are_skipped_by_default(how):
    if how == "trainable":
        model = _model("ours", frozen="bn1")
    else:
        model = _model("ours", use_global_stats=True)
    before = _weights(model)
    x, _ = _data(10)
    ref = _reference(before, x, batch_size=4, frozen=("bn1",))
    with pytest.warns(UserWarning, match="frozen .*bn1.*include_frozen"):
        result = precise.recompute_batch_norm_statistics(
            model, x, batch_size=4, verbose=0
        )
    assert result["skipped"] == ["bn1"]
    assert list(result["layers"]) == ["bn2"]
    bn1 = model.get_layer("bn1")
    for name in ("moving_mean", "moving_variance"):
        np.testing.assert_array_equal(
            _np(getattr(bn1, name)), before[f"{bn1.path}/{name}"]
        )
    _assert_stats(model, ref, layers=("bn2",))


@pytest.mark.parametrize("bn", ["keras", "ours"])
def test_include_frozen_recomputes_and_restores_flags(bn):
    model = _model(bn, frozen="bn1")
    bn1 = model.get_layer("bn1")
    trainable_paths = [w.path for w in model.trainable_weights]
    x, _ = _data(10)
    ref = _reference(_weights(model), x, batch_size=4)
    result = precise.recompute_batch_norm_statistics(
        model, x, batch_size=4, verbose=0, include_frozen=True
    )
    assert result["skipped"] == []
    _assert_stats(model, ref)
    assert bn1.trainable is False
    assert [w.path for w in model.trainable_weights] == trainable_paths
    assert all(not w.trainable for w in bn1.weights)


# ----------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------
def test_model_without_batch_norm_warns_and_changes_nothing():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    before = _weights(model)
    x, _ = _data(10)
    with pytest.warns(UserWarning, match="no BatchNormalization"):
        result = precise.recompute_batch_norm_statistics(model, x, verbose=0)
    assert result["layers"] == {}
    for path, value in _weights(model).items():
        np.testing.assert_array_equal(value, before[path])


def test_empty_input():
    model = _model("ours")
    with pytest.raises(ValueError, match="no samples"):
        precise.recompute_batch_norm_statistics(
            model, np.zeros((0, 3), "float32"), verbose=0
        )
    with pytest.raises(ValueError, match="no samples"):
        precise.recompute_batch_norm_statistics(
            model, (b for b in []), verbose=0
        )


@pytest.mark.parametrize("steps", [0, -1])
def test_bad_steps(steps):
    with pytest.raises(ValueError, match="steps"):
        precise.recompute_batch_norm_statistics(
            _model("ours"), _data(10)[0], steps=steps, verbose=0
        )


def test_single_sample_batch_counts_as_training_does():
    # A last batch of one sample: variance 0 and the sample as the mean,
    # as a training step on it gives (Keras' BatchNormalization).
    model = _model("ours")
    x, y = _data(9)  # batches of 4, 4, 1
    ref = _reference(_weights(model), x, batch_size=4)
    model.compile(optimizer="sgd", loss="mse")
    assert np.isfinite(model.train_on_batch(x[:1], y[:1]))
    model = _model("ours")
    precise.recompute_batch_norm_statistics(model, x, batch_size=4, verbose=0)
    _assert_stats(model, ref)
    assert model.get_layer("bn1").momentum == 0.9


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_statistics_are_refused_with_a_warning(bad):
    model = _model("ours")
    before = _weights(model)
    x, _ = _data(10)
    x[5, 1] = bad  # batch 1 (samples 4-7) of batches of 4
    with pytest.warns(RuntimeWarning) as record:
        result = precise.recompute_batch_norm_statistics(
            model, x, batch_size=4, verbose=0
        )
    message = str(record[0].message)
    assert "'bn1': from batch 1 (samples 4 to 7" in message
    assert "'bn2': from batch 1" in message
    # Both layers see the bad batch (bn2 through bn1): both keep their
    # statistics, every value as it was; nothing NaN anywhere.
    assert sorted(result["rejected"]) == ["bn1", "bn2"]
    assert result["layers"] == {}
    for path, value in _weights(model).items():
        np.testing.assert_array_equal(value, before[path], err_msg=path)
    # The report leaves them out too (and warns the same way).
    with pytest.warns(RuntimeWarning, match="bn1"):
        report = precise.batch_norm_statistics_report(
            model, x, batch_size=4, print_fn=False
        )
    assert report == {}


def test_callback_rejects_generators_and_bad_period():
    x, y = _data(10)
    with pytest.raises(TypeError, match="re-iterable"):
        callbacks.PreciseBatchNorm(_as_generator(x, y, 4))
    with pytest.raises(ValueError, match="every_n_epochs"):
        callbacks.PreciseBatchNorm(x, every_n_epochs=0)
    with pytest.raises(ValueError, match="steps"):
        callbacks.PreciseBatchNorm(x, steps=0)


# ----------------------------------------------------------------------
# Callback
# ----------------------------------------------------------------------
class _RecordStatistics(keras.callbacks.Callback):
    """Keeps the moving statistics as they are when validation starts."""

    def on_test_begin(self, logs=None):
        self.at_validation = _weights(self.model)


@pytest.mark.parametrize("bn", ["keras", "ours"])
def test_callback_validation_uses_precise_statistics(bn):
    model = _model(bn)
    x, y = _data(16)
    xv, yv = _data(8, seed=7)
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    recorder = _RecordStatistics()  # runs before PreciseBatchNorm
    callback = callbacks.PreciseBatchNorm(x, batch_size=4, steps=None)
    history = model.fit(
        x,
        y,
        batch_size=4,
        epochs=1,
        shuffle=False,
        validation_data=(xv, yv),
        callbacks=[recorder, callback],
        verbose=0,
    )
    assert [when for when, _ in callback.history] == [0]  # none at the end
    # The model now has precise statistics of its final weights ...
    ref = _reference(_weights(model), x, batch_size=4)
    _assert_stats(model, ref, rtol=1e-4, atol=1e-5)
    # ... and the logged val_loss is computed with them.
    val_precise = model.evaluate(xv, yv, batch_size=4, verbose=0)
    np.testing.assert_allclose(
        history.history["val_loss"][0], val_precise, 1e-5
    )
    # It differs from what the moving statistics would have given.
    for w in model.weights:
        if "moving" in w.path:
            w.assign(recorder.at_validation[w.path])
    val_moving = model.evaluate(xv, yv, batch_size=4, verbose=0)
    assert abs(val_moving - val_precise) > 1e-2 * abs(val_precise)


def test_callback_period_without_validation_and_at_train_end():
    model = _model("ours")
    x, y = _data(16)
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    callback = callbacks.PreciseBatchNorm(x, batch_size=8, every_n_epochs=2)
    model.fit(
        x,
        y,
        batch_size=8,
        epochs=3,
        shuffle=False,
        callbacks=[callback],
        verbose=0,
    )
    assert [when for when, _ in callback.history] == [1, "end"]
    ref = _reference(_weights(model), x, batch_size=8)
    _assert_stats(model, ref, rtol=1e-4, atol=1e-5)
    # A later `evaluate` with the callback does not recompute.
    model.evaluate(x, y, callbacks=[callback], verbose=0)
    assert len(callback.history) == 2


# ----------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------
@pytest.mark.parametrize("bn", ["keras", "ours"])
def test_report_flags_only_the_wrong_layer_and_changes_nothing(bn):
    model = _model(bn)
    x, _ = _data(10)
    precise.recompute_batch_norm_statistics(model, x, batch_size=4, verbose=0)
    bn2 = model.get_layer("bn2")
    mean = _np(bn2.moving_mean)
    var = _np(bn2.moving_variance)
    shifted = mean.copy()
    shifted[2] += 0.5 * np.sqrt(var[2] + 1e-3)
    bn2.moving_mean.assign(shifted)
    before = _weights(model)
    printed = []
    report = precise.batch_norm_statistics_report(
        model, x, batch_size=4, print_fn=printed.append
    )
    assert list(report) == ["bn1", "bn2"]
    assert report["bn1"]["stale"] is False
    assert report["bn1"]["mean_shift"] < 1e-4
    assert report["bn2"]["stale"] is True
    np.testing.assert_allclose(report["bn2"]["mean_shift"], 0.5, rtol=1e-4)
    assert report["bn2"]["variance_log_ratio"] < 1e-4
    for path, value in _weights(model).items():
        np.testing.assert_array_equal(value, before[path], err_msg=path)
    assert "bn2" in printed[0] and "Stale layers: 1 of 2" in printed[0]

    # A wrong variance, and the thresholds.
    bn2.moving_mean.assign(mean)
    bn2.moving_variance.assign(var * 2.0)
    report = precise.batch_norm_statistics_report(
        model, x, batch_size=4, print_fn=False
    )
    assert [k for k, r in report.items() if r["stale"]] == ["bn2"]
    ratio = np.max(np.abs(np.log((2 * var + 1e-3) / (var + 1e-3))))
    np.testing.assert_allclose(report["bn2"]["variance_log_ratio"], ratio, 1e-4)
    report = precise.batch_norm_statistics_report(
        model, x, batch_size=4, variance_threshold=1.0, print_fn=False
    )
    assert not any(r["stale"] for r in report.values())


# ----------------------------------------------------------------------
# Under a TensorFlow MirroredStrategy (subprocess: 2 logical CPUs)
# ----------------------------------------------------------------------
_MIRRORED_SCRIPT = r"""
import os, sys
os.environ["KERAS_BACKEND"] = "tensorflow"
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2
)
import keras
import numpy as np
sys.path.insert(0, os.getcwd())
from keras_norms import callbacks, precise
from tests import test_precise_statistics as t

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
assert strategy.num_replicas_in_sync == 2
with strategy.scope():
    model = t._model("sync")
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
x, y = t._data(16)
xv, yv = t._data(8, seed=7)

def check(batch_size):
    ref = t._reference(t._weights(model), x, batch_size=batch_size)
    for name in ("bn1", "bn2"):
        layer = model.get_layer(name)
        for stat, key in (("moving_mean", "_m"), ("moving_variance", "_v")):
            values = strategy.experimental_local_results(
                getattr(layer, stat).value
            )
            assert len(values) == 2
            for v in values:  # every replica holds the global statistics
                np.testing.assert_allclose(np.asarray(v), ref[name + key],
                                           1e-4, 1e-5)

precise.recompute_batch_norm_statistics(model, x, batch_size=4, verbose=0)
check(4)
callback = callbacks.PreciseBatchNorm(x, batch_size=8, steps=None)
history = model.fit(x, y, batch_size=8, epochs=1, shuffle=False,
                    validation_data=(xv, yv), callbacks=[callback], verbose=0)
check(8)
np.testing.assert_allclose(
    history.history["val_loss"][0],
    model.evaluate(xv, yv, batch_size=8, verbose=0), 1e-5)
print("MIRRORED_OK")
"""


@pytest.mark.skipif(
    BACKEND != "tensorflow",
    reason="tf.distribute.MirroredStrategy: runs in the TensorFlow session",
)
def test_sync_batch_norm_under_mirrored_strategy():
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(
        [sys.executable, "-c", _MIRRORED_SCRIPT],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "MIRRORED_OK" in proc.stdout, (
        proc.stdout[-3000:] + proc.stderr[-5000:]
    )


@pytest.mark.parametrize(
    "name", ["BatchInstanceNormalization", "SwitchableNormalization"]
)
def test_batch_part_of_learned_norms(name):
    if name == "BatchInstanceNormalization":
        from keras_norms.layers.batch_instance_normalization import (
            BatchInstanceNormalization as cls,
        )
    else:
        from keras_norms.layers.switchable_normalization import (
            SwitchableNormalization as cls,
        )
    inp = keras.Input((4, 3))
    h = cls(momentum=0.9, name="norm")(inp)
    out = keras.layers.Dense(2)(keras.layers.Flatten()(h))
    model = keras.Model(inp, out)
    rng = np.random.RandomState(3)
    x = (rng.randn(10, 4, 3) * 3.0 + 2.0).astype("float32")
    result = precise.recompute_batch_norm_statistics(
        model, x, batch_size=4, verbose=0
    )
    assert list(result["layers"]) == ["norm"]
    batches = [x[i : i + 4].astype(np.float64) for i in (0, 4, 8)]
    n = np.array([len(b) for b in batches], np.float64)[:, None]
    mean = np.sum(n * [b.mean((0, 1)) for b in batches], 0) / 10
    var = np.sum(n * [b.var((0, 1)) for b in batches], 0) / 10
    layer = model.get_layer("norm")
    np.testing.assert_allclose(_np(layer.moving_mean), mean, 1e-5, 1e-5)
    np.testing.assert_allclose(_np(layer.moving_variance), var, 1e-5, 1e-5)
    assert layer.momentum == 0.9


@pytest.mark.skipif(
    keras.backend.backend() != "torch", reason="torch.distributed (gloo)"
)
def test_torch_distributed_all_ranks_or_refused(tmp_path):
    """Two gloo processes: called on both, the statistics are the global
    batch's on both; called on rank 0 alone, a RuntimeError within the
    join timeout (2 s here), not a 30-minute hang."""
    import os
    import subprocess
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    rng = np.random.RandomState(3)
    x = (rng.randn(8, 3) * 2.0 + 5.0).astype("float32")
    np.savez(tmp_path / "inputs.npz", x=x)
    # PYTHONPATH: the workers import this checkout's keras_norms.
    env = dict(
        os.environ, KERAS_BACKEND="torch", PYTHONPATH=os.path.dirname(here)
    )
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(here, "sync_workers", "precise_worker.py"),
            str(tmp_path / "inputs.npz"),
            str(tmp_path),
        ],
        env=env,
        cwd=os.path.dirname(here),
        capture_output=True,
        text=True,
        timeout=300,  # two processes importing keras on a loaded machine
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [np.load(tmp_path / f"rank{r}.npz") for r in (0, 1)]
    for r in ranks:
        np.testing.assert_allclose(r["all/moving_mean"], x.mean(0), atol=1e-5)
        np.testing.assert_allclose(
            r["all/moving_variance"], x.var(0), atol=1e-4
        )
    alone = ranks[0]
    assert "must be called on every process" in str(alone["alone/error"])
    assert "Received: rank=0, world_size=2" in str(alone["alone/error"])
    assert float(alone["alone/seconds"]) < 20
    np.testing.assert_array_equal(
        alone["alone/moving_mean"], ranks[0]["all/moving_mean"]
    )


# ----------------------------------------------------------------------
# EvoNormB0: a moving variance, no moving mean
# ----------------------------------------------------------------------
def _evo_model(use_global_stats=False):
    """Conv(4) -> EvoNormB0 -> Conv(2, 1x1) -> BN, random weights."""
    from keras_norms.layers.evo_norm_b0 import EvoNormB0

    inp = keras.Input((6, 5, 3))
    h = keras.layers.Conv2D(4, 3, name="conv")(inp)
    h = EvoNormB0(momentum=0.9, name="evo", use_global_stats=use_global_stats)(
        h
    )
    h = keras.layers.Conv2D(2, 1, name="conv2")(h)
    out = BatchNormalization(momentum=0.9, name="bn")(h)
    model = keras.Model(inp, out)
    rng = np.random.RandomState(4)
    for w in model.weights:
        low = 0.5 if "variance" in w.path else -1.0
        w.assign(rng.uniform(low, 2.0, size=w.shape).astype("float32"))
    return model


def _evo_data(n=10):
    rng = np.random.RandomState(5)
    return (rng.randn(n, 6, 5, 3) * 2.0 + 1.0).astype("float32")


def _evo_reference(model, x, batch_size):
    """The sample-weighted mean of the batches' biased per-channel
    variances of EvoNormB0's input (all axes but the channels)."""
    evo = model.get_layer("evo")
    inputs = keras.Model(model.input, evo.input)
    total = 0.0
    for start in range(0, len(x), batch_size):
        h = _np(inputs(x[start : start + batch_size])).astype(np.float64)
        total = total + len(h) * h.var(axis=(0, 1, 2))
    return total / len(x)


def test_evo_norm_b0_moving_variance_matches_numpy():
    model = _evo_model()
    x = _evo_data(10)
    evo = model.get_layer("evo")
    ref = _evo_reference(model, x, batch_size=4)  # batches of 4, 4, 2
    assert not np.allclose(_np(evo.moving_variance), ref, rtol=0.1)
    before = _weights(model)
    result = precise.recompute_batch_norm_statistics(
        model, x, batch_size=4, verbose=0
    )
    assert list(result["layers"]) == ["evo", "bn"]
    # The mean is absent, not a zero written somewhere.
    assert list(result["layers"]["evo"]) == ["moving_variance"]
    assert evo.moving_mean is None
    assert [w.name for w in evo.weights] == [
        "gamma",
        "beta",
        "v",
        "moving_variance",
    ]
    np.testing.assert_allclose(_np(evo.moving_variance), ref, 1e-5, 1e-5)
    np.testing.assert_allclose(
        result["layers"]["evo"]["moving_variance"], ref, 1e-5, 1e-5
    )
    assert evo.momentum == 0.9
    changed = {
        path
        for path, value in _weights(model).items()
        if not np.array_equal(value, before[path])
    }
    assert changed == {
        "evo/moving_variance",
        "bn/moving_mean",
        "bn/moving_variance",
    }


def test_evo_norm_b0_report_has_no_mean_shift():
    model = _evo_model()
    x = _evo_data(10)
    ref = _evo_reference(model, x, batch_size=4)
    evo = model.get_layer("evo")
    evo.moving_variance.assign((2.0 * ref).astype("float32"))
    printed = []
    report = precise.batch_norm_statistics_report(
        model, x, batch_size=4, print_fn=printed.append
    )
    assert list(report) == ["evo", "bn"]
    assert report["evo"]["mean_shift"] is None
    assert report["evo"]["stale"] is True
    ratio = np.max(np.abs(np.log((2 * ref + 1e-5) / (ref + 1e-5))))
    np.testing.assert_allclose(report["evo"]["variance_log_ratio"], ratio, 1e-4)
    row = next(line for line in printed[0].splitlines() if "evo" in line)
    assert row.split("│")[2].strip() == "-"
    # Stale on its variance alone: a tight mean threshold does not matter.
    precise.recompute_batch_norm_statistics(model, x, batch_size=4, verbose=0)
    report = precise.batch_norm_statistics_report(
        model, x, batch_size=4, mean_threshold=0.0, print_fn=False
    )
    assert report["evo"] == {
        "mean_shift": None,
        "variance_log_ratio": pytest.approx(0.0, abs=1e-5),
        "stale": False,
    }


@pytest.mark.parametrize("how", ["trainable", "use_global_stats"])
def test_frozen_evo_norm_b0_is_skipped_like_a_frozen_bn(how):
    model = _evo_model(use_global_stats=how == "use_global_stats")
    evo = model.get_layer("evo")
    if how == "trainable":
        evo.trainable = False
    x = _evo_data(10)
    before = _np(evo.moving_variance)
    with pytest.warns(UserWarning, match="frozen .*evo.*include_frozen"):
        result = precise.recompute_batch_norm_statistics(
            model, x, batch_size=4, verbose=0
        )
    assert result["skipped"] == ["evo"]
    assert list(result["layers"]) == ["bn"]
    np.testing.assert_array_equal(_np(evo.moving_variance), before)
    report = precise.batch_norm_statistics_report(
        model, x, batch_size=4, print_fn=False
    )
    assert list(report) == ["bn"]
    # include_frozen: recomputed, and the flags restored.
    result = precise.recompute_batch_norm_statistics(
        model, x, batch_size=4, verbose=0, include_frozen=True
    )
    assert result["skipped"] == []
    ref = _evo_reference(model, x, batch_size=4)
    np.testing.assert_allclose(_np(evo.moving_variance), ref, 1e-5, 1e-5)
    assert evo.trainable is (how != "trainable")
    assert evo.use_global_stats is (how == "use_global_stats")


def test_evo_norm_b0_non_finite_batch_is_refused():
    model = _evo_model()
    evo = model.get_layer("evo")
    before = _np(evo.moving_variance)
    x = _evo_data(10)
    x[5, 0, 0, 1] = np.nan  # batch 1 (samples 4-7)
    with pytest.warns(RuntimeWarning, match="'evo': from batch 1"):
        result = precise.recompute_batch_norm_statistics(
            model, x, batch_size=4, verbose=0
        )
    assert result["rejected"] == ["evo", "bn"]
    np.testing.assert_array_equal(_np(evo.moving_variance), before)
    assert np.all(np.isfinite(_np(evo.moving_variance)))


# ----------------------------------------------------------------------
# Across processes: each process its own shard, global statistics on all
# ----------------------------------------------------------------------
def _processes_reference(inputs, sizes, batch_size, epsilon=1e-3):
    """NumPy precise statistics of Dense -> BN -> Dense -> BN (BN's
    gamma 1, beta 0) on the concatenated shards, in batches that do not
    cross a shard boundary, as one process computes them."""
    x = inputs["x"][: sum(sizes)].astype(np.float64)
    bounds = np.cumsum((0,) + tuple(sizes))
    batches = [
        x[i : min(i + batch_size, end)]
        for start, end in zip(bounds[:-1], bounds[1:])
        for i in range(start, end, batch_size)
    ]
    sums = {k: 0.0 for k in ("bn1", "bn2")}
    sums = {(k, s): 0.0 for k in sums for s in ("mean", "var")}
    for b in batches:
        h = b @ inputs["dense1/kernel"] + inputs["dense1/bias"]
        for layer, dense in (("bn1", "dense2"), ("bn2", None)):
            m, v = h.mean(0), h.var(0)
            sums[layer, "mean"] = sums[layer, "mean"] + len(b) * m
            sums[layer, "var"] = sums[layer, "var"] + len(b) * v
            if dense:
                h = (h - m) / np.sqrt(v + epsilon)
                h = h @ inputs[f"{dense}/kernel"] + inputs[f"{dense}/bias"]
    n = sum(sizes)
    return {
        layer: {
            "moving_mean": sums[layer, "mean"] / n,
            "moving_variance": sums[layer, "var"] / n,
        }
        for layer in ("bn1", "bn2")
    }, len(batches)


def test_statistics_across_processes_are_global(tmp_path):
    """Two processes of the current backend (torch.distributed on gloo;
    JAX `keras.distribution.initialize`; TensorFlow TF_CONFIG and
    MultiWorkerMirroredStrategy), each with its own (unequal) shard:
    `recompute_batch_norm_statistics`, `PreciseBatchNorm` and
    `batch_norm_statistics_report` give the statistics of the
    concatenated data on both, identical."""
    import os
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, os.path.join(here, "sync_workers"))
    try:
        import _common
    finally:
        sys.path.pop(0)
    rng = np.random.RandomState(11)
    inputs = {
        "x": (rng.randn(20, 5) * 2.0 + 3.0).astype("float32"),
        "dense1/kernel": rng.randn(5, 4).astype("float32"),
        "dense1/bias": rng.randn(4).astype("float32"),
        "dense2/kernel": rng.randn(4, 3).astype("float32"),
        "dense2/bias": rng.randn(3).astype("float32"),
    }
    np.savez(tmp_path / "inputs.npz", **inputs)
    sizes, batch_size = (8, 12), 4  # as the worker's SIZES, BATCH_SIZE
    backend = keras.backend.backend()
    ports = ",".join(str(p) for p in _common.free_ports(2))
    worker = os.path.join(here, "sync_workers", "precise_processes_worker.py")
    env = dict(
        os.environ,
        PYTHONPATH=os.path.dirname(here) + os.pathsep + os.path.dirname(worker),
        TF_CPP_MIN_LOG_LEVEL="3",
        JAX_PLATFORMS="cpu",
    )
    env.pop("TF_CONFIG", None)
    env.pop("XLA_FLAGS", None)  # one CPU device per process
    commands = [
        [sys.executable, worker, backend, str(r), ports]
        + [str(tmp_path / "inputs.npz"), str(tmp_path)]
        for r in (0, 1)
    ]
    # Bounded: a process still running after it is killed.
    outcomes = _common.run_processes(commands, env, timeout=180)
    for rank, (code, output) in enumerate(outcomes):
        assert code == 0, f"rank {rank} exited {code}:\n{output[-4000:]}"
    reference, num_batches = _processes_reference(inputs, sizes, batch_size)
    ranks = [dict(np.load(tmp_path / f"rank{r}.npz")) for r in (0, 1)]
    for key in ranks[0]:  # bit-identical on both processes
        np.testing.assert_array_equal(ranks[0][key], ranks[1][key], key)
    r = ranks[0]
    assert int(r["recompute/num_samples"]) == sum(sizes)
    assert int(r["recompute/num_batches"]) == num_batches
    for layer, stats in reference.items():
        for name, value in stats.items():
            for what in ("recompute", "callback"):
                np.testing.assert_allclose(
                    r[f"{what}/{layer}/{name}"],
                    value,
                    rtol=1e-4,
                    atol=1e-4,
                    err_msg=f"{what}/{layer}/{name}",
                )
    # The report before any recomputation compared the initial moving
    # statistics (0, 1) with the global ones.
    for layer, stats in reference.items():
        shift = np.max(
            np.abs(stats["moving_mean"])
            / np.sqrt(stats["moving_variance"] + 1e-3)
        )
        np.testing.assert_allclose(float(r[f"report/{layer}"]), shift, 1e-4)
    if backend == "tensorflow":
        error = str(r["outside_scope/error"])
        assert "without a multi-worker strategy in scope" in error
        assert "strategy.scope()" in error
