"""Argument checks shared by the layers and the tools.

One policy, as Python's own built-ins follow it:

- an argument of the wrong **type** (a float where an int is expected, a
  string where a number is, a bool where a number is) raises `TypeError`;
- an argument of the right type but a wrong **value** (a negative
  epsilon, momentum 2, `groups=0`, `verbose=3`, an option not in the
  list) raises `ValueError`.

Messages name the argument, say what was expected, and end with
`Received: name=value`, as Keras' own do. NumPy scalars are accepted
wherever Python ones are (`np.int64(2)`, `np.float32(1e-3)`, `np.True_`)
and returned as plain Python numbers, so configs stay JSON-serializable.
Bools are not numbers here (`True` is no epsilon, no step count).
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
    if not is_integer(value):
        raise TypeError(
            f"Argument `{name}` must be a non-negative int. "
            f"Received: {name}={value!r}"
        )
    if value < 0:
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


def check_non_negative_float(name, value, finite=True):
    """A float `>= 0` (a tolerance, a threshold), as a Python float.

    With `finite=False`, `inf` is accepted too (a threshold never reached).
    """
    expected = "a finite float >= 0" if finite else "a float >= 0"
    if not is_real(value):
        raise TypeError(
            f"Argument `{name}` must be {expected}. Received: {name}={value!r}"
        )
    value = float(value)
    if not value >= 0 or (finite and not math.isfinite(value)):
        raise ValueError(
            f"Argument `{name}` must be {expected}. Received: {name}={value!r}"
        )
    return value


def check_positive_int(name, value, allow_none=False):
    """An int `> 0` (a step count, a batch size), as a Python int.

    With `allow_none`, `None` (no limit, the default) is returned as is.
    """
    if value is None and allow_none:
        return None
    expected = "a positive integer" + (" or None" if allow_none else "")
    if not is_integer(value):
        raise TypeError(
            f"Argument `{name}` must be {expected}. Received: {name}={value!r}"
        )
    if value <= 0:
        raise ValueError(
            f"Argument `{name}` must be {expected}. Received: {name}={value!r}"
        )
    return int(value)


def check_one_of(name, value, options):
    """One of the strings `options` (a mode, a policy), returned as is."""
    if value not in options:
        listed = ", ".join(repr(o) for o in options)
        error = ValueError if isinstance(value, str) else TypeError
        raise error(
            f"Argument `{name}` must be one of {listed}. "
            f"Received: {name}={value!r}"
        )
    return value


def check_verbose(verbose):
    """Keras' `verbose`: "auto" (1), 0 (silent), 1 or 2; returns the int."""
    if verbose == "auto":
        return 1
    if isinstance(verbose, (bool, np.bool_)):
        return int(verbose)
    if not (is_integer(verbose) or isinstance(verbose, str)):
        raise TypeError(
            "Argument `verbose` must be 'auto', 0, 1 or 2. "
            f"Received: verbose={verbose!r}"
        )
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
        error = TypeError if not is_integer(groups) else ValueError
        raise error(
            "Argument `groups` must be a positive integer that divides "
            "the number of channels, or -1 for one channel per group. "
            f"Received: groups={groups!r}"
        )
    return int(groups)


def check_axis_argument(axis, allow_list=False):
    """An int, or (where allowed) a non-empty list of distinct ints."""
    if is_integer(axis):
        return int(axis)
    expected = (
        "an int or a non-empty list of distinct ints"
        if allow_list
        else "an int"
    )
    message = f"Argument `axis` must be {expected}. Received: axis={axis!r}"
    if allow_list and isinstance(axis, (list, tuple)):
        if all(is_integer(a) for a in axis):
            axes = [int(a) for a in axis]
            if not axes or len(set(axes)) != len(axes):
                raise ValueError(message)  # a list of ints: a wrong value
            return axes
    raise TypeError(message)


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


def describe(x):
    """A short description of data `x` for a message: type and shape."""
    shape = getattr(x, "shape", None)
    if shape is not None:
        return f"<{type(x).__name__} of shape {tuple(shape)}>"
    return f"<{type(x).__name__}>"


def non_finite_rows(x):
    """The indices of the rows (first axis) of array `x` holding NaN or
    inf, in order (none for an integer or empty array)."""
    x = np.atleast_1d(np.asarray(x))
    if not np.issubdtype(x.dtype, np.inexact) or x.size == 0:
        return []
    finite = np.isfinite(x.reshape(len(x), -1)).all(axis=1)
    return np.flatnonzero(~finite).tolist()


def _what_is_not_finite(row):
    row = np.asarray(row)
    kinds = [
        k for k, bad in (("NaN", np.isnan), ("inf", np.isinf)) if bad(row).any()
    ]
    return " and ".join(kinds)


def check_finite_rows(name, value, why=""):
    """Raise a `ValueError` naming the first row of `value` that holds NaN
    or inf.

    Args:
        name: The argument's name, for the message.
        value: An array, or a list, tuple or dict of arrays (rows along
            the first axis). Leaves NumPy cannot read are skipped (the
            caller's own checks refuse them).
        why: Why finite rows are needed, appended to the message.

    Raises:
        ValueError: A row of `value` holds NaN or inf.
    """
    for label, x in _labelled_leaves(name, value):
        try:
            array = np.asarray(x)
        except (TypeError, ValueError, RuntimeError):
            continue
        rows = non_finite_rows(array)
        if not rows:
            continue
        first = rows[0]
        what = _what_is_not_finite(np.atleast_1d(array)[first])
        listed = ", ".join(str(r) for r in rows[:10])
        listed += ", ..." if len(rows) > 10 else ""
        raise ValueError(
            f"Argument `{name}` must hold finite numbers{why}. Row {first} "
            f"of {label} holds {what} ({len(rows)} of its "
            f"{len(np.atleast_1d(array))} rows are not finite: {listed}); "
            f"drop or fix them. Received: {label}[{first}] holding {what}"
        )


def _labelled_leaves(label, value):
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _labelled_leaves(f"{label}[{key!r}]", item)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _labelled_leaves(f"{label}[{i}]", item)
    else:
        yield label, value


def resolve_groups(groups, channels, axis):
    """The number of groups `groups` (-1: one channel each) makes of
    `channels`; refuses one that does not divide them (at build)."""
    resolved = channels if groups == -1 else groups
    if resolved > channels or channels % resolved:
        raise ValueError(
            f"Argument `groups` must divide the number of channels "
            f"({channels}, along axis {axis}). Received: groups={groups}"
        )
    return resolved
