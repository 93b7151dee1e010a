"""LayerNormalization over one or several axes."""

import keras

from keras_norms.backend import native

from keras_norms.layers import _base


@keras.saving.register_keras_serializable(package="keras_norms")
class LayerNormalization(_base.Normalization):
    """Layer normalization (Ba et al., 2016).

    Normalizes each sample with the mean and variance over `axis` (the
    features), independently of the rest of the batch, the same in training
    and at inference:

    `y = gamma * (x - mean) / sqrt(variance + epsilon) + beta`

    `gamma` and `beta` have the shape of the normalized axes. Over all the
    non-batch axes of an image (`axis=[1, 2, 3]`) it equals
    `GroupNormalization(groups=1)` with per-position instead of per-channel
    parameters. Same arguments, defaults and weights as
    `keras.layers.LayerNormalization`.

    Args:
        axis: Integer or list of integers, the axis or axes to normalize
            over (typically the features axis, `-1`).
        epsilon: Small float added to the variance, `> 0`.
        center: If `True`, add the learned offset `beta`.
        scale: If `True`, multiply by the learned scale `gamma`.
        beta_initializer, gamma_initializer: Initializers of the weights.
        beta_regularizer, gamma_regularizer: Optional regularizers.
        beta_constraint, gamma_constraint: Optional constraints.
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: Input tensor of rank 2 or more.
        training: Ignored: the layer behaves the same in both modes.

    Reference:
        - [Ba et al., 2016](https://arxiv.org/abs/1607.06450).
    """

    _axis_may_be_list = True

    def _reduction_axes_for(self, input_shape):
        return self._param_axes

    def _native_call(self, inputs, training):
        return native.layer_norm(
            inputs,
            self._reduction_axes,
            self.gamma,
            self.beta,
            self.epsilon,
            self.compute_dtype,
        )
