"""The base of BatchInstanceNormalization and SwitchableNormalization.

Both mix instance and batch statistics: they compute the instance moments
once, derive the batch moments from those small tensors (so the input is
read once for statistics), and keep moving statistics of the batch part.
"""

from keras_norms import ops as kn_ops
from keras_norms.layers import _base
from keras_norms.layers import _moving


class MixedStatisticsNormalization(
    _moving.MovingStatisticsMixin, _base.Normalization
):
    """Base of the norms that mix instance and batch statistics.

    The statistics reduce over the spatial axes (every axis but the batch
    axis 0 and the channel `axis`), per sample and channel. The batch
    moments pool those over the batch, so the input is read once for
    statistics. In training the batch moments update the moving statistics
    (`moving = moving * momentum + batch * (1 - momentum)`, biased
    variance); at inference, with `trainable=False` or with
    `use_global_stats=True` the moving statistics replace them.
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
        super().__init__(**_base.base_arguments(locals()), **kwargs)
        self._init_moving_statistics(
            momentum,
            moving_mean_initializer,
            moving_variance_initializer,
            use_global_stats,
        )

    def build(self, input_shape):
        super().build(input_shape)
        self._add_moving_statistics(self._param_shape)

    def _layout(self, input_shape):
        return self._spatial_axes(input_shape)

    def _instance_and_batch_moments(self, x, training):
        """`(mean_in, var_in, mean_bn, var_bn)` for the view `x`.

        Instance moments have shape `(N, 1, ..., C)`, batch moments
        `(1, 1, ..., C)` (channels-last shown). In training the batch
        moments are pooled from the instance ones and update the moving
        statistics; otherwise they are the moving statistics.
        """
        mean_in, var_in = kn_ops.moments(x, self._reduction_axes)
        if self._uses_batch_statistics(training):
            mean_bn, var_bn = kn_ops.pooled_moments(mean_in, var_in, (0,))
            # An empty batch keeps the moving statistics as they are.
            self._update_moving_statistics(
                mean_bn, var_bn, kn_ops.has_values(mean_in, (0,))
            )
        else:
            mean_bn = self._param_in_view(self.moving_mean, mean_in.dtype)
            var_bn = self._param_in_view(self.moving_variance, mean_in.dtype)
        return mean_in, var_in, mean_bn, var_bn

    def get_config(self):
        config = super().get_config()
        config.update(self._moving_statistics_config())
        return config
