"""Read what learned normalization layers learned.

`switchable_importances(model)` gives, for every `SwitchableNormalization`
layer in a model (nested models and wrappers included), the softmaxed
switch weights: how much each of the instance, layer and batch moments
contributes to the mean and to the variance it normalizes with.
`format_importances` turns that into a small text table.
"""

import keras

from keras_norms import _compat
from keras_norms.layers.switchable_normalization import SWITCH_NAMES
from keras_norms.layers.switchable_normalization import SwitchableNormalization

__all__ = ["switchable_importances", "format_importances", "print_importances"]


def _walk(layer, prefix=""):
    """Yield `(path, layer)` for `layer` and every layer nested in it."""
    path = f"{prefix}/{layer.name}" if prefix else layer.name
    yield path, layer
    children = []
    if isinstance(layer, keras.layers.Wrapper):
        children.append(layer.layer)
    # Models list their layers; custom layers track sublayers.
    tracked = _compat.tracked_sublayers(layer)
    for child in list(getattr(layer, "layers", [])) + list(tracked):
        if all(child is not c for c in children):
            children.append(child)
    for child in children:
        yield from _walk(child, path)


def switchable_importances(model):
    """The learned mixture of every SwitchableNormalization layer in `model`.

    Args:
        model: A Keras model or layer; nested models, wrappers and custom
            layers holding sublayers are searched too.

    Returns:
        A dict `{layer name: {"mean": {"instance": p, "layer": p,
        "batch": p}, "variance": {...}}}` of Python floats, each inner dict
        summing to 1, in the order the layers are found. A name used twice
        is qualified with the names of the models around it
        (`"outer/inner/sn"`). Unbuilt layers are skipped.

    Examples:
        >>> model = keras.Sequential([
        ...     keras.Input((8, 8, 3)),
        ...     kn.SwitchableNormalization(name="sn"),
        ... ])
        >>> mean = kn.switchable_importances(model)["sn"]["mean"]
        >>> {kind: round(p, 3) for kind, p in mean.items()}
        {'instance': 0.333, 'layer': 0.333, 'batch': 0.333}
    """
    found = []
    seen = set()
    for path, layer in _walk(model):
        if not isinstance(layer, SwitchableNormalization) or not layer.built:
            continue
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        found.append((path, layer))
    counts = {}
    for _, layer in found:
        counts[layer.name] = counts.get(layer.name, 0) + 1
    result = {}
    for path, layer in found:
        key = layer.name if counts[layer.name] == 1 else path
        mean_p, var_p = layer.switch_importances()
        result[key] = {
            "mean": {n: float(p) for n, p in zip(SWITCH_NAMES, mean_p)},
            "variance": {n: float(p) for n, p in zip(SWITCH_NAMES, var_p)},
        }
    return result


def format_importances(importances, digits=3):
    """A text table of `switchable_importances(model)`, one row a layer.

    Example:

    ```
    layer   mean IN  mean LN  mean BN  var IN  var LN  var BN
    sn_1      0.201    0.305    0.494   0.150   0.402   0.448
    ```
    """
    headers = ["layer", "mean IN", "mean LN", "mean BN", "var IN", "var LN",
               "var BN"]
    rows = []
    for name, parts in importances.items():
        row = [name]
        for kind in ("mean", "variance"):
            row += [f"{parts[kind][n]:.{digits}f}" for n in SWITCH_NAMES]
        rows.append(row)
    widths = [
        max(len(str(r[i])) for r in [headers] + rows)
        for i in range(len(headers))
    ]
    lines = []
    for r in [headers] + rows:
        cells = [r[0].ljust(widths[0])]
        cells += [c.rjust(w) for c, w in zip(r[1:], widths[1:])]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def print_importances(model, digits=3):
    """Print `format_importances(switchable_importances(model))`.

    Examples:
        >>> model = keras.Sequential([
        ...     keras.Input((8, 8, 3)),
        ...     kn.SwitchableNormalization(name="sn"),
        ... ])
        >>> kn.print_importances(model)
        layer  mean IN  mean LN  mean BN  var IN  var LN  var BN
        sn       0.333    0.333    0.333   0.333   0.333   0.333
    """
    print(format_importances(switchable_importances(model), digits=digits))
