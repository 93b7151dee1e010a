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

import contextlib
import types
import warnings

import keras
import numpy as np

from keras_norms import _compat
from keras_norms import _graph
from keras_norms import _validation
from keras_norms import backend as kn_backend

__all__ = [
    "batch_norm_layers",
    "batch_norm_statistics_report",
    "format_report",
    "recompute_batch_norm_statistics",
]

# Seconds a torch.distributed process waits for the others to call
# `recompute_batch_norm_statistics` too (models with synchronized layers).
DISTRIBUTED_JOIN_TIMEOUT = 60.0

# The moving statistics a layer may keep, each with the finite value a
# pass starts from (`moving * 0` must not be NaN).
_START_VALUES = {"moving_mean": 0.0, "moving_variance": 1.0}


# ----------------------------------------------------------------------
# Finding the layers
# ----------------------------------------------------------------------
def _is_frozen(layer):
    """Whether the layer normalizes with its moving statistics in training."""
    return (not layer.trainable) or bool(
        getattr(layer, "use_global_stats", False)
    )


def _moving_statistics(layer):
    """The names of the moving statistics `layer` keeps, in order.

    `("moving_mean", "moving_variance")` for a BatchNormalization,
    `("moving_variance",)` for a layer without a moving mean
    (`EvoNormB0`), `()` for a layer without any (or not built).
    """
    return tuple(
        name for name in _START_VALUES if getattr(layer, name, None) is not None
    )


def batch_norm_layers(model):
    """Every built BatchNormalization-like layer in `model`, nested included.

    BatchNormalization-like: `keras.layers.BatchNormalization`,
    `keras_norms.BatchNormalization` and its subclasses
    (`SyncBatchNormalization`), and any layer with `moving_variance` and
    `momentum` attributes, with or without a `moving_mean` (the batch part
    of `BatchInstanceNormalization` and `SwitchableNormalization`;
    `EvoNormB0`, which keeps a moving variance only). A layer shared by
    several parts of the model appears once.

    Args:
        model: A Keras model or layer.

    Returns:
        A list of layers, in the order Keras walks them (depth first, as
        `Layer._flatten_layers`).
    """
    found = []
    for layer in _compat.flatten_layers(model):
        if not _graph.is_batch_norm_like(layer):
            continue
        if "moving_variance" not in _moving_statistics(layer):
            continue  # not built
        found.append(layer)
    return found


def _layer_keys(layers):
    """A unique name for each layer: its name, or its path when shared."""
    counts = {}
    for layer in layers:
        counts[layer.name] = counts.get(layer.name, 0) + 1
    keys = []
    for i, layer in enumerate(layers):
        key = layer.name
        if counts[key] > 1:
            key = getattr(layer, "path", None) or f"{layer.name}_{i}"
        keys.append(key)
    return keys


# ----------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------
def _num_samples(x):
    leaves = keras.tree.flatten(x)
    if not leaves:
        return 0
    shape = getattr(leaves[0], "shape", None)
    if shape is None or len(shape) == 0:
        return 1
    return int(shape[0])


def _batches(x, batch_size, steps):
    """`(num_batches or None, iterator of input batches)` as predict sees x."""
    if isinstance(x, types.GeneratorType):
        # Keras wants tuples from generators; a bare batch is the inputs.
        try:
            adapter = _compat.data_adapter(
                (b if isinstance(b, tuple) else (b,) for b in x)
            )
        except ValueError as e:
            if "empty generator" not in str(e):
                raise
            raise ValueError(
                "`x` holds no samples. Received: x=<empty generator>"
            ) from None
    else:
        try:
            adapter = _compat.data_adapter(
                x,
                # Keras' array adapter would otherwise spread the samples
                # over `steps` batches: keep `predict`'s default of 32.
                batch_size=batch_size or 32,
                steps=steps,
            )
        except (ZeroDivisionError, IndexError) as e:
            raise ValueError(
                f"`x` holds no samples. Received: x={_validation.describe(x)}"
            ) from e
    total = adapter.num_batches
    if steps is not None:
        total = steps if total is None else min(total, steps)

    def iterate():
        adapter.on_epoch_begin()
        try:
            for i, data in enumerate(adapter.get_numpy_iterator()):
                if steps is not None and i >= steps:
                    break
                yield _compat.unpack_inputs(data)
        finally:
            adapter.on_epoch_end()

    return total, iterate()


