"""Precise BatchNormalization statistics (population statistics).

During training a BatchNormalization layer keeps an exponential moving
average of its batch statistics, `moving = moving * momentum + batch *
(1 - momentum)`. Those averages lag behind the weights: they mix
statistics of many past versions of the network, and with a high momentum
(Keras' default 0.99 keeps the last ~100 steps) or a short run they can be
far from the statistics of the final network, so the model evaluates worse
with them than it trains. "Precise BN" (Wu & Johnson, 2021) replaces them,
after (or during) training, by the average over many batches of the batch
statistics of the *current* network:

    moving_mean     = sum_b n_b * mean_b     / sum_b n_b
    moving_variance = sum_b n_b * variance_b / sum_b n_b

where batch `b` has `n_b` samples and `mean_b`, `variance_b` (biased) are
the per-channel statistics the layer normalizes that batch with in training
mode, every layer before it also in training mode (so each layer sees
exactly the inputs it saw in training).

- `recompute_batch_norm_statistics(model, x)` does it once;
- `keras_norms.callbacks.PreciseBatchNorm(x)` is a callback doing it
  during `fit`, so that each epoch's validation metrics (and the final
  model) use precise statistics;
- `batch_norm_statistics_report(model, x)` says, layer by layer, how far
  the moving statistics are from the precise ones, without changing them.

Reference:
    - [Wu & Johnson, 2021, Rethinking "Batch" in BatchNorm](
      https://arxiv.org/abs/2105.07576), section 3 (PreciseBN).
    - fvcore's `update_bn_stats`
      (https://github.com/facebookresearch/fvcore).
"""

import warnings

import numpy as np

from keras_norms import _validation
from keras_norms.precise._layers import batch_norm_layers
from keras_norms.precise._layers import layer_keys
from keras_norms.precise._pass import precise_statistics
from keras_norms.precise._pass import to_numpy as _numpy  # noqa: F401
from keras_norms.precise._pass import warn_no_layers
from keras_norms.precise._report import errors
from keras_norms.precise._report import format_report

__all__ = [
    "batch_norm_layers",
    "batch_norm_statistics_report",
    "format_report",
    "recompute_batch_norm_statistics",
]

# Seconds a torch.distributed process waits for the others to call
# `recompute_batch_norm_statistics` too (models with synchronized layers).
DISTRIBUTED_JOIN_TIMEOUT = 60.0


