"""BatchInstanceNormalization: a learned per-channel blend of BN and IN."""

import keras
from keras import initializers
from keras import ops

from keras_norms.layers import _mixed_statistics


@keras.saving.register_keras_serializable(package="keras_norms")
class ClipToUnitInterval(keras.constraints.Constraint):
    """Constrains weights to [0, 1] by clipping; keeps BIN's `rho` a blend.

    Keras optimizers apply a variable's constraint after every update, on
    every backend, so `rho` stays in [0, 1] however large the step.

    Examples:
        >>> constraint = kn.ClipToUnitInterval()
        >>> w = constraint(np.array([-0.5, 0.25, 1.5], dtype="float32"))
        >>> print(keras.ops.convert_to_numpy(w))
        [0.   0.25 1.  ]
    """

    def __call__(self, w):
        w = ops.convert_to_tensor(w)
        return ops.clip(w, 0.0, 1.0)

    def get_config(self):
        return {}


@keras.saving.register_keras_serializable(package="keras_norms")
class BatchInstanceNormalization(
    _mixed_statistics.MixedStatisticsNormalization
):
    """Batch-Instance normalization (Nam & Kim, 2018).

    A learned per-channel blend of batch and instance normalization, for
    tasks where a channel should keep style (contrast) information or drop
    it:

    `y = gamma * (rho * x_bn + (1 - rho) * x_in) + beta`

    with `x_bn = (x - mean_bn) / sqrt(var_bn + epsilon)` normalized by the
    batch statistics (over N and the spatial axes, like
    `BatchNormalization`), `x_in = (x - mean_in) / sqrt(var_in + epsilon)`
    by the instance statistics (over the spatial axes, like
    `InstanceNormalization`), and `rho` a learned per-channel weight kept
    in [0, 1] by the `ClipToUnitInterval` constraint, which Keras
    optimizers apply after every step. `rho = 1` is BatchNormalization,
    `rho = 0` InstanceNormalization.

    The two normalizations are not computed separately: the instance
    moments are computed once, the batch moments pooled from them
    (`mean_bn = mean(mean_in)`, `var_bn = mean(var_in + (mean_in -
    mean_bn)**2)` over the batch), and the blend folded into one scale and
    shift per sample and channel, `y = x * a + b` with
    `a = gamma * (rho / sqrt(var_bn + eps) + (1 - rho) / sqrt(var_in + eps))`.

    In training the batch part uses the batch statistics and updates the
    moving statistics like `BatchNormalization` (an empty batch leaves
    them unchanged); at inference (and with
    `trainable=False` or `use_global_stats=True`) the batch part uses the
    moving statistics while the instance part still uses each sample's own
    statistics.

    Weights, in the order `layer.weights` lists them (trainable first):
    `gamma`, `beta` (if `scale`/`center`), `rho`, then the non-trainable
    `moving_mean`, `moving_variance`; all of shape `(C,)` and float32 under
    mixed precision.

    Args:
        axis: Integer, the channel axis: `-1` for channels-last (NHWC), `1`
            for channels-first (NCHW).
        momentum: Momentum of the moving average, in [0, 1].
        epsilon: Small float added to both variances, `> 0`.
        center: If `True`, add the learned offset `beta`.
        scale: If `True`, multiply by the learned scale `gamma`.
        beta_initializer, gamma_initializer: Initializers of the weights.
        moving_mean_initializer, moving_variance_initializer: Initializers
            of the moving statistics.
        rho_initializer: Initializer of `rho` (`"ones"`: start as BN, as in
            the paper's code).
        beta_regularizer, gamma_regularizer: Optional regularizers.
        beta_constraint, gamma_constraint: Optional constraints.
        use_global_stats: If `True`, the batch part normalizes with the
            moving statistics even when training and never updates them.
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: Input tensor of rank 3 to 5 (at least one spatial axis).
        training: Python boolean, whether the batch part uses the batch
            statistics (and updates the moving ones). A layer with
            `trainable=False` always runs in inference mode.

    Reference:
        - [Nam & Kim, 2018](https://arxiv.org/abs/1805.07925).

    Examples:
        >>> layer = kn.BatchInstanceNormalization()
        >>> rng = np.random.default_rng(0)
        >>> x = rng.normal(size=(4, 8, 8, 3)).astype("float32")
        >>> y = layer(x, training=True)
        >>> tuple(y.shape)
        (4, 8, 8, 3)
        >>> [w.name for w in layer.weights]
        ['gamma', 'beta', 'rho', 'moving_mean', 'moving_variance']
        >>> print(keras.ops.convert_to_numpy(layer.rho))  # BN at first
        [1. 1. 1.]
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
        rho_initializer="ones",
        beta_regularizer=None,
        gamma_regularizer=None,
        beta_constraint=None,
        gamma_constraint=None,
        use_global_stats=False,
        **kwargs,
    ):
        super().__init__(
            axis=axis,
            momentum=momentum,
            epsilon=epsilon,
            center=center,
            scale=scale,
            beta_initializer=beta_initializer,
            gamma_initializer=gamma_initializer,
            moving_mean_initializer=moving_mean_initializer,
            moving_variance_initializer=moving_variance_initializer,
            beta_regularizer=beta_regularizer,
            gamma_regularizer=gamma_regularizer,
            beta_constraint=beta_constraint,
            gamma_constraint=gamma_constraint,
            use_global_stats=use_global_stats,
            **kwargs,
        )
        self.rho_initializer = initializers.get(rho_initializer)
        self.rho = None

    def build(self, input_shape):
        super().build(input_shape)
        self.rho = self.add_weight(
            shape=self._param_shape,
            name="rho",
            initializer=self.rho_initializer,
            constraint=ClipToUnitInterval(),
            trainable=True,
            autocast=False,
        )

    def _scale_and_shift(self, x, training, mask):
        mean_in, var_in, mean_bn, var_bn = self._instance_and_batch_moments(
            x, training
        )
        dtype = mean_in.dtype
        rho = self._param_in_view(self.rho, dtype)
        a_bn = rho * ops.rsqrt(var_bn + self.epsilon)
        a_in = (1.0 - rho) * ops.rsqrt(var_in + self.epsilon)
        scale = a_bn + a_in
        shift = -(a_bn * mean_bn + a_in * mean_in)
        gamma = self._param_in_view(self.gamma, dtype)
        beta = self._param_in_view(self.beta, dtype)
        if gamma is not None:
            scale = scale * gamma
            shift = shift * gamma
        if beta is not None:
            shift = shift + beta
        return scale, shift

    def get_config(self):
        config = super().get_config()
        config["rho_initializer"] = initializers.serialize(self.rho_initializer)
        return config
