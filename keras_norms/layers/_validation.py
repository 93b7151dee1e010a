"""Argument checks shared by the layers.

Messages name the argument, say what was expected, and end with
`Received: name=value`, as Keras' own do.
"""

import math
import numbers


def check_positive_float(name, value):
    """A finite float `> 0` (epsilon)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
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


def check_unit_interval(name, value):
    """A float in [0, 1] (momentum)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
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
    if not isinstance(value, bool):
        raise TypeError(
            f"Argument `{name}` must be a bool. Received: {name}={value!r}"
        )
    return value


def check_axis_argument(axis, allow_list=False):
    """An int, or (where allowed) a non-empty list of distinct ints."""
    if isinstance(axis, numbers.Integral) and not isinstance(axis, bool):
        return int(axis)
    if allow_list and isinstance(axis, (list, tuple)) and axis:
        if all(
            isinstance(a, numbers.Integral) and not isinstance(a, bool)
            for a in axis
        ):
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
