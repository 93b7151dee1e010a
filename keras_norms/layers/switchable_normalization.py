"""SwitchableNormalization: learned softmax mix of IN, LN and BN moments."""

import keras
from keras import ops

from keras_norms import ops as kn_ops
from keras_norms.layers import _mixed_statistics

# The order of the three entries of `mean_weights` and `variance_weights`.
SWITCH_NAMES = ("instance", "layer", "batch")


@keras.saving.register_keras_serializable(package="keras_norms")
class SwitchableNormalization(_mixed_statistics.MixedStatisticsNormalization):
    """Switchable normalization (Luo et al., 2018).

    Normalizes with a learned mixture of the instance, layer and batch
    moments:

    `mean = w_in * mean_in + w_ln * mean_ln + w_bn * mean_bn`
    `var = v_in * var_in + v_ln * var_ln + v_bn * var_bn`
    `y = gamma * (x - mean) / sqrt(var + epsilon) + beta`

    where `(w_in, w_ln, w_bn) = softmax(mean_weights)` and
    `(v_in, v_ln, v_bn) = softmax(variance_weights)`, two learned vectors of
    3 logits (in the order instance, layer, batch), initialized equal. The
    instance moments reduce over the spatial axes per sample and channel
    (`InstanceNormalization`), the layer moments over the channels and
    spatial axes per sample (`LayerNormalization` over C, H, W), the batch
    moments over the batch and spatial axes per channel
    (`BatchNormalization`). One-hot switch weights give each of those
    three layers exactly.

    As in the paper's code, the instance moments are computed once and the
    layer and batch moments pooled from them (`mean_ln = mean_c(mean_in)`,
    `var_ln = mean_c(var_in + (mean_in - mean_ln)**2)`, and over the batch
    likewise), so the input is read once for statistics. Unlike that code,
    every variance is the biased (population) one of the paper's equations,
    and the moving variance starts at 1 as in Keras.

    In training the batch moments update the moving statistics like
    `BatchNormalization` (an empty batch leaves them unchanged); at
    inference (and with `trainable=False` or
    `use_global_stats=True`) the moving statistics replace the batch
    moments while the instance and layer moments are each sample's own.
    `keras_norms.inspection.switchable_importances(model)` reads the
    learned mixture of every layer in a model.

    Weights, in the order `layer.weights` lists them (trainable first):
    `gamma`, `beta` (if `scale`/`center`, shape `(C,)`), `mean_weights`,
    `variance_weights` (shape `(3,)`, initialized to ones), then the
    non-trainable `moving_mean`, `moving_variance` (shape `(C,)`); all
    float32 under mixed precision.

    Args:
        axis: Integer, the channel axis: `-1` for channels-last (NHWC), `1`
            for channels-first (NCHW).
        momentum: Momentum of the moving average, in [0, 1].
        epsilon: Small float added to the mixed variance, `> 0`.
        center: If `True`, add the learned offset `beta`.
        scale: If `True`, multiply by the learned scale `gamma`.
        beta_initializer, gamma_initializer: Initializers of the weights.
        moving_mean_initializer, moving_variance_initializer: Initializers
            of the moving statistics of the batch part.
        beta_regularizer, gamma_regularizer: Optional regularizers.
        beta_constraint, gamma_constraint: Optional constraints.
        use_global_stats: If `True`, the batch part uses the moving
            statistics even when training and never updates them.
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: Input tensor of rank 3 to 5 (at least one spatial axis).
        training: Python boolean, whether the batch part uses the batch
            statistics (and updates the moving ones). A layer with
            `trainable=False` always runs in inference mode.

    Reference:
        - [Luo et al., 2018](https://arxiv.org/abs/1806.10779).

    Examples:
        >>> layer = kn.SwitchableNormalization()
        >>> rng = np.random.default_rng(0)
        >>> x = rng.normal(size=(4, 8, 8, 3)).astype("float32")
        >>> y = layer(x, training=True)
        >>> tuple(y.shape)
        (4, 8, 8, 3)
        >>> mean_importances, variance_importances = layer.switch_importances()
        >>> print(np.round(mean_importances, 3))  # IN, LN, BN: even at first
        [0.333 0.333 0.333]
    """

    def build(self, input_shape):
        super().build(input_shape)
        self.mean_weights = self.add_weight(
            shape=(3,),
            name="mean_weights",
            initializer="ones",
            trainable=True,
            autocast=False,
        )
        self.variance_weights = self.add_weight(
            shape=(3,),
            name="variance_weights",
            initializer="ones",
            trainable=True,
            autocast=False,
        )

    def switch_importances(self):
        """The softmaxed switch weights as NumPy arrays.

        Returns:
            A `(mean_importances, variance_importances)` tuple, each of shape
            `(3,)` in the order instance, layer, batch.
        """
        return tuple(
            ops.convert_to_numpy(ops.softmax(ops.cast(w, "float32")))
            for w in (self.mean_weights, self.variance_weights)
        )

    def _scale_and_shift(self, x, training, mask):
        mean_in, var_in, mean_bn, var_bn = self._instance_and_batch_moments(
            x, training
        )
        mean_ln, var_ln = kn_ops.pooled_moments(
            mean_in, var_in, self._param_axes
        )
        dtype = mean_in.dtype
        wm = ops.softmax(ops.cast(self.mean_weights, dtype))
        wv = ops.softmax(ops.cast(self.variance_weights, dtype))
        mean = wm[0] * mean_in + wm[1] * mean_ln + wm[2] * mean_bn
        variance = wv[0] * var_in + wv[1] * var_ln + wv[2] * var_bn
        return self._fold(mean, variance)
