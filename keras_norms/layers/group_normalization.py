"""GroupNormalization: channels split into groups, normalized per sample."""

import keras
from keras import ops

from keras_norms import ops as kn_ops
from keras_norms.layers import _base
from keras_norms import _validation


@keras.saving.register_keras_serializable(package="keras_norms")
class GroupNormalization(_base.Normalization):
    """Group normalization (Wu & He, 2018).

    Splits the channels into `groups` groups of consecutive channels and
    normalizes each group of each sample with the mean and variance over
    its channels and the spatial axes, the same in training and at
    inference:

    `y = gamma * (x - mean_g) / sqrt(variance_g + epsilon) + beta`

    with per-channel `gamma` and `beta`. `groups=1` equals
    LayerNormalization over all the non-batch axes (with per-channel
    parameters); `groups=-1` or the number of channels equals
    InstanceNormalization. Unlike BatchNormalization it does not depend on
    the batch, so it works at any batch size. Same arguments, defaults and
    weights as `keras.layers.GroupNormalization`. As there, a group
    holding a single value (`groups=-1` on an input without spatial
    axes, or with one spatial position) has variance 0 and normalizes to
    `beta`; an empty batch gives an empty output.

    Args:
        groups: Number of groups, a positive divisor of the number of
            channels, or `-1` for one channel per group.
        axis: Integer, the channel axis: `-1` for channels-last, `1` for
            channels-first. The batch axis `0` is refused with a
            `ValueError` at build (Keras accepts it, but statistics would
            then mix the samples of the batch).
        epsilon: Small float added to the variance, `> 0`.
        center: If `True`, add the learned offset `beta`.
        scale: If `True`, multiply by the learned scale `gamma`.
        beta_initializer, gamma_initializer: Initializers of the weights.
        beta_regularizer, gamma_regularizer: Optional regularizers.
        beta_constraint, gamma_constraint: Optional constraints.
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: Input tensor of rank 2 to 5.
        training: Ignored: the layer behaves the same in both modes.

    Reference:
        - [Wu & He, 2018](https://arxiv.org/abs/1803.08494).

    Examples:
        >>> layer = kn.GroupNormalization(groups=2)
        >>> x = np.array([[[0.0, 4.0, 10.0, 30.0]]], "float32")  # (N, T, C)
        >>> y = layer(x)  # channels [0, 1] and [2, 3] normalized together
        >>> print(np.round(keras.ops.convert_to_numpy(y), 3))
        [[[-1.  1. -1.  1.]]]
        >>> [w.name for w in layer.weights]
        ['gamma', 'beta']
    """

    def __init__(
        self,
        groups=32,
        axis=-1,
        epsilon=1e-3,
        center=True,
        scale=True,
        beta_initializer="zeros",
        gamma_initializer="ones",
        beta_regularizer=None,
        gamma_regularizer=None,
        beta_constraint=None,
        gamma_constraint=None,
        **kwargs,
    ):
        groups = _validation.check_groups(groups)
        super().__init__(**_base.base_arguments(locals()), **kwargs)
        self.groups = groups

    def _layout(self, input_shape):
        (channel_axis,) = self._param_axes
        self._num_groups = _validation.resolve_groups(
            self.groups, input_shape[channel_axis], self.axis
        )
        return tuple(
            a for a in range(1, len(input_shape)) if a != channel_axis
        )

    def _normalize(self, x, training, mask):
        (axis,) = self._param_axes
        return kn_ops.group_normalization(
            x,
            self._num_groups,
            axis,
            self.gamma,
            self.beta,
            self.epsilon,
            self.compute_dtype,
        )

    def get_config(self):
        config = super().get_config()
        config["groups"] = self.groups
        return config
