"""BatchNormalization with moving statistics and a frozen-statistics mode."""

import keras

from keras_norms import ops as kn_ops
from keras_norms.layers import _base
from keras_norms.layers import _moving


@keras.saving.register_keras_serializable(package="keras_norms")
class BatchNormalization(_moving.MovingStatisticsMixin, _base.Normalization):
    """Batch normalization (Ioffe & Szegedy, 2015).

    Normalizes each channel with the mean and variance over the batch and
    every other non-channel axis (N, H, W for images):

    `y = gamma * (x - mean) / sqrt(variance + epsilon) + beta`

    During training (`training=True`) it normalizes with the statistics of
    the current batch and updates the moving statistics,
    `moving = moving * momentum + batch * (1 - momentum)`, with the biased
    batch variance. At inference it normalizes with the moving statistics,
    a single per-channel scale and shift.

    Same arguments, defaults and weights (`gamma`, `beta`, `moving_mean`,
    `moving_variance`, in that order) as `keras.layers.BatchNormalization`.
    Compared with LayerNormalization, InstanceNormalization and
    GroupNormalization, it is the only one whose output for a sample
    depends on the rest of the batch, and the only one with state.

    Args:
        axis: Integer, the channel axis: `-1` for channels-last (NHWC, NTC),
            `1` for channels-first (NCHW).
        momentum: Momentum of the moving average, in [0, 1].
        epsilon: Small float added to the variance, `> 0`.
        center: If `True`, add the learned offset `beta`.
        scale: If `True`, multiply by the learned scale `gamma`.
        beta_initializer, gamma_initializer: Initializers of the weights.
        moving_mean_initializer, moving_variance_initializer: Initializers
            of the moving statistics.
        beta_regularizer, gamma_regularizer: Optional regularizers.
        beta_constraint, gamma_constraint: Optional constraints.
        use_global_stats: If `True` (MXNet's name), normalize with the moving
            statistics even when training and never update them, while
            `gamma` and `beta` still learn: fine-tuning a pretrained
            backbone with frozen statistics.
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: Input tensor of rank 2 to 5.
        training: Python boolean, whether to use batch statistics. As in
            Keras, a layer with `trainable=False` always runs in inference
            mode.

    Reference:
        - [Ioffe & Szegedy, 2015](https://arxiv.org/abs/1502.03167).
    """

    def __init__(
        self,
        axis=-1,
        momentum=0.99,
        epsilon=1e-3,
        center=True,
        scale=True,
        beta_initializer="zeros",
        gamma_initializer="ones",
        moving_mean_initializer="zeros",
        moving_variance_initializer="ones",
        beta_regularizer=None,
        gamma_regularizer=None,
        beta_constraint=None,
        gamma_constraint=None,
        use_global_stats=False,
        **kwargs,
    ):
        super().__init__(
            axis=axis,
            epsilon=epsilon,
            center=center,
            scale=scale,
            beta_initializer=beta_initializer,
            gamma_initializer=gamma_initializer,
            beta_regularizer=beta_regularizer,
            gamma_regularizer=gamma_regularizer,
            beta_constraint=beta_constraint,
            gamma_constraint=gamma_constraint,
            **kwargs,
        )
        self._init_moving_statistics(
            momentum,
            moving_mean_initializer,
            moving_variance_initializer,
            use_global_stats,
        )

    def _reduction_axes_for(self, input_shape):
        return tuple(
            a for a in range(len(input_shape)) if a not in self._param_axes
        )

    def _build_state(self, param_shape):
        self._add_moving_statistics(param_shape)

    def _statistics(self, x, training):
        if self._uses_batch_statistics(training):
            self._check_reduction_size(x.shape, self._reduction_axes, "channel")
            mean, variance = self._batch_moments(x)
            self._update_moving_statistics(mean, variance)
            return mean, variance
        return self._moving_statistics(
            self._param_shape_in_view, kn_ops.statistics_dtype(x.dtype)
        )

    def _batch_moments(self, x):
        """Moments over the batch; SyncBatchNormalization sums replicas."""
        return kn_ops.moments(x, self._reduction_axes)

    def get_config(self):
        config = super().get_config()
        config.update(self._moving_statistics_config())
        return config
