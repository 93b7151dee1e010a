"""The base class of keras_norms' normalization layers.

How to add a normalization
--------------------------
Every norm here is the same three steps (`keras_norms.ops`): pick the
reduction axes, compute moments over them, apply one scale and shift.
Derive from `Normalization`, which owns the Keras arguments (`axis`,
`epsilon`, `center`, `scale` and the `gamma`/`beta` initializers,
regularizers and constraints), the weights, mixed precision (weights and
statistics in float32), masking support and the config, and override at
most three methods:

1. `_layout(input_shape)`: the axes the statistics reduce over. Called
   once from `build`, after `self._param_axes` (the canonical `axis`) is
   set: validate the shape here and record any other layout (groups).
2. `_scale_and_shift(x, training, mask)`: the `(scale, shift)` with
   `y = x * scale + shift`, broadcastable against `x`. The default folds
   the moments over the reduction axes with `gamma` and `beta`
   (`_fold`); a norm that mixes statistics (SwitchableNormalization) or
   normalizations (BatchInstanceNormalization) overrides it.
3. `_normalize(x, training, mask)`: the output. The default applies
   `_scale_and_shift`. Override it to call the norm's functional op in
   `keras_norms.ops` (the op, and only the op, picks a backend's fused
   kernel), or where statistics and weights vary along different axes
   and must not be folded (LayerNormalization, RMSNormalization).

Extra weights (moving statistics, `rho`) go in Keras' own `build`, after
`super().build(input_shape)`; extra constructor arguments go in
`get_config`. Register the class for saving
(`keras.saving.register_keras_serializable(package="keras_norms")`) and
export it from `keras_norms/layers/__init__.py` and `keras_norms/__init__.py`.
Helpers, not override points: `_param_in_view` (a per-channel weight
broadcast against the input, `keras_norms.ops.broadcast_weight`),
`_spatial_axes` (instance statistics' axes) and, for layers with moving
statistics, `keras_norms.layers._moving`.

`call` runs `_normalize`, one path: no fast path in the layer, nothing
compiled or cached behind the caller.
"""

import keras
from keras import constraints
from keras import initializers
from keras import regularizers

from keras_norms import _validation
from keras_norms import ops as kn_ops

# The arguments of `Normalization.__init__`, which subclasses spell out in
# their own signatures (drop-in parity with keras.layers) and pass on.
BASE_ARGUMENTS = (
    "axis",
    "epsilon",
    "center",
    "scale",
    "beta_initializer",
    "gamma_initializer",
    "beta_regularizer",
    "gamma_regularizer",
    "beta_constraint",
    "gamma_constraint",
)


def base_arguments(arguments):
    """The base class's arguments picked from a subclass's `locals()`."""
    return {name: arguments[name] for name in BASE_ARGUMENTS}


def parameter_layout(layer, input_shape):
    """Where a layer's per-`axis` weights sit in a rank-`ndim` input.

    Returns `(axes, param_shape)`: the canonical axes of `layer.axis` and
    the weights' shape. Refuses an unknown size along `axis`.
    """
    input_shape = tuple(input_shape)
    axes = _validation.canonical_axes(layer.axis, len(input_shape))
    for axis in axes:
        if input_shape[axis] is None:
            raise ValueError(
                f"{type(layer).__name__} needs a known size along its "
                f"`axis`, but axis {axis} of the input is unknown. "
                f"Received: axis={layer.axis}, input_shape={input_shape}"
            )
    return axes, tuple(input_shape[a] for a in axes)


