"""keras_norms: normalization layers for Keras 3 on TensorFlow, JAX and torch."""

from keras_norms import ops
from keras_norms.layers import BatchNormalization
from keras_norms.layers import GroupNormalization
from keras_norms.layers import InstanceNormalization
from keras_norms.layers import LayerNormalization

__version__ = "0.1.0"

__all__ = [
    "BatchNormalization",
    "GroupNormalization",
    "InstanceNormalization",
    "LayerNormalization",
    "ops",
]
