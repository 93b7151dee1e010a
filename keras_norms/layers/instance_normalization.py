"""InstanceNormalization: per sample and channel, over the spatial axes."""

import keras

from keras_norms.backend import native
from keras_norms.layers import _base


@keras.saving.register_keras_serializable(package="keras_norms")
class InstanceNormalization(_base.Normalization):
    """Instance normalization (Ulyanov et al., 2016).

    Normalizes each channel of each sample with the mean and variance over
    its spatial axes (H, W for images, T for sequences), the same in
    training and at inference:

    `y = gamma * (x - mean) / sqrt(variance + epsilon) + beta`

    It equals `GroupNormalization(groups=-1)` (one channel per group) and is
    what style transfer uses: it removes each image's contrast. As there,
    a single spatial position has variance 0 and normalizes to `beta`.

    Args:
        axis: Integer, the channel axis: `-1` for channels-last, `1` for
            channels-first.
        epsilon: Small float added to the variance, `> 0`.
        center: If `True`, add the learned offset `beta`.
        scale: If `True`, multiply by the learned scale `gamma`.
        beta_initializer, gamma_initializer: Initializers of the weights.
        beta_regularizer, gamma_regularizer: Optional regularizers.
        beta_constraint, gamma_constraint: Optional constraints.
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: Input tensor of rank 3 to 5 (at least one spatial axis).
        training: Ignored: the layer behaves the same in both modes.

    Reference:
        - [Ulyanov et al., 2016](https://arxiv.org/abs/1607.08022).
    """

    def _reduction_axes_for(self, input_shape):
        return self._spatial_axes(input_shape)

    def _native_call(self, inputs, training):
        # One group per channel: GroupNormalization(groups=-1).
        (channel_axis,) = self._param_axes
        return native.group_norm(
            inputs,
            inputs.shape[channel_axis],
            channel_axis,
            self.gamma,
            self.beta,
            self.epsilon,
            self.compute_dtype,
        )
