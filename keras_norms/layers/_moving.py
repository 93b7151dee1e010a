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


class MovingStatisticsMixin:
    """Adds `momentum`, `use_global_stats` and the two moving weights.

    The class using it calls `_init_moving_statistics` from `__init__`,
    `_add_moving_statistics` from `_build_state`, and reads
    `_uses_batch_statistics`, `_update_moving_statistics` and
    `_moving_statistics` from its `_statistics`.
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
        self._moving_shape = tuple(param_shape)
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
        """Blend batch statistics (any shape holding one value a channel).

        `has_values` (from `keras_norms.ops.batch_moments` / `has_values`):
        whether the batch held any value; an empty batch leaves the moving
        statistics as they are (a Python `False` skips the update, a
        boolean tensor selects the old values inside a trace).
        """
        if has_values is False:
            return
        momentum = self.momentum
        for moving, batch in (
            (self.moving_mean, mean),
            (self.moving_variance, variance),
        ):
            # Only the ops needed: eager backends pay ~15-80 us for each
            # small op here, as much as a fused kernel on a mid-size batch.
            if tuple(batch.shape) != tuple(self._moving_shape):
                batch = ops.reshape(batch, self._moving_shape)
            if backend.standardize_dtype(batch.dtype) != moving.dtype:
                batch = ops.cast(batch, moving.dtype)
            new = moving.value * momentum + batch * (1.0 - momentum)
            if has_values is not True:
                new = ops.where(has_values, new, moving.value)
            moving.assign(new)

    def _moving_statistics(self, shape, dtype):
        """The moving statistics reshaped to broadcast as `shape`."""
        return tuple(
            ops.reshape(ops.cast(w, dtype), shape)
            for w in (self.moving_mean, self.moving_variance)
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
