"""RMSNormalization: divide by the root mean square, no centering."""

import keras
from keras import constraints
from keras import initializers
from keras import ops
from keras import regularizers

from keras_norms import ops as kn_ops
from keras_norms.backend import native
from keras_norms.layers import _base
from keras_norms import _validation


@keras.saving.register_keras_serializable(package="keras_norms")
class RMSNormalization(keras.layers.Layer):
    """Root mean square layer normalization (Zhang & Sennrich, 2019).

    Rescales each position by the root mean square of its features, without
    subtracting the mean and without an offset:

    `y = x * rsqrt(mean(x**2 over axis) + epsilon) * scale`

    It is LayerNormalization without re-centering (`mean = 0`, no `beta`):
    cheaper, and as good in Transformers (T5, LLaMA, Gemma use it). The
    statistic is per sample, so, like LayerNormalization, it behaves the
    same in training and at inference.

    A drop-in replacement of `keras.layers.RMSNormalization`: same
    arguments and defaults (`axis=-1`, `epsilon=1e-6`), and the same one
    weight, `scale`, with the same shape (the sizes of the input along
    `axis`), so `RMSNormalization.from_config(keras_layer.get_config())`
    builds it and `set_weights(keras_layer.get_weights())` moves the weights
    across. It adds the `scale_initializer`, `scale_regularizer` and
    `scale_constraint` arguments. The statistic and the scale stay float32
    under mixed precision.

    Args:
        axis: Integer or list of integers, the axis or axes to normalize
            over (the features); `scale` has one value per position along
            them. Cannot include the batch axis 0.
        epsilon: Small float added to the mean square, `> 0`.
        scale_initializer: Initializer of `scale` (default ones).
        scale_regularizer: Optional regularizer of `scale`.
        scale_constraint: Optional constraint on `scale`.
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).

    Only the input's sizes along `axis` are fixed at build, not its rank,
    and after build `axis` is a sorted list (`-1` becomes `[-1]`), both as
    in Keras.

    Call arguments:
        inputs: Input tensor of any rank `>= 2`.
        training: Ignored: the layer behaves the same in both modes.

    Reference:
        - [Zhang & Sennrich, 2019](https://arxiv.org/abs/1910.07467).

    Examples:
        >>> layer = kn.RMSNormalization()
        >>> x = np.array([[3.0, 4.0]], dtype="float32")
        >>> y = layer(x)  # x / sqrt(mean(x**2)) = x / sqrt(12.5)
        >>> print(np.round(keras.ops.convert_to_numpy(y), 3))
        [[0.849 1.131]]
        >>> [w.name for w in layer.weights]
        ['scale']
    """

    def __init__(
        self,
        axis=-1,
        epsilon=1e-6,
        scale_initializer="ones",
        scale_regularizer=None,
        scale_constraint=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.axis = _validation.check_axis_argument(axis, allow_list=True)
        self.epsilon = _validation.check_positive_float("epsilon", epsilon)
        self.scale_initializer = initializers.get(scale_initializer)
        self.scale_regularizer = regularizers.get(scale_regularizer)
        self.scale_constraint = constraints.get(scale_constraint)
        self.supports_masking = True
        # The scale and the statistic stay float32 under mixed precision.
        self.autocast = False
        self.scale = None

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        _, param_shape, _ = _base.parameter_layout(self, input_shape)
        self.scale = self.add_weight(
            shape=param_shape,
            name="scale",
            initializer=self.scale_initializer,
            regularizer=self.scale_regularizer,
            constraint=self.scale_constraint,
            trainable=True,
            autocast=False,
        )
        # Only the sizes along `axis` are fixed, not the rank (as Keras).
        _base.build_rank_free(self, input_shape)

    def call(self, inputs, training=None):
        outputs = native.compiled_call(self, inputs, training=training)
        if outputs is not None:
            return outputs
        axes, view = _base.rank_free_layout(self, len(inputs.shape))
        outputs = native.rms_norm(
            inputs, axes, self.scale, self.epsilon, self.compute_dtype
        )
        if outputs is not None:  # torch's fused kernel (backend/native.py)
            return outputs
        mean_sq = kn_ops.mean_square(inputs, axes)
        scale = ops.reshape(ops.cast(self.scale, mean_sq.dtype), view)
        # The per-row factor first, then the per-feature scale: one
        # full-size factor would be kept for the backward pass (measured in
        # benchmarks/bench_norms.py).
        return kn_ops.normalize_moments(
            inputs, None, mean_sq, scale, None, self.epsilon, self.compute_dtype
        )

    def compute_output_shape(self, input_shape):
        _validation.canonical_axes(self.axis, len(input_shape))
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "axis": self.axis,
                "epsilon": self.epsilon,
                "scale_initializer": initializers.serialize(
                    self.scale_initializer
                ),
                "scale_regularizer": regularizers.serialize(
                    self.scale_regularizer
                ),
                "scale_constraint": constraints.serialize(
                    self.scale_constraint
                ),
            }
        )
        return config