def recompute_batch_norm_statistics(
    model,
    x,
    *,
    batch_size=None,
    steps=None,
    verbose="auto",
    include_frozen=False,
):
    """Set every BatchNormalization's moving statistics to precise ones.

    Runs `model(batch, training=True)` on the batches of `x` (so every
    BatchNormalization normalizes with its batch statistics and each layer
    sees what it saw in training), and sets, for every BatchNormalization-
    like layer (see `batch_norm_layers`, nested models included):

    `moving_mean = sum_b n_b * mean_b / sum_b n_b`,
    `moving_variance = sum_b n_b * variance_b / sum_b n_b`,

    the batch means and biased batch variances averaged over the batches,
    each weighted by its number of samples `n_b` (accumulated in float64).
    A layer without a moving mean (`EvoNormB0`, which subtracts none) gets
    its moving variance only.
    Like fvcore's `update_bn_stats`, the variance is the average of the
    batch variances (what each layer normalized with in training), not the
    variance of the whole data set.

    Everything else stays exactly as it was: a training-mode forward pass
    writes only non-trainable state (Keras' contract: `stateless_call`
    returns no other), which is saved before the pass and restored after
    it (seed generator states, the data-init state of
    `WeightNormalization`, frozen layers' statistics); trainable weights,
    optimizer and metric state are never written. The layers' `momentum`
    is set to 0 during the pass (so each training-mode forward leaves the
    batch's own statistics in the moving ones, which are read and
    averaged) and restored after it. Under a TensorFlow distribution
    strategy or a `keras.distribution`, call it outside the replica
    context: the model sees whole batches, so the statistics are global
    ones, as SyncBatchNormalization computes them.

    Frozen layers (`trainable=False`, or `use_global_stats=True`) normalize
    with their moving statistics in training, so downstream layers were
    trained on what those produce; by default (`include_frozen=False`, as
    fvcore, which skips modules in eval mode) they keep their statistics
    and run as in training. With `include_frozen=True` they use batch
    statistics during the pass and get precise statistics too (population
    statistics of a fully batch-normalized network: fine-tuned backbones
    adapted to a new data set).

    A layer called several times in one forward pass (shared) gets the
    statistics of its last call in each batch. A batch of one sample
    counts as a training step on it does: its values as the mean and
    variance 0.

    Across processes (multi-process training, each process passing its
    OWN shard of the data), every process ends with the global statistics,
    those of all the shards together, identical everywhere: after the
    pass over its shard, each process's float64 sums and sample count are
    added up through ONE collective of the backend: an `all_reduce` under
    `torch.distributed` (world size above 1), a `process_allgather` under
    JAX's multi-process `keras.distribution.initialize` (each process's
    forward then runs on its own data, outside the distribution's data
    sharding), a `strategy.reduce` under TensorFlow's
    `MultiWorkerMirroredStrategy`, which must be in scope
    (`with strategy.scope():`). Every process must call it; the returned
    counts are the totals over all processes. Under `torch.distributed`,
    a process whose peers do not call it waits
    `keras_norms.precise.DISTRIBUTED_JOIN_TIMEOUT` seconds (60) for them
    on the process group's store and then raises `RuntimeError`,
    changing nothing, instead of blocking in the collective. Synchronized
    layers (`SyncBatchNormalization`) need the same number of batches on
    every process (their batch statistics are those of the global
    batches).

    Args:
        model: A Keras model (or layer) holding BatchNormalization-like
            layers (see `batch_norm_layers`; `EvoNormB0` included).
        x: Input data, as `model.predict` takes it: a NumPy array (or a
            list/dict of arrays), a `tf.data.Dataset`, a
            `keras.utils.PyDataset`, a generator of batches, or a torch
            `DataLoader`. Batches may be `(x,)`, `(x, y)` or
            `(x, y, sample_weight)` tuples; only `x` is used.
        batch_size: Batch size for array inputs (default 32, as `predict`;
            it sets the batch statistics, so use the training batch size).
            Ignored for datasets and generators, which are batched.
        steps: Largest number of batches to use (`None`: all of `x`).
        verbose: `"auto"` or `1`: a progress bar, `0`: silent.
        include_frozen: Also recompute frozen layers (see above).

    Returns:
        A dict: `"num_batches"` and `"num_samples"` used, `"layers"` (the
        new statistics, `{layer name: {"moving_mean": array,
        "moving_variance": array}}`, without `"moving_mean"` for a layer
        that keeps none, such as `EvoNormB0`), `"skipped"` (names of frozen
        layers left alone) and `"rejected"` (names of layers whose batch
        statistics were not finite, left alone; see below).

    Raises:
        TypeError: `steps` or `batch_size` is not an integer (or None).
        ValueError: `x` is empty, or `steps` or `batch_size` is `<= 0`.
        RuntimeError: Under `torch.distributed`, a process that does not
            call it too (see above); under TensorFlow, a `TF_CONFIG`
            cluster of several workers without a multi-worker strategy in
            scope, or a call inside `strategy.run`.

    Warns:
        RuntimeWarning: A layer's batch statistics were NaN or infinite for
            some batch (one non-finite sample makes its whole batch's
            statistics non-finite). That layer keeps its previous moving
            statistics, so one bad sample cannot overwrite every channel
            with NaN; the warning names each such layer and its first bad
            batch (index and sample range in `x`), and the result lists
            it under `"rejected"`. The other layers are updated.

    Reference:
        - [Wu & Johnson, 2021](https://arxiv.org/abs/2105.07576).

    Examples:
        >>> bn = kn.BatchNormalization()
        >>> model = keras.Sequential([keras.Input((2,)), bn])
        >>> x = np.array([[0.0, 10.0], [4.0, 30.0]] * 4, dtype="float32")
        >>> result = kn.recompute_batch_norm_statistics(model, x, verbose=0)
        >>> print(np.round(keras.ops.convert_to_numpy(bn.moving_mean), 3))
        [ 2. 20.]
        >>> print(np.round(keras.ops.convert_to_numpy(bn.moving_variance), 3))
        [  4. 100.]
    """
    layers, skipped, stats, num_batches, num_samples = precise_statistics(
        model,
        x,
        batch_size,
        steps,
        verbose,
        include_frozen,
        DISTRIBUTED_JOIN_TIMEOUT,
    )
    result = {
        "num_batches": num_batches,
        "num_samples": num_samples,
        "layers": {},
        "skipped": [layer.name for layer in skipped],
        "rejected": [],
    }
    if not layers:
        warn_no_layers(model, skipped)
        return result
    if skipped:
        warnings.warn(
            f"Left the statistics of {len(skipped)} frozen "
            "BatchNormalization layer(s) as they are ("
            + ", ".join(layer.name for layer in skipped)
            + "): they normalize with their moving statistics in training. "
            "Pass `include_frozen=True` to recompute them too.",
            stacklevel=2,
        )
    for key, layer, layer_stats in zip(layer_keys(layers), layers, stats):
        if layer_stats is None:  # non-finite: kept, warned about
            result["rejected"].append(key)
            continue
        for name, value in layer_stats.items():
            var = getattr(layer, name)
            var.assign(value.astype(var.dtype))
        result["layers"][key] = {
            name: value.astype(np.float32)
            for name, value in layer_stats.items()
        }
    return result


