"""GroupNormalization: channels split into groups, normalized per sample."""

import keras
from keras import ops

from keras_norms.backend import native
from keras_norms.layers import _base


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
    weights as `keras.layers.GroupNormalization`.

    Args:
        groups: Number of groups, a positive divisor of the number of
            channels, or `-1` for one channel per group.
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
        inputs: Input tensor of rank 2 to 5.
        training: Ignored: the layer behaves the same in both modes.

    Reference:
        - [Wu & He, 2018](https://arxiv.org/abs/1803.08494).
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
        if (
            isinstance(groups, bool)
            or not isinstance(groups, int)
            or (groups <= 0 and groups != -1)
        ):
            raise ValueError(
                "Argument `groups` must be a positive integer that divides "
                "the number of channels, or -1 for one channel per group. "
                f"Received: groups={groups!r}"
            )
        super().__init__(**_base.base_arguments(locals()), **kwargs)
        self.groups = groups

    def _build_layout(self, input_shape):
        (channel_axis,) = self._param_axes
        channels = input_shape[channel_axis]
        groups = channels if self.groups == -1 else self.groups
        if groups > channels or channels % groups:
            raise ValueError(
                f"Argument `groups` must divide the number of channels "
                f"({channels}, along axis {self.axis}). "
                f"Received: groups={self.groups}"
            )
        self._num_groups = groups
        self._channel_axis = channel_axis
        # The statistics view splits the channel axis into (groups, channels
        # per group) in place: no transpose in either data format.
        param_shape_in_view = [1] * (len(input_shape) + 1)
        param_shape_in_view[channel_axis] = groups
        param_shape_in_view[channel_axis + 1] = channels // groups
        self._param_shape_in_view = tuple(param_shape_in_view)
        self._reduction_axes = tuple(
            a
            for a in range(1, len(input_shape) + 1)
            if a != channel_axis
        )
        view_shape = list(input_shape)
        view_shape[channel_axis : channel_axis + 1] = [groups, channels // groups]
        self._check_reduction_size(
            view_shape, self._reduction_axes, "group"
        )

    def _native_call(self, inputs, training):
        return native.group_norm(
            inputs,
            self._num_groups,
            self._channel_axis,
            self.gamma,
            self.beta,
            self.epsilon,
            self.compute_dtype,
        )

    def _to_view(self, inputs):
        shape = list(ops.shape(inputs))
        axis = self._channel_axis
        shape[axis : axis + 1] = [
            self._num_groups,
            inputs.shape[axis] // self._num_groups,
        ]
        if inputs.shape[0] is None:
            shape[0] = -1
        return ops.reshape(inputs, shape)

    def _from_view(self, outputs, inputs):
        return ops.reshape(outputs, ops.shape(inputs))

    def get_config(self):
        config = super().get_config()
        config["groups"] = self.groups
        return config
