"""ConditionalNormalization: a norm whose affine is predicted from a condition.

It derives from `keras.layers.Layer`, not `_base.Normalization`: it
computes no statistics of its own (the wrapped norm does), and its affine
is not a weight but a function of a second input. It wraps the norm as
`keras.layers.Wrapper` wraps a layer (serialized in `get_config`), but
does not derive from `Wrapper` either, whose `build` passes its one input
shape to the wrapped layer.
"""

import keras
from keras import constraints
from keras import initializers
from keras import ops
from keras import regularizers

from keras_norms import _validation
from keras_norms import ops as kn_ops


def channel_axis(normalization):
    """The one axis a norm's per-channel affine runs along, as it gives it
    (an int, maybe negative), or a ValueError naming the fix."""
    axis = getattr(normalization, "axis", None)
    if isinstance(axis, (list, tuple)) and len(axis) == 1:
        (axis,) = axis
    if not _validation.is_integer(axis):
        raise ValueError(
            "ConditionalNormalization needs a normalization with one "
            "channel `axis` (an int), along which it scales and shifts. "
            f"Received: normalization={type(normalization).__name__} with "
            f"axis={axis!r}"
        )
    return int(axis)


@keras.saving.register_keras_serializable(package="keras_norms")
class ConditionalNormalization(keras.layers.Layer):
    """A normalization whose scale and shift are learned from a condition.

    Called on `[x, condition]`, with `condition` of shape `(batch, d)`
    (a class embedding, a diffusion timestep embedding, a style code):

    `y = normalization(x) * (1 + scale(condition)) + shift(condition)`

    where `scale` and `shift` are two `Dense(channels)` layers of the
    condition, one value per sample and channel, broadcast along the
    wrapped norm's channel `axis` (for a `LayerNormalization(axis=-1)`,
    the last axis). The wrapped norm has no affine of its own: build it
    with `center=False, scale=False`. Both Dense layers start at zero
    (`kernel_initializer="zeros"`, `bias_initializer="zeros"`), so at
    initialization the layer equals the wrapped norm and each residual
    branch it gates starts as the identity: adaLN-Zero in DiT (with a
    `LayerNormalization`), AdaGN in Dhariwal & Nichol's guided diffusion
    (with a `GroupNormalization`), conditional batch normalization of de
    Vries et al. (with a `BatchNormalization`, whose moving statistics it
    updates in training). To put a non-linearity on the condition (DiT's
    SiLU), apply it before this layer.

    `keras_norms.optimize_for_inference` and `fold_batch_norms` replace a
    wrapped BatchNormalization by its fixed `Affine` (its moving
    statistics folded in); the conditional scale and shift stay.

    Args:
        normalization: A normalization layer built without its own affine
            (`center=False, scale=False`), with one channel `axis`: any
            keras_norms norm, or a Keras one.
        kernel_initializer: Initializer of both Dense kernels.
        bias_initializer: Initializer of both Dense biases.
        kernel_regularizer, bias_regularizer: Optional regularizers of both
            Dense layers.
        kernel_constraint, bias_constraint: Optional constraints of both
            Dense layers.
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: A list `[x, condition]`: `x` the tensor the wrapped norm
            takes, `condition` of shape `(batch, d)`.
        training: Passed to the wrapped norm (a BatchNormalization uses
            batch statistics and updates its moving ones).

    Reference:
        - [de Vries et al., 2017](https://arxiv.org/abs/1707.00683),
          conditional batch normalization.
        - [Dhariwal & Nichol, 2021](https://arxiv.org/abs/2105.05233),
          adaptive group normalization.
        - [Peebles & Xie, 2023](https://arxiv.org/abs/2212.09748),
          adaLN-Zero.

    Examples:
        >>> layer = kn.ConditionalNormalization(
        ...     kn.LayerNormalization(epsilon=1e-6, center=False, scale=False)
        ... )
        >>> x = np.array([[[1.0, 3.0]]], "float32")  # (batch, T, channels)
        >>> condition = np.ones((1, 8), "float32")
        >>> y = layer([x, condition])  # zero Dense: LayerNormalization
        >>> print(np.round(keras.ops.convert_to_numpy(y), 3))
        [[[-1.  1.]]]
        >>> _ = layer.shift.bias.assign([1.0, 2.0])  # a learned shift
        >>> y = layer([x, condition])
        >>> print(np.round(keras.ops.convert_to_numpy(y), 3))
        [[[0. 3.]]]
    """

    def __init__(
        self,
        normalization,
        kernel_initializer="zeros",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(normalization, keras.layers.Layer):
            raise TypeError(
                "Argument `normalization` must be a keras Layer instance. "
                f"Received: normalization={normalization!r}"
            )
        for affine in ("center", "scale"):
            if getattr(normalization, affine, None) is True:
                raise ValueError(
                    "ConditionalNormalization learns the scale and shift: "
                    "the wrapped normalization must have none of its own. "
                    "Pass `center=False, scale=False` to it. Received: "
                    f"normalization={type(normalization).__name__} with "
                    f"{affine}=True"
                )
        channel_axis(normalization)
        self.normalization = normalization
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)
        self.kernel_constraint = constraints.get(kernel_constraint)
        self.bias_constraint = constraints.get(bias_constraint)
        self.supports_masking = True
        self.scale = None
        self.shift = None

    def build(self, input_shape):
        x_shape, condition_shape = _input_pair(input_shape)
        ndim = len(x_shape)
        (self._channel,) = _validation.canonical_axes(
            channel_axis(self.normalization), ndim
        )
        channels = x_shape[self._channel]
        if channels is None or len(condition_shape) != 2:
            raise ValueError(
                "ConditionalNormalization needs a known number of channels "
                "along the norm's axis and a condition of shape "
                f"(batch, d). Received: x_shape={x_shape}, "
                f"condition_shape={condition_shape}"
            )
        if None not in (x_shape[0], condition_shape[0]) and (
            x_shape[0] != condition_shape[0]
        ):
            raise ValueError(
                "ConditionalNormalization needs one condition per sample. "
                f"Received: x_shape={x_shape}, "
                f"condition_shape={condition_shape}"
            )
        if not self.normalization.built:
            self.normalization.build(x_shape)
        self._view = [1] * ndim
        self._view[0] = -1
        self._view[self._channel] = channels
        self.scale = self._dense(channels, "scale", condition_shape)
        self.shift = self._dense(channels, "shift", condition_shape)

    def _dense(self, channels, name, condition_shape):
        dense = keras.layers.Dense(
            channels,
            kernel_initializer=self.kernel_initializer,
            bias_initializer=self.bias_initializer,
            kernel_regularizer=self.kernel_regularizer,
            bias_regularizer=self.bias_regularizer,
            kernel_constraint=self.kernel_constraint,
            bias_constraint=self.bias_constraint,
            dtype=self.dtype_policy,
            name=name,
        )
        dense.build(condition_shape)
        return dense

    def call(self, inputs, training=None, mask=None):
        x, condition = inputs
        norm_kwargs = {"training": training}
        if isinstance(mask, (list, tuple)) and mask[0] is not None:
            norm_kwargs["mask"] = mask[0]
        y = self.normalization(x, **norm_kwargs)
        # The conditional affine in float32 under mixed precision, as the
        # norms apply theirs.
        dtype = kn_ops.statistics_dtype(y.dtype)
        scale = ops.reshape(ops.cast(self.scale(condition), dtype), self._view)
        shift = ops.reshape(ops.cast(self.shift(condition), dtype), self._view)
        return kn_ops.normalize(y, 1 + scale, shift, self.compute_dtype)

    def compute_mask(self, inputs, mask=None):
        if isinstance(mask, (list, tuple)):
            return mask[0]
        return mask

    def compute_output_shape(self, input_shape):
        x_shape, _ = _input_pair(input_shape)
        return x_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "normalization": keras.saving.serialize_keras_object(
                    self.normalization
                ),
                "kernel_initializer": initializers.serialize(
                    self.kernel_initializer
                ),
                "bias_initializer": initializers.serialize(
                    self.bias_initializer
                ),
                "kernel_regularizer": regularizers.serialize(
                    self.kernel_regularizer
                ),
                "bias_regularizer": regularizers.serialize(
                    self.bias_regularizer
                ),
                "kernel_constraint": constraints.serialize(
                    self.kernel_constraint
                ),
                "bias_constraint": constraints.serialize(self.bias_constraint),
            }
        )
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["normalization"] = keras.saving.deserialize_keras_object(
            config["normalization"], custom_objects=custom_objects
        )
        return cls(**config)


def _input_pair(input_shape):
    """`(x_shape, condition_shape)`, or a ValueError naming the call."""
    if (
        isinstance(input_shape, (list, tuple))
        and len(input_shape) == 2
        and all(isinstance(s, (list, tuple)) for s in input_shape)
    ):
        return tuple(input_shape[0]), tuple(input_shape[1])
    raise ValueError(
        "ConditionalNormalization is called on a list of two tensors, "
        f"`[x, condition]`. Received: input_shape={input_shape}"
    )
