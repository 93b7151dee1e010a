"""Which layers keep BatchNormalization-like moving statistics, and the
mode a statistics pass puts them in (momentum 0, frozen layers thawed)."""

import contextlib

import numpy as np

from keras_norms import _compat
from keras_norms import _graph

# The moving statistics a layer may keep, each with the finite value a
# pass starts from (`moving * 0` must not be NaN).
START_VALUES = {"moving_mean": 0.0, "moving_variance": 1.0}


def is_frozen(layer):
    """Whether the layer normalizes with its moving statistics in training."""
    return (not layer.trainable) or bool(
        getattr(layer, "use_global_stats", False)
    )


def moving_statistics(layer):
    """The names of the moving statistics `layer` keeps, in order.

    `("moving_mean", "moving_variance")` for a BatchNormalization,
    `("moving_variance",)` for a layer without a moving mean
    (`EvoNormB0`), `()` for a layer without any (or not built).
    """
    return tuple(
        name for name in START_VALUES if getattr(layer, name, None) is not None
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
        if "moving_variance" not in moving_statistics(layer):
            continue  # not built
        found.append(layer)
    return found


def layer_keys(layers):
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


@contextlib.contextmanager
def statistics_mode(layers, include_frozen):
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


def reset(layer):
    """Set the layer's moving statistics to their finite start values."""
    for name in moving_statistics(layer):
        var = getattr(layer, name)
        var.assign(np.full(var.shape, START_VALUES[name], "float32"))