class Normalization(keras.layers.Layer):
    """Base class: `y = gamma * (x - mean) / sqrt(variance + epsilon) + beta`.

    Args:
        axis: The parameter axis (or axes, where the layer allows a list):
            `gamma` and `beta` have one value per position along it.
        epsilon: Small float added to the variance, `> 0`.
        center: If `True`, add the learned offset `beta`.
        scale: If `True`, multiply by the learned scale `gamma`.
        beta_initializer, gamma_initializer: Initializers of the weights.
        beta_regularizer, gamma_regularizer: Optional regularizers.
        beta_constraint, gamma_constraint: Optional constraints.
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).
    """

    # Whether `axis` may be a list of ints (LayerNormalization) or an int.
    _axis_may_be_list = False

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
        super().__init__(**kwargs)
        self.axis = _validation.check_axis_argument(
            axis, allow_list=self._axis_may_be_list
        )
        self.epsilon = _validation.check_positive_float("epsilon", epsilon)
        self.center = _validation.check_bool("center", center)
        self.scale = _validation.check_bool("scale", scale)
        self.beta_initializer = initializers.get(beta_initializer)
        self.gamma_initializer = initializers.get(gamma_initializer)
        self.beta_regularizer = regularizers.get(beta_regularizer)
        self.gamma_regularizer = regularizers.get(gamma_regularizer)
        self.beta_constraint = constraints.get(beta_constraint)
        self.gamma_constraint = constraints.get(gamma_constraint)
        self.supports_masking = True
        # Weights and statistics stay float32 under mixed precision.
        self.autocast = False
        self.gamma = None
        self.beta = None

    # The name of the `gamma` weight (RMSNormalization: "scale", as Keras).
    _gamma_name = "gamma"

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        self._param_axes, self._param_shape = parameter_layout(
            self, input_shape
        )
        self._ndim = len(input_shape)
        self._reduction_axes = self._layout(input_shape)
        if self.scale:
            self.gamma = self.add_weight(
                shape=self._param_shape,
                name=self._gamma_name,
                initializer=self.gamma_initializer,
                regularizer=self.gamma_regularizer,
                constraint=self.gamma_constraint,
                trainable=True,
                autocast=False,
            )
        if self.center:
            self.beta = self.add_weight(
                shape=self._param_shape,
                name="beta",
                initializer=self.beta_initializer,
                regularizer=self.beta_regularizer,
                constraint=self.beta_constraint,
                trainable=True,
                autocast=False,
            )
        self.input_spec = keras.layers.InputSpec(
            ndim=len(input_shape),
            axes={a: input_shape[a] for a in self._param_axes},
        )

    def call(self, inputs, training=None, mask=None):
        return self._normalize(inputs, training, mask)

    # ------------------------------------------------------------------
    # The three override points (see the module docstring).
    # ------------------------------------------------------------------
    def _layout(self, input_shape):
        """The axes the statistics reduce over (validate the shape here)."""
        raise NotImplementedError

    def _scale_and_shift(self, x, training, mask):
        """`(scale, shift)` broadcastable against `x`: `y = x * scale +
        shift`. By default the moments over the reduction axes, folded."""
        return self._fold(*kn_ops.moments(x, self._reduction_axes))

    def _normalize(self, x, training, mask):
        """The layer's output; by default `x` scaled and shifted once."""
        scale, shift = self._scale_and_shift(x, training, mask)
        return kn_ops.normalize(x, scale, shift, self.compute_dtype)

    # ------------------------------------------------------------------
    # Helpers
    # ------------------------------------------------------------------
    def _fold(self, mean, variance):
        """Statistics and `gamma`/`beta` as one `(scale, shift)`."""
        return kn_ops.scale_and_shift(
            mean,
            variance,
            self._param_in_view(self.gamma, mean.dtype),
            self._param_in_view(self.beta, mean.dtype),
            self.epsilon,
        )

    def _param_in_view(self, weight, dtype):
        """A per-channel weight (or `None`) cast to `dtype` and shaped to
        broadcast against the input (`kn_ops.broadcast_weight`)."""
        return kn_ops.broadcast_weight(
            weight, self._ndim, self._param_axes, dtype
        )

    def _spatial_axes(self, input_shape):
        """The axes besides batch and channel: instance statistics' axes.

        Refuses inputs without one. A single spatial value is accepted, as
        Keras' GroupNormalization accepts one value per group: its
        variance is 0 and the output `beta`.
        """
        axes = tuple(
            a for a in range(1, len(input_shape)) if a not in self._param_axes
        )
        if not axes:
            raise ValueError(
                f"{type(self).__name__} needs an input with at least one "
                "spatial axis besides the batch and channel axes (its "
                "instance statistics reduce over them). "
                f"Received: input_shape={tuple(input_shape)}, axis={self.axis}"
            )
        return axes

    def compute_output_shape(self, input_shape):
        _validation.canonical_axes(self.axis, len(input_shape))
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "axis": self.axis,
                "epsilon": self.epsilon,
                "center": self.center,
                "scale": self.scale,
                "beta_initializer": initializers.serialize(
                    self.beta_initializer
                ),
                "gamma_initializer": initializers.serialize(
                    self.gamma_initializer
                ),
                "beta_regularizer": regularizers.serialize(
                    self.beta_regularizer
                ),
                "gamma_regularizer": regularizers.serialize(
                    self.gamma_regularizer
                ),
                "beta_constraint": constraints.serialize(self.beta_constraint),
                "gamma_constraint": constraints.serialize(
                    self.gamma_constraint
                ),
            }
        )
        return config
