"""The private base class every keras_norms normalization layer derives from.

A layer declares:

- its parameter (channel) axes, from the `axis` argument;
- `_statistics(x, training)`: the mean and variance it normalizes with, as
  tensors that broadcast against the input (or, where it combines several,
  `_scale_and_shift`: GroupNormalization pools channel moments into groups,
  BatchInstanceNormalization mixes two normalizations);
- optionally extra state weights (moving statistics).

The base class does the rest: argument validation, the `gamma`/`beta`
weights, mixed precision (weights and statistics in float32), the single
scale-and-shift, and the config.
"""

import keras
from keras import constraints
from keras import initializers
from keras import ops
from keras import regularizers

from keras_norms import ops as kn_ops
from keras_norms.backend import native
from keras_norms import _validation


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

    Returns `(axes, param_shape, param_shape_in_view)`: the canonical axes
    of `layer.axis`, the weights' shape, and that shape with ones elsewhere
    (to broadcast against the input). Refuses an unknown size along `axis`.
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
    in_view = [1] * len(input_shape)
    for axis in axes:
        in_view[axis] = input_shape[axis]
    return axes, tuple(input_shape[a] for a in axes), tuple(in_view)


def build_rank_free(layer, input_shape):
    """Fix only the sizes along `layer.axis`, not the input rank (Keras).

    For LayerNormalization and RMSNormalization, whose weights have the
    input's sizes along `axis` and nothing else, as Keras' own: built on
    `(2, 2, 2)`, `axis=-1`, they take a `(3, 2, 2, 2)` input too. Sets the
    input spec (`min_ndim`, and the sizes keyed by the axes as given, so a
    negative axis counts from the end and a positive one from the batch axis
    at any rank), records the sizes for `rank_free_layout`, and sets
    `layer.axis` to Keras' built form (a sorted list: `-1` becomes `[-1]`)
    so that the configs compare equal.
    """
    entries = [layer.axis] if isinstance(layer.axis, int) else list(layer.axis)
    layer._axis_sizes = {a: input_shape[a] for a in entries}
    layer._axis_order = _axis_order(entries, len(input_shape))
    layer.input_spec = keras.layers.InputSpec(
        min_ndim=max(a + 1 if a >= 0 else 1 - a for a in entries),
        axes=dict(layer._axis_sizes),
    )
    layer.axis = sorted(entries)


def _axis_order(entries, ndim):
    """The axis entries in the order of the input positions they name."""
    return tuple(sorted(entries, key=lambda a: a % ndim))


def rank_free_layout(layer, ndim):
    """`(axes, param_shape_in_view)` of `build_rank_free`'s weights at rank
    `ndim`: the canonical axes to reduce over and the weights' shape with
    ones elsewhere. Refuses an `axis` that names the batch axis or one axis
    twice at this rank, or whose entries come in another order than at
    build (a list mixing signs: the weights would be transposed).
    """
    axes = _validation.canonical_axes(layer.axis, ndim)
    if _axis_order(layer._axis_sizes, ndim) != layer._axis_order:
        raise ValueError(
            f"{type(layer).__name__}'s `axis` names the input axes in "
            f"another order at rank {ndim} than at build, so its weights "
            f"would not line up; use axes of one sign. Received: "
            f"axis={layer.axis}, ndim={ndim}"
        )
    view = [1] * ndim
    for a, size in layer._axis_sizes.items():
        view[a % ndim] = size
    return axes, tuple(view)


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

    # ------------------------------------------------------------------
    # Build
    # ------------------------------------------------------------------
    def build(self, input_shape):
        input_shape = tuple(input_shape)
        ndim = len(input_shape)
        self._param_axes, param_shape, self._param_shape_in_view = (
            parameter_layout(self, input_shape)
        )
        self._build_layout(input_shape)
        if self.scale:
            self.gamma = self.add_weight(
                shape=param_shape,
                name="gamma",
                initializer=self.gamma_initializer,
                regularizer=self.gamma_regularizer,
                constraint=self.gamma_constraint,
                trainable=True,
                autocast=False,
            )
        if self.center:
            self.beta = self.add_weight(
                shape=param_shape,
                name="beta",
                initializer=self.beta_initializer,
                regularizer=self.beta_regularizer,
                constraint=self.beta_constraint,
                trainable=True,
                autocast=False,
            )
        self._build_state(param_shape)
        self.input_spec = keras.layers.InputSpec(
            ndim=ndim, axes={a: input_shape[a] for a in self._param_axes}
        )

    def _build_layout(self, input_shape):
        """Validate the input shape and record the reduction layout.

        Sets `self._reduction_axes`, the axes the statistics reduce over.
        """
        self._reduction_axes = self._reduction_axes_for(input_shape)

    def _reduction_axes_for(self, input_shape):
        """The axes statistics reduce over; layers override this."""
        raise NotImplementedError

    def _build_state(self, param_shape):
        """Create non-trainable state (moving statistics); none by default."""

    # ------------------------------------------------------------------
    # Call
    # ------------------------------------------------------------------
    def call(self, inputs, training=None):
        outputs = native.compiled_call(self, inputs, training=training)
        if outputs is not None:
            return outputs
        outputs = self._native_call(inputs, training)
        if outputs is not None:
            return outputs
        return self._normalize(inputs, training)

    def _native_call(self, inputs, training):
        """The output by a backend's fused kernel, or `None` (the default).

        Layers override this to call `keras_norms.backend.native`, which
        answers `None` wherever its kernels do not apply (every backend but
        torch, half precision, unusual axes); `call` then runs the one
        `keras.ops` implementation.
        """
        return None

    def _normalize(self, x, training):
        """`x` normalized with one scale and shift (`_scale_and_shift`)."""
        scale, shift = self._scale_and_shift(x, training)
        return kn_ops.normalize(x, scale, shift, self.compute_dtype)

    def _scale_and_shift(self, x, training):
        """The `(scale, shift)` pair `x` is normalized with.

        By default the layer's statistics folded with `gamma` and `beta`;
        layers that mix several normalizations (BatchInstanceNormalization)
        override this to mix their scales and shifts instead.
        """
        mean, variance = self._statistics(x, training)
        return kn_ops.scale_and_shift(
            mean,
            variance,
            self._param_in_view(self.gamma, mean.dtype),
            self._param_in_view(self.beta, mean.dtype),
            self.epsilon,
        )

    def _statistics(self, x, training):
        """`(mean, variance)` that broadcast against `x`."""
        return kn_ops.moments(x, self._reduction_axes)

    def _param_in_view(self, weight, dtype, view=None):
        """`weight` (a variable or tensor) cast to `dtype`, broadcastable
        against the input (shaped `view`, by default the build's
        `_param_shape_in_view`); a per-channel weight on the last axis
        already broadcasts, so it skips the reshape (and the cast where the
        dtype matches): fewer small ops for eager backends to dispatch."""
        if weight is None:
            return None
        if keras.backend.standardize_dtype(weight.dtype) != (
            keras.backend.standardize_dtype(dtype)
        ):
            weight = ops.cast(weight, dtype)
        shape = tuple(weight.shape)
        view = self._param_shape_in_view if view is None else view
        if view[len(view) - len(shape):] == shape and all(
            s == 1 for s in view[: len(view) - len(shape)]
        ):
            return ops.convert_to_tensor(weight)
        return ops.reshape(weight, view)

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

