"""`kn.convert(config)`: tf_keras and TF Addons layer configs to twins.

The tf_keras configs below are `tf_keras.layers.serialize(layer)` of built
layers from tf_keras 2.21 (trimmed of default initializers); the Addons
ones follow `tensorflow_addons` 0.23's `get_config` (archived; not
installable with this TensorFlow).
"""

import json
import pathlib

import numpy as np
import pytest

import keras_norms as kn
from tests import helpers

ZEROS = {
    "module": "keras.initializers",
    "class_name": "Zeros",
    "config": {},
    "registered_name": None,
}
ONES = dict(ZEROS, class_name="Ones")


def _tf_keras_batch_norm():
    return {
        "module": "keras.layers",
        "class_name": "BatchNormalization",
        "config": {
            "name": "batch_normalization",
            "trainable": True,
            "dtype": "float32",
            "axis": [4],
            "momentum": 0.9,
            "epsilon": 0.001,
            "center": True,
            "scale": True,
            "beta_initializer": ZEROS,
            "gamma_initializer": ONES,
            "moving_mean_initializer": ZEROS,
            "moving_variance_initializer": ONES,
            "beta_regularizer": None,
            "gamma_regularizer": None,
            "beta_constraint": None,
            "gamma_constraint": None,
            "virtual_batch_size": 4,
            "fused": False,
        },
        "registered_name": None,
        "build_config": {"input_shape": [None, 5, 5, 3]},
    }


def test_tf_keras_ghost_batch_norm_config():
    # A built tf_keras ghost BN writes axis [4] for a rank-4 input: its
    # internal view has the virtual batch axis in front.
    layer = kn.convert(_tf_keras_batch_norm())
    assert type(layer) is kn.BatchNormalization
    assert layer.axis == 3 and layer.virtual_batch_size == 4
    assert layer.momentum == 0.9 and layer.name == "batch_normalization"
    x = helpers.random_input((8, 5, 5, 3), loc=1.0)
    y = helpers.to_numpy(layer(x, training=True))
    # tf_keras' ghost batches: samples (0, 2, 4, 6) and (1, 3, 5, 7).
    ref = np.zeros(x.shape)
    for rows in ([0, 2, 4, 6], [1, 3, 5, 7]):
        ref[rows] = helpers.numpy_normalize(x[rows], (0, 1, 2), 1e-3)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)
    assert [w.name for w in layer.weights] == [
        "gamma",
        "beta",
        "moving_mean",
        "moving_variance",
    ]


def test_tf_keras_layer_and_group_norm_configs():
    ln = kn.convert(
        {
            "class_name": "LayerNormalization",
            "config": {"axis": [1, 2], "epsilon": 0.01},
        }
    )
    assert type(ln) is kn.LayerNormalization and ln.epsilon == 0.01
    gn = kn.convert(
        {
            "class_name": "GroupNormalization",
            "config": {"groups": 2, "axis": -1, "gamma_initializer": ONES},
        }
    )
    assert type(gn) is kn.GroupNormalization and gn.groups == 2


def test_addons_configs():
    gn = kn.convert(
        {
            "class_name": "Addons>GroupNormalization",
            "config": {"groups": 4, "axis": 1, "epsilon": 1e-5},
        }
    )
    assert type(gn) is kn.GroupNormalization
    assert (gn.groups, gn.axis, gn.epsilon) == (4, 1, 1e-5)
    inorm = kn.convert(
        {
            "class_name": "Addons>InstanceNormalization",
            "config": {"groups": -1, "axis": -1},
        }
    )
    assert type(inorm) is kn.InstanceNormalization
    frn = kn.convert(
        {
            "class_name": "Addons>FilterResponseNormalization",
            "config": {
                "axis": [1, 2],
                "epsilon": 1e-6,
                "learned_epsilon": True,
                "tau_initializer": ZEROS,
            },
        }
    )
    assert type(frn) is kn.FilterResponseNormalization
    assert frn.axis == -1 and frn.learned_epsilon
    frn_cf = kn.convert(
        {
            "class_name": "Addons>FilterResponseNormalization",
            "config": {"axis": [2, 3]},
        }
    )
    assert frn_cf.axis == 1
    wn = kn.convert(
        {
            "class_name": "Addons>WeightNormalization",
            "config": {
                "layer": {"class_name": "Dense", "config": {"units": 3}}
            },
        }
    )
    assert type(wn) is kn.WeightNormalization and wn.data_init is True
    assert wn.layer.units == 3