# ----------------------------------------------------------------------
# Model state
# ----------------------------------------------------------------------
def _numpy(v):
    if isinstance(v, keras.Variable):
        v = v.value
    with warnings.catch_warnings():
        # NumPy 2 warns about the `copy` keyword of tf / torch `__array__`.
        warnings.simplefilter("ignore", DeprecationWarning)
        return np.array(keras.ops.convert_to_numpy(v))


def _no_grad():
    if keras.backend.backend() == "torch":
        import torch

        return torch.no_grad()
    return contextlib.nullcontext()


@contextlib.contextmanager
def _statistics_mode(layers, include_frozen):
    """Momentum 0 (moving statistics = last batch's); restore after.

    With `include_frozen`, frozen layers (`trainable=False`,
    `use_global_stats=True`) use batch statistics too for the time being.
    """
    saved = []
    try:
        for layer in layers:
            entry = {"momentum": layer.momentum}
            if include_frozen:
                entry["trainable"] = layer.trainable
                entry["variables"] = [
                    (v, v.trainable) for v in layer.trainable_variables
                ] + [(v, v.trainable) for v in layer.non_trainable_variables]
                if hasattr(layer, "use_global_stats"):
                    entry["use_global_stats"] = layer.use_global_stats
            saved.append((layer, entry))
            layer.momentum = 0.0
            if include_frozen:
                if not layer.trainable:
                    layer.trainable = True
                if hasattr(layer, "use_global_stats"):
                    layer.use_global_stats = False
        yield
    finally:
        for layer, entry in saved:
            layer.momentum = entry["momentum"]
            if "trainable" in entry and layer.trainable != entry["trainable"]:
                layer.trainable = entry["trainable"]
            for v, flag in entry.get("variables", []):
                if v.trainable != flag:
                    v.trainable = flag
            if "use_global_stats" in entry:
                layer.use_global_stats = entry["use_global_stats"]


def _forward_state(model):
    """The variables a training-mode forward pass of `model` may assign.

    Keras' contract (`stateless_call` returns only these; JAX's trainer
    keeps only these): a forward pass updates non-trainable variables, never
    trainable ones. That is the moving statistics of the BatchNormalization-
    like layers, the seed generator states of dropout and noise layers, and
    other layers' state: `WeightNormalization(data_init=True)`'s
    `data_initialized` flag and the offsets it sets on its first training
    batch (non-trainable for that very reason), the moving statistics of
    renormalization. Frozen layers' weights are non-trainable too and come
    along (with `include_frozen`, the pass makes them trainable for a while;
    they are listed before it does). Trainable weights, optimizer and metric
    state are left out: nothing here writes them.
    """
    return list(model.non_trainable_variables)


def _ensure_built(model, inputs):
    if model.built and all(
        layer.built
        for layer in _compat.flatten_layers(model, include_self=False)
    ):
        return
    model(_to_tensors(inputs), training=False)


def _to_tensors(inputs):
    return keras.tree.map_structure(keras.ops.convert_to_tensor, inputs)


