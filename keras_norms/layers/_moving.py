"""Moving (population) statistics, shared by the layers that keep them.

BatchNormalization, and the batch part of BatchInstanceNormalization and
SwitchableNormalization, keep `moving_mean` and `moving_variance` updated as
`moving = moving * momentum + batch * (1 - momentum)` with the biased batch
variance, and normalize with them at inference.
"""

from keras import backend
from keras import initializers
from keras import ops

from keras_norms import _validation


def moving_average(variable, value, momentum, has_values=True):
    """`variable = variable * momentum + value * (1 - momentum)`; the new value.

    The one moving-average update of the package (moving statistics of
    BatchNormalization, InstanceNormalization's running statistics,
    BatchInstance/Switchable's batch part, batch renormalization's
    statistics). `value` holds one value per entry of `variable` in any
    shape; it is reshaped and cast only where needed (eager backends pay
    ~15-80 us for each small op, as much as a fused kernel on a mid-size
    batch). `has_values` (from `keras_norms.ops.batch_moments` /
    `has_values`): whether the batch held any value; an empty batch leaves
    `variable` as it is (a Python `False` skips the update, a boolean
    tensor selects the old value inside a trace).
    """
    if has_values is False:
        return variable.value
    if tuple(value.shape) != tuple(variable.shape):
        value = ops.reshape(value, variable.shape)
    if backend.standardize_dtype(value.dtype) != variable.dtype:
        value = ops.cast(value, variable.dtype)
    new = variable.value * momentum + value * (1.0 - momentum)
    if has_values is not True:
        new = ops.where(has_values, new, variable.value)
    variable.assign(new)
    return new


class MovingStatisticsMixin:
    """Adds `momentum`, `use_global_stats` and the two moving weights.

    The class using it calls `_init_moving_statistics` from `__init__` and
    `_add_moving_statistics` from `build`, asks `_uses_batch_statistics`
    which statistics to use and calls `_update_moving_statistics` with the
    batch moments in training.
    """

    def _init_moving_statistics(
        self,
        momentum,
        moving_mean_initializer,
        moving_variance_initializer,
        use_global_stats,
    ):
        self.momentum = _validation.check_unit_interval("momentum", momentum)
        self.moving_mean_initializer = initializers.get(moving_mean_initializer)
        self.moving_variance_initializer = initializers.get(
            moving_variance_initializer
        )
        self.use_global_stats = _validation.check_bool(
            "use_global_stats", use_global_stats
        )
        self.moving_mean = None
        self.moving_variance = None

    def _add_moving_statistics(self, param_shape):
        self.moving_mean = self.add_weight(
            shape=param_shape,
            name="moving_mean",
            initializer=self.moving_mean_initializer,
            trainable=False,
            autocast=False,
        )
        self.moving_variance = self.add_weight(
            shape=param_shape,
            name="moving_variance",
            initializer=self.moving_variance_initializer,
            trainable=False,
            autocast=False,
        )

    def _uses_batch_statistics(self, training):
        """Batch statistics in training, unless frozen or not trainable.

        As in `keras.layers.BatchNormalization`, a layer with
        `trainable=False` runs in inference mode; `use_global_stats=True`
        (MXNet's name) does the same while leaving the layer trainable, so
        `gamma` and `beta` still learn.
        """
        return bool(training) and self.trainable and not self.use_global_stats

    def _update_moving_statistics(self, mean, variance, has_values=True):
        """Blend the batch moments (one value a channel, any shape) into
        the moving statistics with `momentum` (`moving_average`)."""
        moving_average(self.moving_mean, mean, self.momentum, has_values)
        moving_average(
            self.moving_variance, variance, self.momentum, has_values
        )

    def _moving_statistics_config(self):
        return {
            "momentum": self.momentum,
            "moving_mean_initializer": initializers.serialize(
                self.moving_mean_initializer
            ),
            "moving_variance_initializer": initializers.serialize(
                self.moving_variance_initializer
            ),
            "use_global_stats": self.use_global_stats,
        }
