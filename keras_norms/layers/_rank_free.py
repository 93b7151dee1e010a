"""Layers whose weights fix the sizes along `axis`, not the input rank.

LayerNormalization and RMSNormalization, as Keras' own, take an input of
any rank once built, as long as the sizes along `axis` match.
"""

import keras

from keras_norms import _validation


def build(layer, input_shape):
    """Fix only the sizes along `layer.axis`, not the input rank (Keras).

    For LayerNormalization and RMSNormalization, whose weights have the
    input's sizes along `axis` and nothing else, as Keras' own: built on
    `(2, 2, 2)`, `axis=-1`, they take a `(3, 2, 2, 2)` input too. Sets the
    input spec (`min_ndim`, and the sizes keyed by the axes as given, so a
    negative axis counts from the end and a positive one from the batch axis
    at any rank), records the sizes for `axes`, and sets
    `layer.axis` to Keras' built form (a sorted list: `-1` becomes `[-1]`)
    so that the configs compare equal.
    """
    entries = [layer.axis] if isinstance(layer.axis, int) else list(layer.axis)
    layer._axis_sizes = {a: input_shape[a] for a in entries}
    layer._axis_order = _axis_order(entries, len(input_shape))
    layer.input_spec = keras.layers.InputSpec(
        min_ndim=max(a + 1 if a >= 0 else 1 - a for a in entries),
        axes=dict(layer._axis_sizes),
    )
    layer.axis = sorted(entries)


def _axis_order(entries, ndim):
    """The axis entries in the order of the input positions they name."""
    return tuple(sorted(entries, key=lambda a: a % ndim))


def axes(layer, ndim):
    """The canonical axes `build`'s weights run along at rank `ndim` (the
    axes to normalize over). Refuses an `axis` that names the batch axis
    or one axis twice at this rank, or whose entries come in another order than at
    build (a list mixing signs: the weights would be transposed).
    """
    canonical = _validation.canonical_axes(layer.axis, ndim)
    if _axis_order(layer._axis_sizes, ndim) != layer._axis_order:
        raise ValueError(
            f"{type(layer).__name__}'s `axis` names the input axes in "
            f"another order at rank {ndim} than at build, so its weights "
            f"would not line up; use axes of one sign. Received: "
            f"axis={layer.axis}, ndim={ndim}"
        )
    return canonical
