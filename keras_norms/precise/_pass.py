"""The statistics pass: batch statistics of the current network averaged
over the data, with every variable left as it was."""

import contextlib
import warnings

import keras
import numpy as np

from keras_norms import _compat
from keras_norms import _validation
from keras_norms import backend as kn_backend
from keras_norms.precise._data import count_samples
from keras_norms.precise._data import input_batches
from keras_norms.precise._data import to_tensors
from keras_norms.precise._layers import batch_norm_layers
from keras_norms.precise._layers import is_frozen
from keras_norms.precise._layers import moving_statistics
from keras_norms.precise._layers import reset
from keras_norms.precise._layers import statistics_mode


def to_numpy(v):
    if isinstance(v, keras.Variable):
        v = v.value
    with warnings.catch_warnings():
        # NumPy 2 warns about the `copy` keyword of tf / torch `__array__`.
        warnings.simplefilter("ignore", DeprecationWarning)
        return np.array(keras.ops.convert_to_numpy(v))


def no_grad():
    if keras.backend.backend() == "torch":
        import torch

        return torch.no_grad()
    return contextlib.nullcontext()


def forward_state(model):
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


def ensure_built(model, inputs):
    if model.built and all(
        layer.built
        for layer in _compat.flatten_layers(model, include_self=False)
    ):
        return
    model(to_tensors(inputs), training=False)


def precise_statistics(
    model, x, batch_size, steps, verbose, include_frozen, join_timeout
):
    """Compute the precise statistics; every variable is left as it was.

    `join_timeout`: seconds to wait for the other processes of a
    torch.distributed run. With several processes (each its own shard of
    `x`), the sums and counts are those of every process together.

    Returns `(layers, skipped, stats, num_batches, num_samples)` where
    `stats[i]` maps each of `moving_statistics(layers[i])` to its precise
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

    # Several processes, each with its own shard: their sums are combined.
    processes = kn_backend.num_processes("recompute_batch_norm_statistics")
    with kn_backend.outside_distribution():  # each process's own data
        total, batches = input_batches(x, batch_size, steps)
    try:
        first = next(batches)
    except StopIteration:
        raise ValueError(
            f"`x` holds no samples. Received: x={_validation.describe(x)}"
        ) from None
    ensure_built(model, first)

    candidates = batch_norm_layers(model)
    if include_frozen:
        layers, skipped = candidates, []
    else:
        layers = [layer for layer in candidates if not is_frozen(layer)]
        skipped = [layer for layer in candidates if is_frozen(layer)]
    if not layers:
        batches.close()
        return layers, skipped, [], 0, 0
    if processes > 1:
        # The collectives need every process: refuse at once (after a
        # short wait) a call the other processes do not make.
        try:
            kn_backend.join_all_processes(
                "recompute_batch_norm_statistics", join_timeout
            )
        except RuntimeError:
            batches.close()
            raise

    with kn_backend.process_local_scope(model.variables):
        sums, num_batches, num_samples, rejected = _local_sums(
            model, layers, first, batches, total, verbose, include_frozen
        )
    if processes > 1:
        sums, num_batches, num_samples, rejected = _global_sums(
            sums, num_batches, num_samples, rejected
        )
    if num_samples == 0:
        raise ValueError(
            f"`x` holds no samples. Received: x={_validation.describe(x)}"
        )
    stats = [
        None
        if k in rejected
        else {name: s / num_samples for name, s in acc.items()}
        for k, acc in enumerate(sums)
    ]
    warn_non_finite(layers, rejected)
    return layers, skipped, stats, num_batches, num_samples


def _local_sums(model, layers, first, batches, total, verbose, include_frozen):
    """This process's `n_b * statistic_b` sums, batches, samples, rejects.

    Every variable a training-mode forward may write is restored.
    """
    variables = forward_state(model)
    snapshot = [to_numpy(v) for v in variables]
    sums = [
        {
            name: np.zeros(getattr(layer, name).shape, np.float64)
            for name in moving_statistics(layer)
        }
        for layer in layers
    ]
    progbar = keras.utils.Progbar(total, verbose=verbose) if verbose else None
    num_batches = num_samples = 0
    rejected = {}  # layer index -> (batch index, first sample, samples)
    try:
        with statistics_mode(layers, include_frozen), no_grad():
            # With momentum 0 the update `moving * 0 + batch * 1` is the
            # batch statistic exactly, provided `moving` is finite.
            for layer in layers:
                reset(layer)
            batch = first
            while batch is not None:
                n = count_samples(batch)
                if n > 0:
                    model(to_tensors(batch), training=True)
                    for k, (acc, layer) in enumerate(zip(sums, layers)):
                        finite = True
                        for name in acc:
                            value = to_numpy(getattr(layer, name))
                            acc[name] += n * value.astype(np.float64)
                            finite = finite and np.all(np.isfinite(value))
                        if finite:
                            continue
                        rejected.setdefault(k, (num_batches, num_samples, n))
                        reset(layer)  # NaN * momentum 0 would stay NaN
                    num_batches += 1
                    num_samples += n
                    if progbar is not None:
                        progbar.update(num_batches)
                batch = next(batches, None)
    finally:
        batches.close()
        for v, value in zip(variables, snapshot):
            v.assign(value)
    if progbar is not None and total is None and num_batches:
        progbar.update(num_batches, finalize=True)
    return sums, num_batches, num_samples, rejected


def _global_sums(sums, num_batches, num_samples, rejected):
    """Every process's sums, batches and samples added up, through ONE
    collective of the backend (every layer's sums, a rejected flag per
    layer and the two counts in one float64 vector). A layer rejected on
    any process is rejected on all (`None` where the bad batch was
    another process's)."""
    flat = [acc[name].ravel() for acc in sums for name in acc]
    flags = [float(k in rejected) for k in range(len(sums))]
    vector = np.concatenate(flat + [flags, [num_batches, num_samples]])
    vector = kn_backend.sum_over_processes(vector)
    offset = 0
    for acc in sums:
        for name, value in acc.items():
            acc[name] = vector[offset : offset + value.size].reshape(
                value.shape
            )
            offset += value.size
    flags = vector[offset : offset + len(sums)]
    rejected = {k: rejected.get(k) for k in range(len(sums)) if flags[k] > 0}
    return sums, int(vector[-2]), int(vector[-1]), rejected


def warn_non_finite(layers, rejected):
    """Warn, naming each layer and its first batch of non-finite statistics."""
    if not rejected:
        return
    lines = [
        f"- '{layers[k].name}': "
        + (
            "in another process's data"
            if where is None
            else f"from batch {where[0]} (samples {where[1]} to "
            f"{where[1] + where[2] - 1} of `x`)"
        )
        for k, where in sorted(rejected.items())
    ]
    warnings.warn(
        f"Non-finite (NaN or infinite) batch statistics in "
        f"{len(rejected)} BatchNormalization layer(s); their moving "
        "statistics are left as they were (a non-finite sample in `x`, or "
        "a layer before them overflowing):\n" + "\n".join(lines),
        RuntimeWarning,
        stacklevel=3,
    )


def warn_no_layers(model, skipped):
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