def batch_norm_statistics_report(
    model,
    x,
    *,
    batch_size=None,
    steps=None,
    mean_threshold=0.1,
    variance_threshold=0.1,
    include_frozen=False,
    verbose=0,
    print_fn=None,
):
    """How far each BatchNormalization's moving statistics are from precise.

    Computes the precise statistics on `x` (as
    `recompute_batch_norm_statistics`, without changing the model) and,
    for each layer, over its channels:

    - `mean_shift = max |moving_mean - mean| / sqrt(variance + epsilon)`,
      the mean error in units of the normalized output;
    - `variance_log_ratio =
      max |log((moving_variance + epsilon) / (variance + epsilon))|`,
      the relative error of the scale the layer divides by, squared
      (`epsilon` keeps a dead channel of variance 0 finite);
    - `stale`: `mean_shift > mean_threshold` or
      `variance_log_ratio > variance_threshold`.

    A layer without a moving mean (`EvoNormB0`) has `mean_shift=None`
    (`-` in the table) and is stale on its variance alone.

    Prints a table (as `model.summary`) and returns it as a dict. Across
    processes (each with its own shard, see
    `recompute_batch_norm_statistics`) it compares with the global
    statistics, on every process.

    Args:
        model: A Keras model holding BatchNormalization-like layers
            (see `batch_norm_layers`).
        x: Input data, as `recompute_batch_norm_statistics` takes it.
        batch_size: Batch size for array inputs (default 32).
        steps: Largest number of batches to use.
        mean_threshold: Largest `mean_shift` not flagged stale.
        variance_threshold: Largest `variance_log_ratio` not flagged stale.
        include_frozen: Also report frozen layers (compared with the
            statistics they would have with batch statistics).
        verbose: Progress bar of the pass over `x` (`0`: none).
        print_fn: Called with the table (one string); default `print`.
            `print_fn=False` prints nothing.

    Returns:
        `{layer name: {"mean_shift": float or None, "variance_log_ratio":
        float, "stale": bool}}`, in model order; `mean_shift` is `None` for
        a layer without a moving mean (`EvoNormB0`). Frozen layers (unless
        `include_frozen`) and layers with non-finite batch statistics are
        left out.

    Examples:
        >>> bn = kn.BatchNormalization(name="bn")
        >>> model = keras.Sequential([keras.Input((2,)), bn])
        >>> x = np.array([[0.0, 10.0], [4.0, 30.0]] * 4, dtype="float32")
        >>> report = kn.batch_norm_statistics_report(model, x)
        BatchNormalization statistics vs precise (stale above: ...)
        ┏━━━━━━━┳━━━━━━━━━━━━┳━━━━━━━━━━━━━━━━┳━━━━━━━┓
        ┃ Layer ┃ Mean shift ┃ Var. log ratio ┃ Stale ┃
        ┡━━━━━━━╇━━━━━━━━━━━━╇━━━━━━━━━━━━━━━━╇━━━━━━━┩
        │ bn    │     2.0000 │         4.6042 │   yes │
        └───────┴────────────┴────────────────┴───────┘
         Stale layers: 1 of 1
        >>> _ = kn.recompute_batch_norm_statistics(model, x, verbose=0)
        >>> report = kn.batch_norm_statistics_report(model, x, print_fn=False)
        >>> report["bn"]["stale"]
        False
    """
    mean_threshold = _validation.check_non_negative_float(
        "mean_threshold", mean_threshold, finite=False
    )
    variance_threshold = _validation.check_non_negative_float(
        "variance_threshold", variance_threshold, finite=False
    )
    layers, skipped, stats, _, _ = precise_statistics(
        model,
        x,
        batch_size,
        steps,
        verbose,
        include_frozen,
        DISTRIBUTED_JOIN_TIMEOUT,
    )
    if not layers:
        warn_no_layers(model, skipped)
        return {}
    report = {}
    for key, layer, layer_stats in zip(layer_keys(layers), layers, stats):
        if layer_stats is None:  # non-finite: warned about, not reported
            continue
        mean_shift, log_ratio = errors(layer, layer_stats)
        report[key] = {
            "mean_shift": mean_shift,
            "variance_log_ratio": log_ratio,
            "stale": bool(
                (mean_shift is not None and mean_shift > mean_threshold)
                or log_ratio > variance_threshold
            ),
        }
    if print_fn is not False:
        (print_fn or print)(
            format_report(report, mean_threshold, variance_threshold)
        )
    return report
