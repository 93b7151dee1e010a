"""FilterResponseNormalization with its Thresholded Linear Unit (TLU)."""

import keras
from keras import constraints
from keras import initializers
from keras import ops
from keras import regularizers

from keras_norms import _validation
from keras_norms import ops as kn_ops
from keras_norms.layers import _base

# The learned epsilon starts here, as in TensorFlow Addons.
_LEARNED_EPSILON_INIT = 1e-4


@keras.saving.register_keras_serializable(package="keras_norms")
class FilterResponseNormalization(_base.Normalization):
    """Filter response normalization and TLU (Singh & Krishnan, 2020).

    Divides each channel of each sample by the root mean square of its
    responses over the spatial axes (no mean subtracted), applies a learned
    scale and offset, then the Thresholded Linear Unit, a ReLU with a
    learned threshold `tau` per channel:

    `nu2 = mean(x**2 over the spatial axes)`
    `y = max(gamma * x * rsqrt(nu2 + epsilon) + beta, tau)`

    The statistic is per sample and channel (InstanceNormalization's axes,
    with the second moment about 0 instead of the variance), so it is
    independent of the batch size, the same in training and at inference,
    and made for small-batch training where BatchNormalization fails.
    Without centering the output can be shifted arbitrarily; the TLU's
    learned `tau` is what makes up for it, so FRN is meant to be used with
    it and replaces both the norm and the activation (do not add a ReLU
    after it).

    With `learned_epsilon=True` the layer adds a trainable `epsilon_l`
    (starting at 1e-4) and uses `epsilon + |epsilon_l|`: the paper's fix
    for small spatial sizes (1x1), where `x * rsqrt(x**2 + epsilon)` is
    close to `sign(x)`.

    Unlike TensorFlow Addons' `FilterResponseNormalization`, whose `axis`
    was the list of REDUCTION axes (`[1, 2]`, NHWC only) and which had no
    TLU (TFA's separate `TLU` layer), `axis` here is the CHANNEL axis, as in
    the package's other layers: `-1` for channels-last, `1` for
    channels-first; the statistic reduces over every other non-batch axis.

    Weights, in order: `gamma`, `beta`, `tau` (shape `(channels,)`) and,
    with `learned_epsilon=True`, `epsilon_l` (shape `(1,)`, as in
    TensorFlow Addons).

    Args:
        axis: Integer, the channel axis: `-1` for channels-last, `1` for
            channels-first.
        epsilon: Small float added to `nu2`, `> 0` (default 1e-6, the
            paper's).
        learned_epsilon: If `True`, learn an extra `|epsilon_l|` added to
            `epsilon`.
        learned_epsilon_constraint: Optional constraint on `epsilon_l`.
        center: If `True`, add the learned offset `beta`.
        scale: If `True`, multiply by the learned scale `gamma`.
        beta_initializer, gamma_initializer, tau_initializer: Initializers
            of the weights.
        beta_regularizer, gamma_regularizer, tau_regularizer: Optional
            regularizers.
        beta_constraint, gamma_constraint, tau_constraint: Optional
            constraints.
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: Input tensor of rank 3 to 5 (at least one spatial axis).
        training: Ignored: the layer behaves the same in both modes.

    Reference:
        - [Singh & Krishnan, 2020](https://arxiv.org/abs/1911.09737).

    Examples:
        >>> layer = kn.FilterResponseNormalization()
        >>> x = np.array([-3.0, 1.0, 1.0, 1.0], "float32").reshape(1, 2, 2, 1)
        >>> y = layer(x)  # x / sqrt(mean(x**2)) = x / sqrt(3), then max(y, 0)
        >>> print(np.round(keras.ops.convert_to_numpy(y).ravel(), 3))
        [0.    0.577 0.577 0.577]
        >>> [w.name for w in layer.weights]
        ['gamma', 'beta', 'tau']
    """

    def __init__(
        self,
        axis=-1,
        epsilon=1e-6,
        learned_epsilon=False,
        learned_epsilon_constraint=None,
        center=True,
        scale=True,
        beta_initializer="zeros",
        gamma_initializer="ones",
        tau_initializer="zeros",
        beta_regularizer=None,
        gamma_regularizer=None,
        tau_regularizer=None,
        beta_constraint=None,
        gamma_constraint=None,
        tau_constraint=None,
        **kwargs,
    ):
        super().__init__(**_base.base_arguments(locals()), **kwargs)
        self.learned_epsilon = _validation.check_bool(
            "learned_epsilon", learned_epsilon
        )
        self.learned_epsilon_constraint = constraints.get(
            learned_epsilon_constraint
        )
        self.tau_initializer = initializers.get(tau_initializer)
        self.tau_regularizer = regularizers.get(tau_regularizer)
        self.tau_constraint = constraints.get(tau_constraint)
        self.tau = None
        self.epsilon_l = None

    def _layout(self, input_shape):
        ndim = len(input_shape)
        if not 3 <= ndim <= 5:
            raise ValueError(
                "FilterResponseNormalization expects an input of rank 3 to 5 "
                "(batch, spatial axes and channels); its statistic is over "
                "the spatial axes, and an input without one has none. "
                f"Received: input_shape={tuple(input_shape)}"
            )
        # A 1x1 spatial size is allowed (the paper discusses it): the
        # output is then close to sign(x), which `learned_epsilon` softens.
        return tuple(a for a in range(1, ndim) if a not in self._param_axes)

    def build(self, input_shape):
        super().build(input_shape)
        self.tau = self.add_weight(
            shape=self._param_shape,
            name="tau",
            initializer=self.tau_initializer,
            regularizer=self.tau_regularizer,
            constraint=self.tau_constraint,
            trainable=True,
            autocast=False,
        )
        if self.learned_epsilon:
            self.epsilon_l = self.add_weight(
                shape=(1,),
                name="epsilon_l",
                initializer=initializers.Constant(_LEARNED_EPSILON_INIT),
                constraint=self.learned_epsilon_constraint,
                trainable=True,
                autocast=False,
            )

    def _normalize(self, x, training, mask):
        (axis,) = self._param_axes
        epsilon = self.epsilon
        if self.learned_epsilon:
            epsilon = epsilon + ops.abs(
                ops.cast(self.epsilon_l, kn_ops.statistics_dtype(x.dtype))
            )
        return kn_ops.filter_response_normalization(
            x,
            axis,
            self.gamma,
            self.beta,
            self.tau,
            epsilon,
            self.compute_dtype,
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "learned_epsilon": self.learned_epsilon,
                "learned_epsilon_constraint": constraints.serialize(
                    self.learned_epsilon_constraint
                ),
                "tau_initializer": initializers.serialize(self.tau_initializer),
                "tau_regularizer": regularizers.serialize(self.tau_regularizer),
                "tau_constraint": constraints.serialize(self.tau_constraint),
            }
        )
        return config
