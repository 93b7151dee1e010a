"""BatchNormalization with moving statistics and a frozen-statistics mode."""

import keras
from keras import ops

from keras_norms import _validation
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

    Edge batches, as in Keras and on every backend: a batch holding one
    value per channel (the last batch of one sample of an epoch) has
    variance 0, so its output is `beta` and the moving variance moves
    towards 0; an empty batch gives an empty output and leaves the moving
    statistics unchanged.

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
        renorm: If `True`, use batch renormalization (Ioffe, 2017): in
            training the batch-normalized values are corrected by
            `r = clip(sigma_batch / sigma_renorm)` and
            `d = clip((mean_batch - mean_renorm) / sigma_renorm)` (both
            stop-gradiented), which keeps training and inference consistent
            with small or non-i.i.d. batches. Adds the weights
            `moving_stddev`, `renorm_mean` and `renorm_stddev`, as Keras.
        renorm_clipping: Dictionary with optional keys `"rmax"`, `"rmin"`,
            `"dmax"` bounding `r` and `d` (none by default).
        renorm_momentum: Momentum of the `renorm_mean` / `renorm_stddev`
            moving averages.
        synchronized: If `True`, combine the batch statistics across
            replicas, exactly as `SyncBatchNormalization` does, on every
            backend (Keras allows it on TensorFlow only).
        use_global_stats: If `True` (MXNet's name), normalize with the moving
            statistics even when training and never update them, while
            `gamma` and `beta` still learn: fine-tuning a pretrained
            backbone with frozen statistics.
        virtual_batch_size: Optional positive int `k` (tf_keras' name;
            ghost batch normalization, Hoffer et al., 2017). In training
            the batch is split into `batch // k` ghost batches of `k`
            samples, each normalized with its own batch statistics. The
            grouping is tf_keras': ghost batch `j` holds samples `j`,
            `j + batch // k`, `j + 2 * (batch // k)`, ... (not `k`
            consecutive samples), so a model rebuilt or converted from
            tf_keras computes what it computed; on shuffled batches
            both groupings draw the same statistics, and a batch laid
            out in blocks (multi-crop views one after the other) puts
            one sample of each block of `batch // k` in every ghost
            batch. The moving statistics are updated once per step with the mean
            over the groups of their means and of their biased variances.
            At inference the moving statistics are used, so any batch size
            works. A training batch that is not a multiple of `k` raises a
            `ValueError` where its size is known (in a graph with an
            unknown batch size, the reshape fails at run time). Not with
            `renorm` or `synchronized` (`SyncBatchNormalization` refuses
            it). Folding treats the layer as any BatchNormalization.
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: Input tensor of rank 2 to 5.
        training: Python boolean, whether to use batch statistics. As in
            Keras, a layer with `trainable=False` always runs in inference
            mode.
        mask: Optional boolean tensor of the input's shape without its
            last axis (e.g. from `Masking` or `Embedding(mask_zero=True)`),
            expanded at the last axis whatever `axis` is, as in Keras: in
            training the batch statistics cover the unmasked positions
            only. With `axis=1` on an `(N, T, F)` input, a `(N, T)` mask
            leaves out whole timesteps of every channel.

    Reference:
        - [Ioffe & Szegedy, 2015](https://arxiv.org/abs/1502.03167).
        - [Ioffe, 2017, Batch Renormalization](
          https://arxiv.org/abs/1702.03275).
        - [Hoffer et al., 2017, Train longer, generalize better](
          https://arxiv.org/abs/1705.08741) (ghost batch normalization).

    Examples:
        >>> layer = kn.BatchNormalization()
        >>> x = np.array([[0.0, 10.0], [4.0, 30.0]], dtype="float32")
        >>> y = layer(x, training=True)  # batch statistics: mean [2, 20]
        >>> print(np.round(keras.ops.convert_to_numpy(y), 3))
        [[-1. -1.]
         [ 1.  1.]]
        >>> print(np.round(keras.ops.convert_to_numpy(layer.moving_mean), 3))
        [0.02 0.2 ]
        >>> [w.name for w in layer.weights]
        ['gamma', 'beta', 'moving_mean', 'moving_variance']
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
        renorm=False,
        renorm_clipping=None,
        renorm_momentum=0.99,
        synchronized=False,
        use_global_stats=False,
        virtual_batch_size=None,
        **kwargs,
    ):
        super().__init__(**_base.base_arguments(locals()), **kwargs)
        self._init_moving_statistics(
            momentum,
            moving_mean_initializer,
            moving_variance_initializer,
            use_global_stats,
        )
        self.renorm = _validation.check_bool("renorm", renorm)
        self.renorm_clipping = _check_renorm_clipping(renorm_clipping)
        self.renorm_momentum = _validation.check_unit_interval(
            "renorm_momentum", renorm_momentum
        )
        self.synchronized = _validation.check_bool("synchronized", synchronized)
        self.virtual_batch_size = _check_virtual_batch_size(
            virtual_batch_size, self.renorm, self.synchronized
        )

    def build(self, input_shape):
        super().build(input_shape)
        self._add_moving_statistics(self._param_shape)
        if self.renorm:
            self._add_renorm_statistics(self._param_shape)

    def _layout(self, input_shape):
        # Every axis but the channel axis.
        return tuple(
            a for a in range(len(input_shape)) if a not in self._param_axes
        )

    def _normalize(self, x, training, mask):
        """The moving statistics, or this batch's (updating the moving
        ones): `kn_ops.batch_normalization` picks the kernel."""
        (axis,) = self._param_axes
        if not self._uses_batch_statistics(training):
            return kn_ops.batch_normalization(
                x,
                axis,
                self.gamma,
                self.beta,
                self.moving_mean,
                self.moving_variance,
                self.epsilon,
                dtype=self.compute_dtype,
            ).outputs
        mask = self._channel_mask(x, mask)
        if self.renorm:
            result = kn_ops.batch_renormalization(
                x,
                axis,
                self.renorm_mean,
                self.renorm_stddev,
                self.gamma,
                self.beta,
                self.epsilon,
                self.renorm_clipping,
                mask=mask,
                synchronized=self.synchronized,
                dtype=self.compute_dtype,
            )
            self._update_renorm_statistics(result)
        else:
            result = kn_ops.batch_normalization(
                x,
                axis,
                self.gamma,
                self.beta,
                epsilon=self.epsilon,
                mask=mask,
                synchronized=self.synchronized,
                dtype=self.compute_dtype,
                virtual_batch_size=self.virtual_batch_size,
            )
            self._update_moving_statistics(
                result.mean, result.variance, result.has_values
            )
        return result.outputs

    def _channel_mask(self, x, mask):
        """Keras' mask, expanded at the LAST axis whatever `axis` is.

        A Keras mask marks the positions of every axis but the last (the
        timesteps of an `(N, T, F)` sequence, from `Masking` or
        `Embedding(mask_zero=True)`); `keras.layers.BatchNormalization`
        expands it at the last axis and broadcasts it to the input, also
        with `axis=1`. So does this layer, refusing with a clear message a
        mask that does not broadcast so.
        """
        if mask is None:
            return None
        rank = len(x.shape) - 1
        mask_shape = tuple(mask.shape)
        if len(mask_shape) != rank or any(
            m is not None and s is not None and m not in (1, s)
            for m, s in zip(mask_shape, tuple(x.shape)[:-1])
        ):
            raise ValueError(
                "The mask must have the input's shape without its last "
                f"axis (rank {rank}; as in Keras it is expanded at the last "
                "axis, whatever `axis` is). Received: "
                f"mask.shape={mask_shape}, inputs.shape={tuple(x.shape)}"
            )
        return ops.expand_dims(mask, axis=-1)

    # ------------------------------------------------------------------
    # Batch renormalization (Ioffe, 2017), numerically as Keras does it.
    # ------------------------------------------------------------------
    def _add_renorm_statistics(self, param_shape):
        moving_variance_initializer = self.moving_variance_initializer

        def moving_stddev_initializer(shape, dtype=None):
            return ops.sqrt(moving_variance_initializer(shape, dtype=dtype))

        for name, initializer in (
            ("moving_stddev", moving_stddev_initializer),
            ("renorm_mean", self.moving_mean_initializer),
            ("renorm_stddev", moving_stddev_initializer),
        ):
            setattr(
                self,
                name,
                self.add_weight(
                    shape=param_shape,
                    name=name,
                    initializer=initializer,
                    trainable=False,
                    autocast=False,
                ),
            )

    def _update_renorm_statistics(self, result):
        """Batch renormalization's four moving averages, as Keras does."""
        stddev = ops.sqrt(result.variance + self.epsilon)
        has_values = result.has_values
        update = _moving.moving_average
        update(self.renorm_mean, result.mean, self.renorm_momentum, has_values)
        update(self.renorm_stddev, stddev, self.renorm_momentum, has_values)
        update(self.moving_mean, result.mean, self.momentum, has_values)
        moving_stddev = update(
            self.moving_stddev, stddev, self.momentum, has_values
        )
        if has_values is False:
            return
        # The moving variance follows the moving stddev, as in Keras.
        moving_variance = ops.relu(ops.square(moving_stddev) - self.epsilon)
        if has_values is not True:
            moving_variance = ops.where(
                has_values, moving_variance, self.moving_variance.value
            )
        self.moving_variance.assign(moving_variance)

    def get_config(self):
        config = super().get_config()
        config.update(self._moving_statistics_config())
        config.update(
            {
                "renorm": self.renorm,
                "renorm_clipping": self.renorm_clipping,
                "renorm_momentum": self.renorm_momentum,
                "synchronized": self.synchronized,
                "virtual_batch_size": self.virtual_batch_size,
            }
        )
        return config


def _check_virtual_batch_size(size, renorm, synchronized):
    """`None` or a positive int; not with renorm or synchronized."""
    if size is None:
        return None
    if not _validation.is_integer(size):
        raise TypeError(
            "Argument `virtual_batch_size` must be a positive int or None. "
            f"Received: virtual_batch_size={size!r}"
        )
    if size <= 0:
        raise ValueError(
            "Argument `virtual_batch_size` must be a positive int or None. "
            f"Received: virtual_batch_size={size!r}"
        )
    for name, value in (("renorm", renorm), ("synchronized", synchronized)):
        if value:
            raise ValueError(
                f"Argument `virtual_batch_size` (ghost batch normalization) "
                f"cannot be combined with `{name}=True`. Received: "
                f"virtual_batch_size={size}, {name}=True"
            )
    return int(size)


def _check_renorm_clipping(renorm_clipping):
    """`None` or a dict with keys among rmax, rmin, dmax, as Keras checks."""
    if renorm_clipping is None:
        return None
    keys = ("rmax", "rmin", "dmax")
    if (
        not isinstance(renorm_clipping, dict)
        or set(renorm_clipping) - set(keys)
        or not all(
            v is None or _validation.is_real(v)
            for v in renorm_clipping.values()
        )
    ):
        raise ValueError(
            "Argument `renorm_clipping` must be a dict with keys among "
            f"{list(keys)} and float values. "
            f"Received: renorm_clipping={renorm_clipping!r}"
        )
    rmax = renorm_clipping.get("rmax")
    rmin = renorm_clipping.get("rmin")
    dmax = renorm_clipping.get("dmax")
    if rmax is not None and rmin is not None and rmax < rmin:
        raise ValueError(
            "Argument `renorm_clipping` needs rmax >= rmin. "
            f"Received: renorm_clipping={renorm_clipping!r}"
        )
    if dmax is not None and dmax < 0:
        raise ValueError(
            "Argument `renorm_clipping` needs dmax >= 0. "
            f"Received: renorm_clipping={renorm_clipping!r}"
        )
    # Plain Python floats (a NumPy scalar would not serialize to JSON).
    return {
        key: None if v is None else float(v)
        for key, v in renorm_clipping.items()
    }
