"""EvoNormB0: a batch-based normalization-activation layer."""

import keras
from keras import constraints
from keras import initializers
from keras import regularizers

from keras_norms import ops as kn_ops
from keras_norms.layers import _base
from keras_norms.layers import _moving


@keras.saving.register_keras_serializable(package="keras_norms")
class EvoNormB0(_moving.MovingStatisticsMixin, _base.Normalization):
    """EvoNorm-B0 (Liu et al., 2020): batch and instance statistics in one.

    A normalization and activation in one layer, found by architecture
    search; it replaces a `BatchNormalization` followed by a ReLU:

    `y = x / max(sqrt(batch_variance + epsilon),
    v * x + sqrt(instance_variance + epsilon)) * gamma + beta`

    `batch_variance` is per channel over the batch and spatial axes (as
    BatchNormalization's), `instance_variance` per sample and channel
    over the spatial axes (as InstanceNormalization's); both biased, and
    no mean is subtracted. The epsilon sits inside each square root, as
    in timm's `EvoNorm2dB0` and the TF model garden. `v`, `gamma` and
    `beta` are per channel, initialized to ones, ones and zeros.

    As BatchNormalization: in training (`training=True`) the layer uses
    the batch variance and updates `moving_variance = moving_variance *
    momentum + batch_variance * (1 - momentum)` with the biased batch
    variance (timm keeps the unbiased one, `n / (n - 1)` larger, and
    counts its momentum the other way: its `momentum=0.1` is `0.9` here);
    at inference, with `trainable=False` or with `use_global_stats=True`,
    it uses `moving_variance` instead. The instance variance is always
    the current sample's. An empty batch leaves the moving variance as it
    is. There is no moving mean: no mean is subtracted.

    `keras_norms.fold_batch_norms` and `optimize_for_inference` do not
    fold it (its inference form still depends on the input through the
    instance variance and the `max`); they keep it as it is.
    `keras_norms.recompute_batch_norm_statistics` (PreciseBN) recomputes
    its moving variance as a BatchNormalization's.

    Args:
        axis: Integer, the channel axis: `-1` for channels-last, `1` for
            channels-first.
        momentum: Momentum of the moving variance, in [0, 1].
        epsilon: Small float added to both variances, `> 0`.
        center: If `True`, add the learned offset `beta`.
        scale: If `True`, multiply by the learned scale `gamma`.
        beta_initializer, gamma_initializer, v_initializer: Initializers
            of the weights.
        moving_variance_initializer: Initializer of the moving variance.
        beta_regularizer, gamma_regularizer, v_regularizer: Optional
            regularizers.
        beta_constraint, gamma_constraint, v_constraint: Optional
            constraints.
        use_global_stats: If `True`, use the moving variance even when
            training and never update it, while the weights still learn.
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: Input tensor of rank 3 to 5 (at least one spatial axis).
        training: Python boolean, whether to use the batch variance (and
            update the moving one).

    Reference:
        - [Liu et al., 2020, Evolving Normalization-Activation Layers](
          https://arxiv.org/abs/2004.02967).

    Examples:
        >>> layer = kn.EvoNormB0(momentum=0.5, epsilon=1e-12)
        >>> x = np.array([[[1.0], [3.0]], [[-1.0], [-3.0]]], "float32")
        >>> y = layer(x, training=True)  # batch variance 5, instance 1
        >>> print(np.round(keras.ops.convert_to_numpy(y)[:, :, 0], 3))
        [[ 0.447  0.75 ]
         [-0.447 -1.342]]
        >>> keras.ops.convert_to_numpy(layer.moving_variance)  # 1 * 0.5 + 5 * 0.5
        array([3.], dtype=float32)
        >>> [w.name for w in layer.weights]
        ['gamma', 'beta', 'v', 'moving_variance']
    """

    def __init__(
        self,
        axis=-1,
        momentum=0.99,
        epsilon=1e-5,
        center=True,
        scale=True,
        beta_initializer="zeros",
        gamma_initializer="ones",
        v_initializer="ones",
        moving_variance_initializer="ones",
        beta_regularizer=None,
        gamma_regularizer=None,
        v_regularizer=None,
        beta_constraint=None,
        gamma_constraint=None,
        v_constraint=None,
        use_global_stats=False,
        **kwargs,
    ):
        super().__init__(**_base.base_arguments(locals()), **kwargs)
        # The mixin's moving statistics, without the moving mean (EvoNorm
        # subtracts none): its `moving_mean_initializer` stays unused.
        self._init_moving_statistics(
            momentum, None, moving_variance_initializer, use_global_stats
        )
        self.v_initializer = initializers.get(v_initializer)
        self.v_regularizer = regularizers.get(v_regularizer)
        self.v_constraint = constraints.get(v_constraint)
        self.v = None

    def _layout(self, input_shape):
        # The batch statistics' axes; `_spatial_axes` refuses an input
        # without the spatial axes the instance variance needs.
        return (0,) + self._spatial_axes(input_shape)

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
        self.moving_variance = self.add_weight(
            shape=self._param_shape,
            name="moving_variance",
            initializer=self.moving_variance_initializer,
            trainable=False,
            autocast=False,
        )

    def _normalize(self, x, training, mask):
        (axis,) = self._param_axes
        batch = self._uses_batch_statistics(training)
        result = kn_ops.evo_norm_b0(
            x,
            axis,
            self.v,
            self.gamma,
            self.beta,
            None if batch else self.moving_variance,
            self.epsilon,
            self.compute_dtype,
        )
        if batch:
            _moving.moving_average(
                self.moving_variance,
                result.variance,
                self.momentum,
                result.has_values,
            )
        return result.outputs

    def get_config(self):
        config = super().get_config()
        config.update(self._moving_statistics_config())
        del config["moving_mean_initializer"]
        config.update(
            {
                "v_initializer": initializers.serialize(self.v_initializer),
                "v_regularizer": regularizers.serialize(self.v_regularizer),
                "v_constraint": constraints.serialize(self.v_constraint),
            }
        )
        return config