def _precise_statistics(model, x, batch_size, steps, verbose, include_frozen):
    """Compute the precise statistics; every variable is left as it was.

    Returns `(layers, skipped, stats, num_batches, num_samples)` where
    `stats[i]` maps each of `_moving_statistics(layers[i])` to its precise
    value (float64), or is `None` (non-finite).
    """
    steps = _validation.check_positive_int("steps", steps, allow_none=True)
    batch_size = _validation.check_positive_int(
        "batch_size", batch_size, allow_none=True
    )
    verbose = _validation.check_verbose(verbose)
    include_frozen = _validation.check_bool("include_frozen", include_frozen)
    if isinstance(x, (list, tuple)) and len(x) == 0:
        raise ValueError("`x` holds no samples. Received: x=[]")
    if hasattr(x, "shape") and len(x.shape) > 0 and x.shape[0] == 0:
        raise ValueError(
            f"`x` holds no samples. Received: x={_validation.describe(x)}"
        )

    total, batches = _batches(x, batch_size, steps)
    try:
        first = next(batches)
    except StopIteration:
        raise ValueError(
            f"`x` holds no samples. Received: x={_validation.describe(x)}"
        ) from None
    _ensure_built(model, first)

    candidates = batch_norm_layers(model)
    if include_frozen:
        layers, skipped = candidates, []
    else:
        layers = [layer for layer in candidates if not _is_frozen(layer)]
        skipped = [layer for layer in candidates if _is_frozen(layer)]
    if not layers:
        batches.close()
        return layers, skipped, [], 0, 0
    if any(getattr(layer, "synchronized", False) for layer in layers):
        # Their collectives need every process: refuse at once (after a
        # short wait) a call the other processes do not make.
        try:
            kn_backend.join_all_processes(
                "recompute_batch_norm_statistics", DISTRIBUTED_JOIN_TIMEOUT
            )
        except RuntimeError:
            batches.close()
            raise

    # What a training-mode forward pass may write, restored afterwards.
    variables = _forward_state(model)
    snapshot = [_numpy(v) for v in variables]
    sums = [
        {
            name: np.zeros(getattr(layer, name).shape, np.float64)
            for name in _moving_statistics(layer)
        }
        for layer in layers
    ]
    progbar = keras.utils.Progbar(total, verbose=verbose) if verbose else None
    num_batches = num_samples = 0
    rejected = {}  # layer index -> (batch index, first sample, samples)
    try:
        with _statistics_mode(layers, include_frozen), _no_grad():
            # With momentum 0 the update `moving * 0 + batch * 1` is the
            # batch statistic exactly, provided `moving` is finite.
            for layer in layers:
                _reset(layer)
            batch = first
            while batch is not None:
                n = _num_samples(batch)
                if n > 0:
                    model(_to_tensors(batch), training=True)
                    for k, (acc, layer) in enumerate(zip(sums, layers)):
                        finite = True
                        for name in acc:
                            value = _numpy(getattr(layer, name))
                            acc[name] += n * value.astype(np.float64)
                            finite = finite and np.all(np.isfinite(value))
                        if finite:
                            continue
                        rejected.setdefault(k, (num_batches, num_samples, n))
                        _reset(layer)  # NaN * momentum 0 would stay NaN
                    num_batches += 1
                    num_samples += n
                    if progbar is not None:
                        progbar.update(num_batches)
                batch = next(batches, None)
    finally:
        batches.close()
        for v, value in zip(variables, snapshot):
            v.assign(value)
    if num_samples == 0:
        raise ValueError(
            f"`x` holds no samples. Received: x={_validation.describe(x)}"
        )
    if progbar is not None and total is None:
        progbar.update(num_batches, finalize=True)
    stats = [
        None
        if k in rejected
        else {name: s / num_samples for name, s in acc.items()}
        for k, acc in enumerate(sums)
    ]
    _warn_non_finite(layers, rejected)
    return layers, skipped, stats, num_batches, num_samples


def _reset(layer):
    """Set the layer's moving statistics to their finite start values."""
    for name in _moving_statistics(layer):
        var = getattr(layer, name)
        var.assign(np.full(var.shape, _START_VALUES[name], "float32"))


def _warn_non_finite(layers, rejected):
    """Warn, naming each layer and its first batch of non-finite statistics."""
    if not rejected:
        return
    lines = [
        f"- '{layers[k].name}': from batch {batch} (samples {first} to "
        f"{first + n - 1} of `x`)"
        for k, (batch, first, n) in sorted(rejected.items())
    ]
    warnings.warn(
        f"Non-finite (NaN or infinite) batch statistics in "
        f"{len(rejected)} BatchNormalization layer(s); their moving "
        "statistics are left as they were (a non-finite sample in `x`, or "
        "a layer before them overflowing):\n" + "\n".join(lines),
        RuntimeWarning,
        stacklevel=3,
    )


def _warn_no_layers(model, skipped):
    if skipped:
        names = ", ".join(layer.name for layer in skipped)
        warnings.warn(
            f"Model '{model.name}' has no BatchNormalization layer that "
            f"uses batch statistics in training (frozen: {names}); nothing "
            "was changed. Pass `include_frozen=True` to recompute frozen "
            "layers too.",
            stacklevel=3,
        )
    else:
        warnings.warn(
            f"Model '{model.name}' has no BatchNormalization layer; nothing "
            "was changed.",
            stacklevel=3,
        )


