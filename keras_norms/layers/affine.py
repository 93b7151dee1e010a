"""A fixed per-channel scale and shift: what a frozen BatchNormalization is.

Also `batch_norm_scale_and_shift(layer)`, a BatchNormalization layer's
scale and shift (the math itself is `keras_norms._fold_math`'s), which
`Affine.from_batch_normalization` and `keras_norms.folding` share.
"""

import keras
import numpy as np
from keras import ops

from keras_norms import _fold_math
from keras_norms import _validation
from keras_norms import ops as kn_ops


@keras.saving.register_keras_serializable(package="keras_norms")
class Affine(keras.layers.Layer):
    """A fixed per-channel scale and shift, `y = x * scale + offset`.

    At inference a BatchNormalization is exactly this map with
    `scale = gamma / sqrt(moving_variance + epsilon)` and
    `offset = beta - moving_mean * scale` (step 3 of every normalization in
    `keras_norms.ops`, with the statistics frozen).
    `keras_norms.folding.fold_batch_norms` replaces each BatchNormalization
    it cannot fold into the preceding Conv/Dense layer (its input has other
    consumers, comes after a non-linear activation, or is a model input)
    by one of these. Use `Affine.from_batch_normalization(bn)` to make one.

    Both weights are non-trainable: the layer holds no statistics and does
    not depend on the batch, so `training` has no effect on it.

    Args:
        axis: Integer, the channel axis: `-1` for channels-last (NHWC, NTC),
            `1` for channels-first (NCHW).
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: Input tensor of rank 2 or more.

    Reference:
        - [Ioffe & Szegedy, 2015](https://arxiv.org/abs/1502.03167), section
          3.1: the inference-time transform of batch normalization.

    Examples:
        >>> bn = kn.BatchNormalization()
        >>> bn.build((None, 2))
        >>> gamma, beta, mean, variance = [1, 1], [0, 0], [1, 2], [4, 16]
        >>> bn.set_weights(np.array([gamma, beta, mean, variance], "float32"))
        >>> affine = kn.Affine.from_batch_normalization(bn)
        >>> x = np.array([[3.0, 6.0]], dtype="float32")
        >>> print(np.round(keras.ops.convert_to_numpy(affine(x)), 3))
        [[1. 1.]]
    """

    def __init__(self, axis=-1, **kwargs):
        super().__init__(**kwargs)
        self.axis = _validation.check_axis_argument(axis)
        self.supports_masking = True
        # Weights stay float32 under mixed precision, as in the norms.
        self.autocast = False
        self.scale = None
        self.offset = None

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        ndim = len(input_shape)
        (axis,) = _validation.canonical_axes(self.axis, ndim)
        channels = input_shape[axis]
        if channels is None:
            raise ValueError(
                "Affine needs a known size along its `axis`, but axis "
                f"{axis} of the input is unknown. Received: axis={self.axis}, "
                f"input_shape={input_shape}"
            )
        self._view_shape = tuple(
            channels if a == axis else 1 for a in range(ndim)
        )
        self.scale = self.add_weight(
            shape=(channels,),
            name="scale",
            initializer="ones",
            trainable=False,
            autocast=False,
        )
        self.offset = self.add_weight(
            shape=(channels,),
            name="offset",
            initializer="zeros",
            trainable=False,
            autocast=False,
        )
        self.input_spec = keras.layers.InputSpec(
            ndim=ndim, axes={axis: channels}
        )

    def call(self, inputs):
        dtype = kn_ops.statistics_dtype(inputs.dtype)
        scale = ops.reshape(ops.cast(self.scale, dtype), self._view_shape)
        offset = ops.reshape(ops.cast(self.offset, dtype), self._view_shape)
        return kn_ops.normalize(inputs, scale, offset, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        _validation.canonical_axes(self.axis, len(input_shape))
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update({"axis": self.axis})
        return config

    @classmethod
    def from_batch_normalization(cls, layer, name=None):
        """The built `Affine` equal to the built `layer` in inference mode.

        Works for `keras.layers.BatchNormalization` and
        `keras_norms.layers.BatchNormalization` (and their subclasses): the
        scale and offset are computed in float64 from the moving statistics,
        `gamma`, `beta` and `epsilon`, then rounded once to float32.
        """
        scale, offset = batch_norm_scale_and_shift(layer)
        return cls.from_scale_and_offset(
            scale,
            offset,
            axis=layer.axis,
            ndim=batch_norm_input_rank(layer),
            name=name or layer.name,
            dtype=layer.dtype_policy,
        )

    @classmethod
    def from_scale_and_offset(
        cls, scale, offset, *, axis, ndim, name=None, dtype=None
    ):
        """The built `Affine` computing `x * scale + offset` along `axis`.

        Args:
            scale, offset: 1-D arrays of one value per channel (any float
                dtype; rounded once to the weights' float32).
            axis: The channel axis, as the layer's `axis` argument.
            ndim: The rank of the inputs it is built for.
            name, dtype: As for the layer.
        """
        affine = cls(axis=axis, name=name, dtype=dtype)
        (channel_axis,) = _validation.canonical_axes(affine.axis, ndim)
        affine.build(
            tuple(
                len(scale) if a == channel_axis else None for a in range(ndim)
            )
        )
        affine.scale.assign(np.asarray(scale).astype(affine.scale.dtype))
        affine.offset.assign(np.asarray(offset).astype(affine.offset.dtype))
        return affine


def float64_numpy(value):
    """A variable or tensor as a float64 NumPy array (for exact folds)."""
    return np.asarray(ops.convert_to_numpy(value), dtype=np.float64)


def batch_norm_scale_and_shift(layer):
    """`(a, b)` in float64 with `layer(x, training=False) == x * a + b`.

    `a = gamma / sqrt(moving_variance + epsilon)`,
    `b = beta - moving_mean * a`; `gamma = 1` without `scale`, `beta = 0`
    without `center`. For a built `keras.layers.BatchNormalization`,
    `keras_norms.layers.BatchNormalization` (or a subclass), or any layer
    with the same attributes (an `InstanceNormalization` with
    `track_running_stats=True`).

    Raises:
        ValueError: If `layer` is not built.
    """
    if not layer.built:
        raise ValueError(
            f"BatchNormalization layer '{layer.name}' is not built; build or "
            "call the model before folding it."
        )
    return _fold_math.batch_norm_scale_and_shift(
        float64_numpy(layer.moving_mean),
        float64_numpy(layer.moving_variance),
        layer.epsilon,
        gamma=float64_numpy(layer.gamma) if layer.scale else None,
        beta=float64_numpy(layer.beta) if layer.center else None,
    )


def batch_norm_input_rank(layer):
    """The rank of the input a built BatchNormalization was built for."""
    spec = getattr(layer, "input_spec", None)
    if spec is not None and getattr(spec, "ndim", None) is not None:
        return spec.ndim
    return len(layer.input.shape)
