"""A float32 inference copy of a mixed-precision model.

For the runtimes and formats that cannot run float16 or bfloat16 (see
`keras_norms.deploy.export`): the model rebuilt from its config with every
reduced-precision policy set to float32 and its weights cast.
"""

import keras
import numpy as np

from keras_norms._check import RESOLUTION as _RESOLUTION


def float32_copy(model):
    """A copy of `model` computing in float32, with its weights cast.

    Every layer whose dtype policy computes in float16 or bfloat16 (a
    `mixed_float16` / `mixed_bfloat16` policy, or a `float16` /
    `bfloat16` one) gets the `"float32"` policy; the input layers keep
    their dtype (a layer casts its floating inputs to its compute dtype).
    The model is rebuilt from its config (Sequential, functional, or a
    subclassed model with `get_config`), and its weights are cast to the
    new variables' dtype. For the runtimes that cannot run float16 or
    bfloat16 (see `keras_norms.deploy.export`): its outputs differ from
    the model's by the model's own rounding, which the check's tolerance
    for the model's compute dtype (`tolerances`) accepts.

    Raises:
        ValueError: If the model cannot be rebuilt from its config.
    """
    config = _float32_config(model.get_config())
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")  # the new model's own policy
    try:
        new = type(model).from_config(config)
    except Exception as error:
        raise ValueError(
            f"Cannot make a float32 copy of model '{model.name}' "
            f"({type(model).__name__}) from its config: "
            f"{type(error).__name__}: {error}. Rebuild it as a functional "
            "or Sequential model, or export it in its own dtype "
            f"(dtype=None). Received: model={model.name}"
        ) from error
    finally:
        keras.config.set_dtype_policy(previous)
    new.set_weights([_cast_float(w) for w in model.get_weights()])
    return new


def _cast_float(array):
    """A float16/bfloat16 array as float32; any other as it is."""
    # bfloat16 (ml_dtypes) is not a NumPy floating type: test by name.
    if array.dtype.name in _RESOLUTION:
        return np.asarray(array, "float32")
    return array


def _float32_config(config, input_layer=False):
    """`config` with each float16/bfloat16 `"dtype"` made `"float32"`."""
    if isinstance(config, list):
        return [_float32_config(c, input_layer) for c in config]
    if not isinstance(config, dict):
        return config
    new = {}
    for key, value in config.items():
        if key == "dtype" and not input_layer and _is_reduced(value):
            new[key] = "float32"
        else:
            new[key] = _float32_config(
                value,
                input_layer or config.get("class_name") == "InputLayer",
            )
    return new


def _is_reduced(dtype):
    """Whether a serialized dtype (policy) computes in float16/bfloat16."""
    if isinstance(dtype, dict) and isinstance(dtype.get("config"), dict):
        dtype = dtype["config"].get("name")
    if not isinstance(dtype, str):
        return False
    return dtype.removeprefix("mixed_") in _RESOLUTION