# ----------------------------------------------------------------------
# Public functions
# ----------------------------------------------------------------------
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

    Under `torch.distributed` (several processes), a model holding
    synchronized layers (`SyncBatchNormalization`,
    `BatchNormalization(synchronized=True)`) must run this on every
    process, each with its own shard of the data and the same number of
    batches, as `fit` runs the `PreciseBatchNorm` callback: the layers'
    batch statistics are then those of the global batches, identical on
    every process. Called on some processes only, it would block in
    collectives the others never join; it waits
    `keras_norms.precise.DISTRIBUTED_JOIN_TIMEOUT` seconds (60) for them
    on the process group's store and then raises `RuntimeError`, changing
    nothing. Models without synchronized layers issue no collective: each
    process computes the statistics of its own data.

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
        RuntimeError: Under `torch.distributed`, a model with synchronized
            layers and a process that does not call it too (see above).

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
    layers, skipped, stats, num_batches, num_samples = _precise_statistics(
        model, x, batch_size, steps, verbose, include_frozen
    )
    result = {
        "num_batches": num_batches,
        "num_samples": num_samples,
        "layers": {},
        "skipped": [layer.name for layer in skipped],
        "rejected": [],
    }
    if not layers:
        _warn_no_layers(model, skipped)
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
    for key, layer, layer_stats in zip(_layer_keys(layers), layers, stats):
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

    Prints a table (as `model.summary`) and returns it as a dict.

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
    layers, skipped, stats, _, _ = _precise_statistics(
        model, x, batch_size, steps, verbose, include_frozen
    )
    if not layers:
        _warn_no_layers(model, skipped)
        return {}
    report = {}
    for key, layer, layer_stats in zip(_layer_keys(layers), layers, stats):
        if layer_stats is None:  # non-finite: warned about, not reported
            continue
        mean_shift, log_ratio = _errors(layer, layer_stats)
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


def _errors(layer, stats):
    """`(mean_shift, variance_log_ratio)` of the layer's moving statistics
    against the precise `stats`; `mean_shift` is `None` without a mean."""
    eps = float(getattr(layer, "epsilon", 0.0))
    variance = stats["moving_variance"]
    moving_var = _numpy(layer.moving_variance).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.abs(
            np.log((np.maximum(moving_var, 0) + eps) / (variance + eps))
        )
    log_ratio = float(np.nan_to_num(np.max(ratio), nan=np.inf))
    if "moving_mean" not in stats:
        return None, log_ratio
    moving_mean = _numpy(layer.moving_mean).astype(np.float64)
    shift = np.abs(moving_mean - stats["moving_mean"]) / np.sqrt(
        np.maximum(variance, 0) + eps
    )
    return float(np.nan_to_num(np.max(shift), nan=np.inf)), log_ratio


def format_report(report, mean_threshold=0.1, variance_threshold=0.1):
    """The report of `batch_norm_statistics_report` as a text table.

    A layer without a moving mean (`mean_shift` `None`) shows `-` for it.
    """
    headers = ("Layer", "Mean shift", "Var. log ratio", "Stale")
    rows = [
        (
            name,
            "-" if r["mean_shift"] is None else f"{r['mean_shift']:.4f}",
            f"{r['variance_log_ratio']:.4f}",
            "yes" if r["stale"] else "no",
        )
        for name, r in report.items()
    ]
    widths = [
        max([len(headers[i])] + [len(row[i]) for row in rows])
        for i in range(len(headers))
    ]

    def line(cells, bar):
        parts = [
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths))
        ]
        return f"{bar} " + f" {bar} ".join(parts) + f" {bar}"

    def rule(left, mid, right, fill):
        return left + mid.join(fill * (w + 2) for w in widths) + right

    stale = sum(r["stale"] for r in report.values())
    out = [
        "BatchNormalization statistics vs precise (stale above: mean shift "
        f"{mean_threshold:g}, variance log ratio {variance_threshold:g})",
        rule("┏", "┳", "┓", "━"),
        line(headers, "┃"),
        rule("┡", "╇", "┩", "━"),
    ]
    out += [line(row, "│") for row in rows]
    out += [
        rule("└", "┴", "┘", "─"),
        f" Stale layers: {stale} of {len(report)}",
    ]
    return "\n".join(out)
