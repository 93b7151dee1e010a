"""tf_keras and TensorFlow Addons layer configs -> keras_norms layers.

Models saved with Keras 2 (`tf_keras`) or built with TensorFlow Addons
(archived in 2024) carry normalization layers whose configs Keras 3 no
longer reads: tf_keras' BatchNormalization with `virtual_batch_size`
(ghost batches) or a built `axis` list, and Addons' `GroupNormalization`,
`InstanceNormalization`, `FilterResponseNormalization` and
`WeightNormalization`. `layer_from_config` maps each to its keras_norms
twin, argument by argument; `keras_norms.convert` calls it for a dict.
"""

from keras_norms import _validation

# Arguments the twins do not have that carry no behaviour in Keras 3:
# `fused` picked a kernel in tf_keras (keras_norms' ops choose their own).
_DROPPED = {"fused"}


def _dtype_policy(config):
    """tf_keras writes a mixed-precision policy as a `Policy` dict
    (`{"class_name": "Policy", "config": {"name": "mixed_float16"}}`),
    which Keras 3 does not read; its name is Keras 3's policy name."""
    dtype = config.get("dtype")
    if isinstance(dtype, dict) and dtype.get("class_name") == "Policy":
        name = dtype.get("config", {}).get("name")
        if not isinstance(name, str):
            raise ValueError(
                "A tf_keras dtype policy names its policy in "
                "`config['name']`, e.g. 'mixed_float16'. Received: "
                f"dtype={dtype!r}"
            )
        config["dtype"] = name
    return config


def _single_axis(config, name):
    """tf_keras writes a built layer's `axis` as a list, e.g. `[3]`."""
    axis = config.get("axis", -1)
    if isinstance(axis, (list, tuple)):
        if len(axis) != 1:
            raise ValueError(
                f"{name}'s twin normalizes along one channel axis; this "
                f"config has several. Received: axis={axis!r}"
            )
        axis = axis[0]
    config["axis"] = axis
    return config


def _batch_normalization(config, serialized):
    from keras_norms.layers.batch_normalization import BatchNormalization

    if config.pop("adjustment", None) is not None:
        raise ValueError(
            "tf_keras' BatchNormalization `adjustment` (a Python function "
            "of the batch shape) is not serializable and has no twin; "
            "rebuild the layer without it. Received: adjustment=..."
        )
    axis = config.get("axis", -1)
    config = _single_axis(config, "BatchNormalization")
    if config.get("virtual_batch_size") and _is_built_axis(axis, serialized):
        # A built tf_keras ghost BN writes its axis in its internal view,
        # which has an extra (virtual batch) axis in front: [4] for the
        # channels of a rank-4 input.
        config["axis"] -= 1
    return BatchNormalization, config


def _is_built_axis(axis, serialized):
    """Whether a tf_keras BatchNormalization `axis` is the built one.

    tf_keras writes the user's `axis` until the layer is built, then the
    list of its non-negative axes (shifted by one with ghost batches).
    Since Keras 2.13 a built layer's serialization carries a
    `build_config` and an unbuilt one does not (it has a `module` key);
    older ones have neither key, and there only a list can be built
    (a saved model's layers are).
    """
    if not isinstance(axis, (list, tuple)):
        return False
    if "build_config" in serialized:
        built = True
    else:
        built = "module" not in serialized and all(a >= 0 for a in axis)
    if built and any(a < 1 for a in axis):
        raise ValueError(
            "A built tf_keras BatchNormalization with `virtual_batch_size` "
            "writes its axis shifted by one for its ghost-batch view (at "
            f"least 1). Received: axis={axis!r}"
        )
    return built


def _layer_normalization(config, serialized):
    from keras_norms.layers.layer_normalization import LayerNormalization

    return LayerNormalization, config


def _group_normalization(config, serialized):
    from keras_norms.layers.group_normalization import GroupNormalization

    return GroupNormalization, config


def _instance_normalization(config, serialized):
    from keras_norms.layers.instance_normalization import InstanceNormalization

    groups = config.pop("groups", -1)
    if groups not in (-1, None):
        raise ValueError(
            "Addons' InstanceNormalization with `groups` other than -1 is a "
            "GroupNormalization: convert it as one. "
            f"Received: groups={groups!r}"
        )
    return InstanceNormalization, config


def _filter_response_normalization(config, serialized):
    from keras_norms.layers.filter_response_normalization import (
        FilterResponseNormalization,
    )

    # Addons' `axis` lists the reduced (spatial) axes of an NHWC/NCHW
    # input, [1, 2] by default; ours is the channel axis.
    spatial = config.get("axis", [1, 2])
    spatial = [spatial] if _validation.is_integer(spatial) else list(spatial)
    channel = [a for a in (1, 2, 3) if a not in [s % 4 for s in spatial]]
    if len(spatial) != 2 or len(channel) != 1:
        raise ValueError(
            "Addons' FilterResponseNormalization `axis` must name the two "
            "spatial axes of a rank-4 input. Received: "
            f"axis={config.get('axis')!r}"
        )
    config["axis"] = -1 if channel[0] == 3 else channel[0]
    return FilterResponseNormalization, config


def _weight_normalization(config, serialized):
    from keras_norms.layers.weight_normalization import WeightNormalization

    inner = dict(config["layer"])
    inner["config"] = _dtype_policy(dict(inner.get("config", {})))
    if "module" not in inner and "registered_name" not in inner:
        # A bare {"class_name": "Dense", ...}: a built-in Keras layer.
        inner["module"] = "keras.layers"
    config["layer"] = inner  # the Wrapper's from_config deserializes it
    config.setdefault("data_init", True)  # Addons' default
    return WeightNormalization, config


_TWINS = {
    "BatchNormalization": _batch_normalization,
    "LayerNormalization": _layer_normalization,
    "GroupNormalization": _group_normalization,
    "Addons>GroupNormalization": _group_normalization,
    "Addons>InstanceNormalization": _instance_normalization,
    "Addons>FilterResponseNormalization": _filter_response_normalization,
    "Addons>WeightNormalization": _weight_normalization,
}


def layer_from_config(serialized):
    """The keras_norms layer for a tf_keras / TF Addons layer config.

    Args:
        serialized: A dict `{"class_name": ..., "config": {...}}`, as
            `tf_keras.layers.serialize(layer)` or a saved model's JSON
            gives it.

    Returns:
        An unbuilt keras_norms layer with the same arguments.
    """
    if "class_name" not in serialized:
        raise TypeError(
            "Expected a serialized layer, a dict with 'class_name' and "
            f"'config'. Received: serialized={_validation.describe(serialized)}"
        )
    class_name = serialized["class_name"]
    twin = _TWINS.get(class_name)
    if twin is None:
        raise ValueError(
            f"No keras_norms twin for a '{class_name}' config; known: "
            f"{sorted(_TWINS)}. Received: class_name={class_name!r}"
        )
    config = {
        key: value
        for key, value in dict(serialized.get("config", {})).items()
        if key not in _DROPPED
    }
    cls, config = twin(_dtype_policy(config), serialized)
    try:
        return cls.from_config(config)
    except TypeError as error:
        raise ValueError(
            f"Cannot map the '{class_name}' config to {cls.__name__}: "
            f"{error}. Received: config keys={sorted(config)}"
        ) from error
