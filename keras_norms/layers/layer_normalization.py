"""LayerNormalization over one or several axes."""

import warnings

import keras

from keras_norms import _validation
from keras_norms import ops as kn_ops
from keras_norms.layers import _base
from keras_norms.layers import _rank_free


@keras.saving.register_keras_serializable(package="keras_norms")
class LayerNormalization(_base.Normalization):
    """Layer normalization (Ba et al., 2016).

    Normalizes each sample with the mean and variance over `axis` (the
    features), independently of the rest of the batch, the same in training
    and at inference:

    `y = gamma * (x - mean) / sqrt(variance + epsilon) + beta`

    `gamma` and `beta` have the shape of the normalized axes. Over all the
    non-batch axes of an image (`axis=[1, 2, 3]`) it equals
    `GroupNormalization(groups=1)` with per-position instead of per-channel
    parameters. Same arguments, defaults and weights as
    `keras.layers.LayerNormalization`.

    Args:
        axis: Integer or list of integers, the axis or axes to normalize
            over (typically the features axis, `-1`).
        epsilon: Small float added to the variance, `> 0`.
        center: If `True`, add the learned offset `beta`.
        scale: If `True`, multiply by the learned scale `gamma`.
        beta_initializer, gamma_initializer: Initializers of the weights.
        beta_regularizer, gamma_regularizer: Optional regularizers.
        beta_constraint, gamma_constraint: Optional constraints.
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...), and
            Keras' deprecated `rms_scaling` (accepted, with Keras' warning
            and Keras' behaviour: `x * rsqrt(variance + epsilon) * gamma`,
            no centering, no `beta`), so every Keras config loads.

    Only the input's sizes along `axis` are fixed at build, not its rank
    (as in Keras): a layer built on `(2, 2, 2)` with `axis=-1` also takes a
    `(3, 2, 2, 2)` input (a negative axis counts from the end, a positive
    one from the batch axis). After build `axis` is a sorted list
    (`-1` becomes `[-1]`), as in Keras, so the configs compare equal.

    Call arguments:
        inputs: Input tensor of rank 2 or more.
        training: Ignored: the layer behaves the same in both modes.

    Reference:
        - [Ba et al., 2016](https://arxiv.org/abs/1607.06450).

    Examples:
        >>> layer = kn.LayerNormalization()
        >>> x = np.array([[1.0, 2.0, 3.0, 4.0]], dtype="float32")
        >>> y = layer(x)  # each row: mean 0, variance 1
        >>> print(np.round(keras.ops.convert_to_numpy(y), 3))
        [[-1.341 -0.447  0.447  1.341]]
        >>> [w.name for w in layer.weights]
        ['gamma', 'beta']
    """

    _axis_may_be_list = True

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
        **kwargs,
    ):
        # Keras' deprecated `rms_scaling` travels in its configs; take it.
        rms_scaling = kwargs.pop("rms_scaling", False)
        if rms_scaling:
            warnings.warn(
                "You passed `rms_scaling=True`, which is deprecated (as in "
                "keras.layers.LayerNormalization): it scales the input by "
                "its variance, not its root mean square. Use "
                "`keras_norms.RMSNormalization` for RMS normalization."
            )
        super().__init__(**_base.base_arguments(locals()), **kwargs)
        self.rms_scaling = _validation.check_bool("rms_scaling", rms_scaling)

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        if not self.rms_scaling:
            super().build(input_shape)
        else:
            # As Keras: with rms_scaling there is always a gamma and never
            # a beta, whatever `scale` and `center` say (the config keeps
            # them).
            center, scale = self.center, self.scale
            self.center, self.scale = False, True
            try:
                super().build(input_shape)
            finally:
                self.center, self.scale = center, scale
        # Only the sizes along `axis` are fixed, not the rank (as Keras).
        _rank_free.build(self, input_shape)

    def _layout(self, input_shape):
        return self._param_axes

    def _normalize(self, x, training, mask):
        # Statistics per row, gamma and beta per feature: applied one after
        # the other by the op, never folded into an input-sized scale.
        return kn_ops.layer_normalization(
            x,
            _rank_free.axes(self, len(x.shape)),
            self.gamma,
            self.beta,
            self.epsilon,
            self.rms_scaling,
            self.compute_dtype,
        )

    def get_config(self):
        config = super().get_config()
        config["rms_scaling"] = self.rms_scaling
        return config
