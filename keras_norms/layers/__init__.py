"""The keras_norms layers, one public layer per module."""

from keras_norms.layers.adaptive_instance_normalization import (
    AdaptiveInstanceNormalization,
)
from keras_norms.layers.affine import Affine
from keras_norms.layers.batch_instance_normalization import (
    BatchInstanceNormalization,
)
from keras_norms.layers.batch_instance_normalization import ClipToUnitInterval
from keras_norms.layers.batch_normalization import BatchNormalization
from keras_norms.layers.conditional_normalization import (
    ConditionalNormalization,
)
from keras_norms.layers.evo_norm_b0 import EvoNormB0
from keras_norms.layers.evo_norm_s0 import EvoNormS0
from keras_norms.layers.filter_response_normalization import (
    FilterResponseNormalization,
)
from keras_norms.layers.group_normalization import GroupNormalization
from keras_norms.layers.instance_normalization import InstanceNormalization
from keras_norms.layers.layer_normalization import LayerNormalization
from keras_norms.layers.local_response_normalization import (
    LocalResponseNormalization,
)
from keras_norms.layers.rms_normalization import RMSNormalization
from keras_norms.layers.switchable_normalization import SwitchableNormalization
from keras_norms.layers.sync_batch_normalization import SyncBatchNormalization
from keras_norms.layers.weight_normalization import WeightNormalization
from keras_norms.layers.weight_standardization import WeightStandardization

__all__ = [
    "AdaptiveInstanceNormalization",
    "Affine",
    "BatchInstanceNormalization",
    "BatchNormalization",
    "ClipToUnitInterval",
    "ConditionalNormalization",
    "EvoNormB0",
    "EvoNormS0",
    "FilterResponseNormalization",
    "GroupNormalization",
    "InstanceNormalization",
    "LayerNormalization",
    "LocalResponseNormalization",
    "RMSNormalization",
    "SwitchableNormalization",
    "SyncBatchNormalization",
    "WeightNormalization",
    "WeightStandardization",
]