def test_bad_configs():
    with pytest.raises(ValueError, match="Received: class_name='Dropout'"):
        kn.convert({"class_name": "Dropout", "config": {"rate": 0.5}})
    with pytest.raises(ValueError, match="is a GroupNormalization"):
        kn.convert(
            {
                "class_name": "Addons>InstanceNormalization",
                "config": {"groups": 2},
            }
        )
    with pytest.raises(ValueError, match="adjustment"):
        kn.convert(
            {"class_name": "BatchNormalization", "config": {"adjustment": "fn"}}
        )
    with pytest.raises(ValueError, match="one channel axis"):
        kn.convert(
            {"class_name": "BatchNormalization", "config": {"axis": [1, 2]}}
        )
    with pytest.raises(TypeError, match="serialized="):
        kn.convert({"config": {}})
    with pytest.raises(TypeError, match="keras.Model"):
        kn.convert(["BatchNormalization"])


DATA = pathlib.Path(__file__).parent / "data"


@pytest.mark.parametrize(
    "case", ["built_last", "built_first", "unbuilt_int3", "unbuilt_int1"]
)
def test_tf_keras_ghost_batch_norm_computes_what_tf_keras_computed(case):
    # tf_keras' own ghost BN (tests/data/make_tf_keras_ghost_bn.py) on a
    # batch laid out in blocks of different means, where the grouping of
    # the ghost batches changes the outputs (by up to ~2.4 here when
    # grouped as k consecutive samples). Built layers write the axis
    # shifted (as a list), unbuilt ones the user's int.
    config = json.loads((DATA / "tf_keras_ghost_bn.json").read_text())[case]
    data = np.load(DATA / "tf_keras_ghost_bn.npz")
    x = data[f"{case}/x"]
    layer = kn.convert(config)
    assert layer.axis == (1 if case.endswith(("first", "int1")) else 3)
    np.testing.assert_allclose(
        helpers.to_numpy(layer(x, training=True)),
        data[f"{case}/train"],
        rtol=1e-4,
        atol=1e-4,
    )
    for name in ("moving_mean", "moving_variance"):
        np.testing.assert_allclose(
            helpers.to_numpy(getattr(layer, name)),
            data[f"{case}/{name}"],
            rtol=1e-5,
            atol=1e-5,
        )
    np.testing.assert_allclose(
        helpers.to_numpy(layer(x[:3], training=False)),
        data[f"{case}/infer"],
        rtol=1e-4,
        atol=1e-4,
    )


def test_tf_keras_ghost_batch_norm_axis_that_cannot_be_built():
    config = {
        "class_name": "BatchNormalization",
        "config": {"axis": [0], "virtual_batch_size": 4},
        "build_config": {"input_shape": [None, 5, 3]},
    }
    with pytest.raises(ValueError, match=r"Received: axis=\[0\]"):
        kn.convert(config)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_tf_keras_mixed_precision_policy(policy):
    # tf_keras writes a mixed-precision policy as a `Policy` dict, which
    # Keras 3 does not read (it raised AttributeError 'quantization_mode').
    tf_keras_policy = {
        "module": "keras.mixed_precision",
        "class_name": "Policy",
        "config": {"name": policy},
        "registered_name": None,
    }
    bn = kn.convert(
        {
            "class_name": "BatchNormalization",
            "config": {"axis": -1, "dtype": tf_keras_policy},
        }
    )
    assert bn.dtype_policy.name == policy
    assert bn.compute_dtype == policy.split("_")[1]
    assert bn.variable_dtype == "float32"
    wn = kn.convert(
        {
            "class_name": "Addons>WeightNormalization",
            "config": {
                "dtype": tf_keras_policy,
                "layer": {
                    "class_name": "Dense",
                    "config": {"units": 3, "dtype": tf_keras_policy},
                },
            },
        }
    )
    assert wn.dtype_policy.name == policy
    assert wn.layer.dtype_policy.name == policy
    with pytest.raises(ValueError, match="Received: dtype="):
        kn.convert(
            {
                "class_name": "BatchNormalization",
                "config": {"dtype": {"class_name": "Policy", "config": {}}},
            }
        )
