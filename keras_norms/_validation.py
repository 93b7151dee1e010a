"""Argument checks shared by the layers.

Messages name the argument, say what was expected, and end with
`Received: name=value`, as Keras' own do. NumPy scalars are accepted
wherever Python ones are (`np.int64(2)`, `np.float32(1e-3)`, `np.True_`)
and returned as plain Python numbers, so configs stay JSON-serializable.
"""

import math
import numbers

import numpy as np


def is_integer(value):
    """Whether `value` is a Python or NumPy integer (not a bool)."""
    return isinstance(value, numbers.Integral) and not isinstance(
        value, (bool, np.bool_)
    )


def is_real(value):
    """Whether `value` is a Python or NumPy real number (not a bool)."""
    return isinstance(value, numbers.Real) and not isinstance(
        value, (bool, np.bool_)
    )


def check_positive_float(name, value):
    """A finite float `> 0` (epsilon), returned as a Python float."""
    if not is_real(value):
        raise TypeError(
            f"Argument `{name}` must be a positive float. "
            f"Received: {name}={value!r}"
        )
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(
            f"Argument `{name}` must be a finite float > 0. "
            f"Received: {name}={value!r}"
        )
    return value


def check_float(name, value):
    """A finite float (LRN's `bias`, `alpha`, `beta`), as a Python float."""
    if not is_real(value):
        raise TypeError(
            f"Argument `{name}` must be a float. Received: {name}={value!r}"
        )
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(
            f"Argument `{name}` must be a finite float. "
            f"Received: {name}={value!r}"
        )
    return value


def check_non_negative_int(name, value):
    """An int `>= 0` (LRN's `depth_radius`), as a Python int."""
    if not is_integer(value) or value < 0:
        raise ValueError(
            f"Argument `{name}` must be a non-negative int. "
            f"Received: {name}={value!r}"
        )
    return int(value)


def check_unit_interval(name, value):
    """A float in [0, 1] (momentum), returned as a Python float."""
    if not is_real(value):
        raise TypeError(
            f"Argument `{name}` must be a float in [0, 1]. "
            f"Received: {name}={value!r}"
        )
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(
            f"Argument `{name}` must be a float in [0, 1]. "
            f"Received: {name}={value!r}"
        )
    return value


def check_verbose(verbose):
    """Keras' `verbose`: "auto" (1), 0 (silent), 1 or 2; returns the int."""
    if verbose == "auto":
        return 1
    if isinstance(verbose, bool):
        return int(verbose)
    if verbose not in (0, 1, 2):
        raise ValueError(
            "Argument `verbose` must be 'auto', 0, 1 or 2. "
            f"Received: verbose={verbose!r}"
        )
    return int(verbose)


def check_bool(name, value):
    """A Python or NumPy bool, returned as a Python bool."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(
            f"Argument `{name}` must be a bool. Received: {name}={value!r}"
        )
    return bool(value)


def check_groups(groups):
    """GroupNormalization's `groups`: a positive int, or -1."""
    if not is_integer(groups) or (groups <= 0 and groups != -1):
        raise ValueError(
            "Argument `groups` must be a positive integer that divides "
            "the number of channels, or -1 for one channel per group. "
            f"Received: groups={groups!r}"
        )
    return int(groups)


def check_axis_argument(axis, allow_list=False):
    """An int, or (where allowed) a non-empty list of distinct ints."""
    if is_integer(axis):
        return int(axis)
    if allow_list and isinstance(axis, (list, tuple)) and axis:
        if all(is_integer(a) for a in axis):
            axes = [int(a) for a in axis]
            if len(set(axes)) == len(axes):
                return axes
    expected = (
        "an int or a non-empty list of distinct ints" if allow_list else "an int"
    )
    raise TypeError(f"Argument `axis` must be {expected}. Received: axis={axis!r}")


def canonical_axes(axis, ndim):
    """`axis` (an int or a list) as a sorted tuple of non-negative ints.

    Raises a `ValueError` when an axis is out of range for a rank-`ndim`
    input, or names the batch axis 0.
    """
    axes = [axis] if isinstance(axis, int) else list(axis)
    result = []
    for a in axes:
        if not -ndim <= a < ndim:
            raise ValueError(
                f"Argument `axis` is out of range for an input of rank "
                f"{ndim}: expected values in [{-ndim}, {ndim - 1}]. "
                f"Received: axis={axis}"
            )
        result.append(a % ndim)
    if len(set(result)) != len(result):
        raise ValueError(
            f"Argument `axis` names the same axis twice for an input of rank "
            f"{ndim}. Received: axis={axis}"
        )
    if 0 in result:
        raise ValueError(
            "Argument `axis` cannot include the batch axis 0: normalization "
            "parameters are per channel, not per sample. "
            f"Received: axis={axis}"
        )
    return tuple(sorted(result))
