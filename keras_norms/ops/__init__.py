"""The one statistics kernel every keras_norms layer is built on.

Every normalization here is the same three steps:

1. pick the reduction axes (the layers do this);
2. compute the moments over them: `moments()`;
3. apply one scale and shift, `y = x * a + b` with
   `a = gamma * rsqrt(variance + epsilon)` and `b = beta - mean * a`:
   `scale_and_shift()` computes `a` and `b` from the (small) statistics and
   `normalize()` applies them to the (large) input.

Where the statistics and the affine parameters vary along different axes
(LayerNormalization: statistics per row, `gamma` per feature), `a` and `b`
would be as large as the input; `normalize_moments()` then applies the
per-row normalization and the per-feature affine one after the other.

The functions are written in `keras.ops`, so one implementation serves the
TensorFlow, JAX and PyTorch backends.

On top of these, one function per normalization (`batch_normalization`,
`batch_renormalization`, `layer_normalization`, `rms_normalization`,
`group_normalization`, `instance_normalization`,
`filter_response_normalization`, `adaptive_instance_normalization`,
`evo_norm_s0`, `evo_norm_b0`, `local_response_normalization`) takes a
tensor, its axes, weights and epsilon and returns the normalized tensor:
what each layer's `call` runs,
and what a user can call without a layer. Inside these functions, and only
there, a backend's fused kernel is chosen where a benchmark proved it pays
(torch's `F.batch_norm`, `F.layer_norm`, `F.group_norm`, `F.rms_norm`;
TensorFlow's fused batch norm and LRN kernel outside XLA; see
`keras_norms/backend/native.py`), as `keras.ops.layer_normalization` picks
`F.layer_norm` on torch; everywhere else they run the `keras.ops`
implementation built from the three steps. Both give the same result (the
tests compare them). Nothing is compiled or cached behind the caller: the
result depends on the arguments only.
"""

from keras_norms.ops._batch import BatchNormResult
from keras_norms.ops._batch import batch_normalization
from keras_norms.ops._batch import batch_renormalization
from keras_norms.ops._batch import evo_norm_b0
from keras_norms.ops._conv import conv
from keras_norms.ops._per_sample import adaptive_instance_normalization
from keras_norms.ops._per_sample import evo_norm_s0
from keras_norms.ops._per_sample import filter_response_normalization
from keras_norms.ops._per_sample import group_normalization
from keras_norms.ops._per_sample import instance_normalization
from keras_norms.ops._per_sample import layer_normalization
from keras_norms.ops._per_sample import local_response_normalization
from keras_norms.ops._per_sample import rms_normalization
from keras_norms.ops._statistics import batch_moments
from keras_norms.ops._statistics import broadcast_weight
from keras_norms.ops._statistics import cross_replica_moments
from keras_norms.ops._statistics import has_values
from keras_norms.ops._statistics import mean_square
from keras_norms.ops._statistics import moments
from keras_norms.ops._statistics import normalize
from keras_norms.ops._statistics import normalize_moments
from keras_norms.ops._statistics import pooled_moments
from keras_norms.ops._statistics import reduction_size
from keras_norms.ops._statistics import scale_and_shift
from keras_norms.ops._statistics import statistics_dtype

__all__ = [
    "statistics_dtype",
    "reduction_size",
    "has_values",
    "moments",
    "mean_square",
    "cross_replica_moments",
    "batch_moments",
    "pooled_moments",
    "scale_and_shift",
    "normalize",
    "normalize_moments",
    "broadcast_weight",
    "BatchNormResult",
    "batch_normalization",
    "batch_renormalization",
    "layer_normalization",
    "rms_normalization",
    "group_normalization",
    "instance_normalization",
    "filter_response_normalization",
    "adaptive_instance_normalization",
    "evo_norm_s0",
    "evo_norm_b0",
    "local_response_normalization",
    "conv",
]
