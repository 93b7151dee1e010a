"""The keras_norms layers, one public layer per module."""

from keras_norms.layers.batch_normalization import BatchNormalization
from keras_norms.layers.group_normalization import GroupNormalization
from keras_norms.layers.instance_normalization import InstanceNormalization
from keras_norms.layers.layer_normalization import LayerNormalization

__all__ = [
    "BatchNormalization",
    "GroupNormalization",
    "InstanceNormalization",
    "LayerNormalization",
]
