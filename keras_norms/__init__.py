"""keras_norms: normalization layers for Keras 3 on TensorFlow, JAX and torch.

Layers (one statistics kernel, `keras_norms.ops`, serves them all):
BatchNormalization, SyncBatchNormalization, LayerNormalization,
InstanceNormalization, GroupNormalization, BatchInstanceNormalization,
SwitchableNormalization, WeightNormalization, RMSNormalization,
FilterResponseNormalization, WeightStandardization,
AdaptiveInstanceNormalization, ConditionalNormalization, EvoNormS0, EvoNormB0,
LocalResponseNormalization. Folding and export:
`fold_batch_norms`, `optimize_for_inference`, `export_saved_model`,
`FoldAndExport`. Drop-in conversion: `convert`, `convert_sync_batchnorm`. Precise
statistics: `recompute_batch_norm_statistics`, `PreciseBatchNorm`,
`batch_norm_statistics_report`.
"""

from keras_norms import ops
from keras_norms.callbacks import FoldAndExport
from keras_norms.callbacks import PreciseBatchNorm
from keras_norms.conversion import convert
from keras_norms.deploy import export
from keras_norms.conversion import convert_sync_batchnorm
from keras_norms.saved_model import export_saved_model
from keras_norms.folding import FoldReport
from keras_norms.folding import fold_batch_norms
from keras_norms.inference import InferenceReport
from keras_norms.inference import optimize_for_inference
from keras_norms.inspection import print_importances
from keras_norms.inspection import switchable_importances
from keras_norms.layers import AdaptiveInstanceNormalization
from keras_norms.layers import Affine
from keras_norms.layers import BatchInstanceNormalization
from keras_norms.layers import BatchNormalization
from keras_norms.layers import ClipToUnitInterval
from keras_norms.layers import ConditionalNormalization
from keras_norms.layers import EvoNormB0
from keras_norms.layers import EvoNormS0
from keras_norms.layers import FilterResponseNormalization
from keras_norms.layers import GroupNormalization
from keras_norms.layers import InstanceNormalization
from keras_norms.layers import LayerNormalization
from keras_norms.layers import LocalResponseNormalization
from keras_norms.layers import RMSNormalization
from keras_norms.layers import SwitchableNormalization
from keras_norms.layers import SyncBatchNormalization
from keras_norms.layers import WeightNormalization
from keras_norms.layers import WeightStandardization
from keras_norms.precise import batch_norm_statistics_report
from keras_norms.precise import recompute_batch_norm_statistics

__version__ = "0.1.0"

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
    "FoldAndExport",
    "FoldReport",
    "GroupNormalization",
    "InferenceReport",
    "InstanceNormalization",
    "LayerNormalization",
    "LocalResponseNormalization",
    "PreciseBatchNorm",
    "RMSNormalization",
    "SwitchableNormalization",
    "SyncBatchNormalization",
    "WeightNormalization",
    "WeightStandardization",
    "batch_norm_statistics_report",
    "convert",
    "convert_sync_batchnorm",
    "export",
    "export_saved_model",
    "fold_batch_norms",
    "ops",
    "optimize_for_inference",
    "print_importances",
    "recompute_batch_norm_statistics",
    "switchable_importances",
]
