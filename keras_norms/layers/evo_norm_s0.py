"""EvoNormS0: a sample-based normalization-activation layer."""

import keras
from keras import constraints
from keras import initializers
from keras import regularizers

from keras_norms import _validation
from keras_norms import ops as kn_ops
from keras_norms.layers import _base


@keras.saving.register_keras_serializable(package="keras_norms")
class EvoNormS0(_base.Normalization):
    """EvoNorm-S0 (Liu et al., 2020): group statistics with a built-in gate.

    A normalization and activation in one layer, found by architecture
    search; it replaces a `GroupNormalization` followed by a SiLU/ReLU:

    `y = x * sigmoid(v * x) / sqrt(group_variance(x) + epsilon) * gamma + beta`

    `group_variance` is per sample and group of `groups` consecutive
    channels, over the group's channels and every spatial axis
    (GroupNormalization's statistics, via the same
    `keras_norms.ops` machinery); no mean is subtracted. `v` (the gate),
    `gamma` and `beta` are per channel, initialized to ones, ones and
    zeros. No batch dependence: the same in training and at inference.
    The epsilon sits inside the square root, as in timm's `EvoNorm2dS0`
    and the TF model garden (default 1e-5, theirs).

    Args:
        groups: Number of groups, a positive divisor of the number of
            channels, or `-1` for one channel per group.
        axis: Integer, the channel axis: `-1` for channels-last, `1` for
            channels-first.
        epsilon: Small float added to the group variance, `> 0`.
        center: If `True`, add the learned offset `beta`.
        scale: If `True`, multiply by the learned scale `gamma`.
        beta_initializer, gamma_initializer, v_initializer: Initializers
            of the weights.
        beta_regularizer, gamma_regularizer, v_regularizer: Optional
            regularizers.
        beta_constraint, gamma_constraint, v_constraint: Optional
            constraints.
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: Input tensor of rank 2 to 5 (images: rank 4).
        training: Ignored: the layer behaves the same in both modes.

    Reference:
        - [Liu et al., 2020, Evolving Normalization-Activation Layers](
          https://arxiv.org/abs/2004.02967).

    Examples:
        >>> layer = kn.EvoNormS0(groups=2, epsilon=1e-12)
        >>> x = np.array([[[0.0, 2.0, -1.0, 1.0]]], "float32")  # (N, T, C)
        >>> y = layer(x)  # x * sigmoid(x) / 1: each group has std 1
        >>> print(np.round(keras.ops.convert_to_numpy(y), 3))
        [[[ 0.     1.762 -0.269  0.731]]]
        >>> [w.name for w in layer.weights]
        ['gamma', 'beta', 'v']
    """

    def __init__(
        self,
        groups=32,
        axis=-1,
        epsilon=1e-5,
        center=True,
        scale=True,
        beta_initializer="zeros",
        gamma_initializer="ones",
        v_initializer="ones",
        beta_regularizer=None,
        gamma_regularizer=None,
        v_regularizer=None,
        beta_constraint=None,
        gamma_constraint=None,
        v_constraint=None,
        **kwargs,
    ):
        groups = _validation.check_groups(groups)
        super().__init__(**_base.base_arguments(locals()), **kwargs)
        self.groups = groups
        self.v_initializer = initializers.get(v_initializer)
        self.v_regularizer = regularizers.get(v_regularizer)
        self.v_constraint = constraints.get(v_constraint)
        self.v = None

    def _layout(self, input_shape):
        (channel_axis,) = self._param_axes
        self._num_groups = _validation.resolve_groups(
            self.groups, input_shape[channel_axis], self.axis
        )
        return tuple(
            a for a in range(1, len(input_shape)) if a != channel_axis
        )

    def build(self, input_shape):
        super().build(input_shape)
        self.v = self.add_weight(
            shape=self._param_shape,
            name="v",
            initializer=self.v_initializer,
            regularizer=self.v_regularizer,
            constraint=self.v_constraint,
            trainable=True,
            autocast=False,
        )

    def _normalize(self, x, training, mask):
        (axis,) = self._param_axes
        return kn_ops.evo_norm_s0(
            x,
            self._num_groups,
            axis,
            self.v,
            self.gamma,
            self.beta,
            self.epsilon,
            self.compute_dtype,
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "groups": self.groups,
                "v_initializer": initializers.serialize(self.v_initializer),
                "v_regularizer": regularizers.serialize(self.v_regularizer),
                "v_constraint": constraints.serialize(self.v_constraint),
            }
        )
        return config
