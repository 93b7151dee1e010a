"""InstanceNormalization: per sample and channel, over the spatial axes."""

import keras
from keras import ops

from keras_norms import _validation
from keras_norms import ops as kn_ops
from keras_norms.layers import _base
from keras_norms.layers import _moving


@keras.saving.register_keras_serializable(package="keras_norms")
class InstanceNormalization(_moving.MovingStatisticsMixin, _base.Normalization):
    """Instance normalization (Ulyanov et al., 2016).

    Normalizes each channel of each sample with the mean and variance over
    its spatial axes (H, W for images, T for sequences):

    `y = gamma * (x - mean) / sqrt(variance + epsilon) + beta`

    It equals `GroupNormalization(groups=-1)` (one channel per group) and is
    what style transfer uses: it removes each image's contrast. By default
    it behaves the same in training and at inference and keeps no state.
    As there, a single spatial position has variance 0 and normalizes to
    `beta`.

    With `track_running_stats=True` (torch's `InstanceNorm2d` option of the
    same name) it also keeps moving averages of the instance statistics,
    the weights `moving_mean` and `moving_variance` (one value per channel),
    and normalizes with them at inference, a fixed per-channel scale and
    shift. In training it still normalizes each instance with its own
    statistics, and updates
    `moving = moving * momentum + batch * (1 - momentum)`, where `batch` is
    the mean over the batch of the per-instance means, and of the
    per-instance UNBIASED variances (`n / (n - 1)` times the biased one, `n`
    the number of spatial positions), exactly as torch does, so a model
    ported from torch with its running statistics behaves the same. As in
    BatchNormalization (and Keras), `momentum` is the weight of the old
    value: torch's `momentum=0.1` is `momentum=0.9` here. As in Keras, a
    layer with `trainable=False` runs in inference mode. An empty batch
    leaves the moving statistics unchanged. Training with the running
    statistics needs more than one spatial position (the unbiased variance
    of one value is undefined): such an input is refused, as in torch.

    Args:
        axis: Integer, the channel axis: `-1` for channels-last, `1` for
            channels-first.
        epsilon: Small float added to the variance, `> 0`.
        center: If `True`, add the learned offset `beta`.
        scale: If `True`, multiply by the learned scale `gamma`.
        beta_initializer, gamma_initializer: Initializers of the weights.
        beta_regularizer, gamma_regularizer: Optional regularizers.
        beta_constraint, gamma_constraint: Optional constraints.
        track_running_stats: If `True`, keep the moving statistics and
            normalize with them at inference (off by default).
        momentum: Momentum of the moving averages, in [0, 1] (used with
            `track_running_stats=True` only).
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: Input tensor of rank 3 to 5 (at least one spatial axis).
        training: Ignored unless `track_running_stats=True`: then whether
            to normalize with the instance statistics (and update the moving
            ones) or with the moving statistics.

    Example:

    ```python
    layer = keras_norms.InstanceNormalization(
        axis=1, track_running_stats=True, momentum=0.9
    )
    x = np.random.rand(8, 3, 16, 16).astype("float32")
    y = layer(x, training=True)  # instance statistics; moving ones updated
    y = layer(x)  # moving statistics
    ```

    Reference:
        - [Ulyanov et al., 2016](https://arxiv.org/abs/1607.08022).

    Examples:
        >>> layer = kn.InstanceNormalization()
        >>> x = np.array([[[0, 10], [1, 20], [2, 30], [3, 40]]], "float32")
        >>> tuple(x.shape)  # (N, T, C)
        (1, 4, 2)
        >>> y = layer(x)  # over T, per sample and channel
        >>> print(np.round(keras.ops.convert_to_numpy(y), 3))
        [[[-1.341 -1.342]
          [-0.447 -0.447]
          [ 0.447  0.447]
          [ 1.341  1.342]]]
    """

    def __init__(
        self,
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
        track_running_stats=False,
        momentum=0.99,
        **kwargs,
    ):
        super().__init__(**_base.base_arguments(locals()), **kwargs)
        self.track_running_stats = _validation.check_bool(
            "track_running_stats", track_running_stats
        )
        self._init_moving_statistics(momentum, "zeros", "ones", False)

    def build(self, input_shape):
        super().build(input_shape)
        if self.track_running_stats:
            self._add_moving_statistics(self._param_shape)

    def _layout(self, input_shape):
        return self._spatial_axes(input_shape)

    def _normalize(self, x, training, mask):
        (axis,) = self._param_axes
        running = {}
        if self.track_running_stats:
            if self._uses_batch_statistics(training):
                self._update_running_statistics(x)
            else:
                running = {
                    "mean": self.moving_mean,
                    "variance": self.moving_variance,
                }
        return kn_ops.instance_normalization(
            x,
            axis,
            self.gamma,
            self.beta,
            self.epsilon,
            dtype=self.compute_dtype,
            **running,
        )

    def _update_running_statistics(self, x):
        """torch's running statistics: the batch means of the instance
        mean and of the instance variance, unbiased (as torch keeps it).

        The unbiased variance of one value is undefined (`n / (n - 1)`
        with `n = 1`): an input with one spatial position is refused when
        its shape is known, as torch refuses it, and otherwise (a spatial
        size known only when the graph runs) leaves the stored values as
        they are, like an empty batch, so no NaN ever reaches the state.
        """
        count = kn_ops.reduction_size(x, self._reduction_axes)
        if isinstance(count, int) and count < 2:
            raise ValueError(
                "InstanceNormalization(track_running_stats=True) needs more "
                "than one spatial position per channel in training: the "
                "running variance is the unbiased instance variance, "
                "undefined for a single value (torch refuses the same "
                "input). Normalize before the pooling, or use "
                "track_running_stats=False. Received: input shape="
                f"{tuple(x.shape)}"
            )
        mean, variance = kn_ops.moments(
            ops.stop_gradient(x), self._reduction_axes
        )
        has_values = kn_ops.has_values(x, (0,))
        if not isinstance(count, int):
            count = ops.cast(count, variance.dtype)
            has_values = ops.logical_and(has_values, count > 1)
            count = ops.maximum(count, 2.0)
        unbiased = variance * (count / (count - 1))
        self._update_moving_statistics(
            ops.mean(mean, axis=0), ops.mean(unbiased, axis=0), has_values
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "track_running_stats": self.track_running_stats,
                "momentum": self.momentum,
            }
        )
        return config
