"""RMSNormalization: divide by the root mean square, no centering."""

import keras
from keras import constraints
from keras import initializers
from keras import regularizers

from keras_norms import ops as kn_ops
from keras_norms.layers import _base
from keras_norms.layers import _rank_free


@keras.saving.register_keras_serializable(package="keras_norms")
class RMSNormalization(_base.Normalization):
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

    _axis_may_be_list = True
    _gamma_name = "scale"  # Keras' RMSNormalization's weight name

    def __init__(
        self,
        axis=-1,
        epsilon=1e-6,
        scale_initializer="ones",
        scale_regularizer=None,
        scale_constraint=None,
        **kwargs,
    ):
        # The base's `gamma`, named and configured as Keras' `scale`.
        super().__init__(
            axis=axis,
            epsilon=epsilon,
            center=False,
            scale=True,
            gamma_initializer=scale_initializer,
            gamma_regularizer=scale_regularizer,
            gamma_constraint=scale_constraint,
            **kwargs,
        )

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        super().build(input_shape)
        # As in Keras, `layer.scale` is the weight (the base's `gamma`).
        self.scale = self.gamma
        # Only the sizes along `axis` are fixed, not the rank (as Keras).
        _rank_free.build(self, input_shape)

    def _layout(self, input_shape):
        return self._param_axes

    def _normalize(self, x, training, mask):
        # The per-row factor first, then the per-feature scale (the op):
        # one full-size factor would be kept for the backward pass.
        return kn_ops.rms_normalization(
            x,
            _rank_free.axes(self, len(x.shape)),
            self.gamma,
            self.epsilon,
            self.compute_dtype,
        )

    def get_config(self):
        # Keras' arguments only (not the base's center/beta/gamma ones).
        config = keras.layers.Layer.get_config(self)
        config.update(
            {
                "axis": self.axis,
                "epsilon": self.epsilon,
                "scale_initializer": initializers.serialize(
                    self.gamma_initializer
                ),
                "scale_regularizer": regularizers.serialize(
                    self.gamma_regularizer
                ),
                "scale_constraint": constraints.serialize(
                    self.gamma_constraint
                ),
            }
        )
        return config
