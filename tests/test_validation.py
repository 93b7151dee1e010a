"""The argument-check policy: wrong type -> TypeError, wrong value -> ValueError.

Every check in `keras_norms._validation`, and the tools' arguments that go
through them, with a value of the wrong type and one of the right type but
out of range; each message names the argument and ends with
`Received: name=value`.
"""

import numpy as np
import pytest

from keras_norms import _check
from keras_norms import _validation as v
from keras_norms import callbacks
from keras_norms import precise

# (check, wrong type, wrong value), each check taking one value.
_CHECKS = {
    "epsilon": (lambda x: v.check_positive_float("epsilon", x), "1e-3", 0.0),
    "momentum": (lambda x: v.check_unit_interval("momentum", x), None, 1.5),
    "atol": (lambda x: v.check_non_negative_float("atol", x), True, -1.0),
    "steps": (lambda x: v.check_positive_int("steps", x), 2.0, 0),
    "depth_radius": (
        lambda x: v.check_non_negative_int("depth_radius", x),
        2.5,
        -1,
    ),
    "bias": (lambda x: v.check_float("bias", x), "1.0", float("nan")),
    "mode": (lambda x: v.check_one_of("mode", x, ("min", "max")), 1, "up"),
    "verbose": (v.check_verbose, 1.0, 3),
    "center": (lambda x: v.check_bool("center", x), 1, None),
    "groups": (v.check_groups, 2.5, -2),
    "axis": (lambda x: v.check_axis_argument(x, allow_list=True), "x", [1, 1]),
}


@pytest.mark.parametrize("name", sorted(_CHECKS))
def test_wrong_type_is_type_error_wrong_value_is_value_error(name):
    check, wrong_type, wrong_value = _CHECKS[name]
    with pytest.raises(TypeError, match=f"`{name}`.*Received: {name}="):
        check(wrong_type)
    if wrong_value is None:  # a bool has no wrong value
        return
    with pytest.raises(ValueError, match=f"`{name}`.*Received: {name}="):
        check(wrong_value)


def test_numpy_scalars_accepted_and_returned_as_python_numbers():
    assert v.check_positive_int("steps", np.int64(3)) == 3
    assert type(v.check_positive_int("steps", np.int64(3))) is int
    assert v.check_positive_int("steps", None, allow_none=True) is None
    assert type(v.check_non_negative_float("atol", np.float32(0.5))) is float
    assert v.check_non_negative_float("t", float("inf"), finite=False) == (
        float("inf")
    )
    with pytest.raises(ValueError, match="finite"):
        v.check_non_negative_float("atol", float("inf"))
    assert v.check_verbose("auto") == 1 and v.check_verbose(np.False_) == 0
    assert v.check_groups(-1) == -1
    assert v.check_axis_argument(np.int32(-1)) == -1


def test_tools_follow_the_policy():
    x = np.zeros((4, 3), "float32")
    with pytest.raises(TypeError, match="Received: rtol="):
        _check.check_tolerance(1e-5, "1e-4", "raise")
    with pytest.raises(ValueError, match="Received: on_mismatch="):
        _check.check_tolerance(1e-5, 1e-4, "ignore")
    with pytest.raises(TypeError, match="Received: every_n_epochs="):
        callbacks.PreciseBatchNorm(x, every_n_epochs=1.5)
    with pytest.raises(TypeError, match="Received: batch_size="):
        callbacks.PreciseBatchNorm(x, batch_size="8")
    with pytest.raises(ValueError, match="Received: batch_size="):
        callbacks.PreciseBatchNorm(x, batch_size=0)
    with pytest.raises(TypeError, match="Received: include_frozen="):
        callbacks.PreciseBatchNorm(x, include_frozen="yes")
    with pytest.raises(TypeError, match="Received: mode="):
        callbacks.FoldAndExport("exported", mode=None)
    with pytest.raises(TypeError, match="precise_statistics"):
        callbacks.FoldAndExport("exported", precise_statistics=(x, 1.5))
    with pytest.raises(TypeError, match="Received: mean_threshold="):
        precise.batch_norm_statistics_report(None, x, mean_threshold="0.1")
    with pytest.raises(ValueError, match="Received: variance_threshold="):
        precise.batch_norm_statistics_report(None, x, variance_threshold=-0.1)
