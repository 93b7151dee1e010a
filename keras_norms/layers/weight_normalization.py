"""WeightNormalization: reparametrize a Dense or Conv kernel as g * v / ||v||."""

import keras
from keras import ops

from keras_norms import _compat
from keras_norms import _validation
from keras_norms import ops as kn_ops

# Added to the squared norm of `v` before the reciprocal square root, as in
# `tf.math.l2_normalize`: an all-zero unit gives a zero kernel, not NaN.
_NORM_EPSILON = 1e-12
# Added to the variance of the first batch in the data-dependent init.
_DATA_INIT_EPSILON = 1e-6

_SUPPORTED = (
    keras.layers.Dense,
    keras.layers.Conv1D,
    keras.layers.Conv2D,
    keras.layers.Conv3D,
)


@keras.saving.register_keras_serializable(package="keras_norms")
class WeightNormalization(keras.layers.Wrapper):
    """Weight normalization (Salimans & Kingma, 2016).

    Reparametrizes the kernel of the wrapped layer as a direction and a
    length per output unit:

    `w = g * v / ||v||`

    where the norm runs over every kernel axis but the last (the output
    units: a Dense layer's `units`, a convolution's `filters`). Unlike
    Batch, Layer, Instance or Group normalization it normalizes weights,
    not activations: there are no statistics at inference, and the wrapped
    layer can be replaced by a plain one holding `w` (what
    `effective_kernel_and_bias()` returns).

    `g` starts at `||v||`, so the wrapped layer starts with exactly the
    output of the plain layer. With `data_init=True`, the first training
    call sets the gain and the bias from that batch (the paper's
    data-dependent init): with `t = x * (v / ||v||)` the pre-activation
    outputs, `g <- 1 / sqrt(var(t) + 1e-6)` and `b <- -mean(t) * g` per
    unit, so that batch's pre-activation outputs have zero mean and unit
    variance per unit. It happens once: a non-trainable flag records it and
    is saved with the model. An empty batch (no samples) initializes
    nothing: the first training batch holding samples does.

    Weights: the direction `v` is the wrapped layer's own `kernel` weight
    (so the wrapped layer keeps its name, path and checkpoint layout); the
    wrapper adds the trainable `g`, shape `(units,)`. With `data_init=True`
    it also adds three non-trainable weights: `data_initialized` (a scalar
    flag, 0 then 1), `g_offset` and `bias_offset` (shape `(units,)`). The
    layer computes with `g + g_offset` and `bias + bias_offset`: Keras'
    JAX trainer drops assignments to trainable variables made in the
    forward pass, so the data-dependent values are kept in non-trainable
    offsets, which every backend updates inside a compiled train step.
    `layer.weights` lists `g`, (`data_initialized`, `g_offset`,
    `bias_offset`,) then the wrapped layer's `kernel` (`v`) and `bias`.
    Because the offsets are constants for the optimizer, the gradients
    and steps of `g` and `bias` are those of the paper's parametrization.

    Args:
        layer: A `keras.layers.Dense`, `Conv1D`, `Conv2D` or `Conv3D`
            layer (any layer whose `kernel`'s last axis is its output
            units). Other layers (transposed, depthwise or separable
            convolutions, layers without a `kernel`) are refused.
        data_init: Boolean, whether to initialize `g` and the bias from the
            first training batch. Needs a wrapped layer with a bias.
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: The wrapped layer's input.
        training: Python boolean; with `data_init=True`, the first call
            with `training=True` performs the data-dependent init.

    Reference:
        - [Salimans & Kingma, 2016](https://arxiv.org/abs/1602.07868).

    Examples:
        >>> layer = kn.WeightNormalization(keras.layers.Dense(3))
        >>> y = layer(np.ones((2, 4), dtype="float32"))
        >>> tuple(y.shape)
        (2, 3)
        >>> [w.name for w in layer.weights]
        ['g', 'kernel', 'bias']
    """

    def __init__(self, layer, data_init=False, **kwargs):
        if not isinstance(layer, _SUPPORTED):
            name = getattr(layer, "name", None)
            raise TypeError(
                "WeightNormalization wraps a layer with a `kernel` whose last "
                "axis is its output units: a keras.layers.Dense, Conv1D, "
                f"Conv2D or Conv3D layer. Layer {name!r} of type "
                f"{type(layer).__name__} is not one. Received: layer={layer!r}"
            )
        super().__init__(layer, **kwargs)
        self.data_init = _validation.check_bool("data_init", data_init)
        # A Keras mask flows on where the wrapped layer passes it (Dense
        # does, convolutions do not), as without the wrapper.
        self.supports_masking = bool(getattr(layer, "supports_masking", False))
        # Weights stay float32 under mixed precision: the kernel is
        # normalized in float32, then cast to the compute dtype.
        self.autocast = False
        self.g = None

    # ------------------------------------------------------------------
    # Build
    # ------------------------------------------------------------------
    def build(self, input_shape=None):
        super().build(input_shape)
        kernel = getattr(self.layer, "kernel", None)
        if kernel is None or not isinstance(kernel, keras.Variable):
            raise TypeError(
                f"WeightNormalization needs the wrapped layer to own a "
                f"`kernel` variable once built; layer {self.layer.name!r} "
                f"has none (is it quantized?). Received: layer={self.layer!r}"
            )
        if getattr(self.layer, "lora_enabled", False):
            raise ValueError(
                f"WeightNormalization cannot wrap layer {self.layer.name!r} "
                "with LoRA enabled. Received: layer.lora_enabled=True"
            )
        if self.data_init and self._bias() is None:
            raise ValueError(
                "WeightNormalization(data_init=True) sets the bias of the "
                f"wrapped layer, but layer {self.layer.name!r} has none. "
                f"Received: data_init=True, use_bias=False"
            )
        # The wrapped layer's own input checks (its `call` is not run):
        # a wrong-rank input gets Keras' message, the same on every backend.
        self.input_spec = self.layer.input_spec
        self._kernel_axes = tuple(range(len(kernel.shape) - 1))
        units = kernel.shape[-1]
        if isinstance(self.layer, keras.layers.Dense):
            self._unit_axis = -1
        else:
            self._unit_axis = (
                1 if self.layer.data_format == "channels_first" else -1
            )
        self.g = self.add_weight(
            shape=(units,),
            name="g",
            initializer=lambda shape, dtype=None: ops.cast(
                self._kernel_norm(), dtype or "float32"
            ),
            trainable=True,
            autocast=False,
        )
        if self.data_init:
            self.data_initialized = self.add_weight(
                shape=(),
                name="data_initialized",
                initializer="zeros",
                trainable=False,
                autocast=False,
            )
            self.g_offset = self.add_weight(
                shape=(units,),
                name="g_offset",
                initializer="zeros",
                trainable=False,
                autocast=False,
            )
            self.bias_offset = self.add_weight(
                shape=(units,),
                name="bias_offset",
                initializer="zeros",
                trainable=False,
                autocast=False,
            )
        self.built = True

    def _bias(self):
        return getattr(self.layer, "bias", None)

    def _kernel_norm(self):
        v = ops.convert_to_tensor(self.layer.kernel)
        return ops.sqrt(ops.sum(ops.square(v), axis=self._kernel_axes))

    def _direction(self):
        """`v / ||v||` in float32, per output unit."""
        v = ops.cast(self.layer.kernel, "float32")
        squared_norm = ops.sum(ops.square(v), axis=self._kernel_axes)
        return v * ops.rsqrt(ops.maximum(squared_norm, _NORM_EPSILON))

    def _gain_and_bias(self):
        """The effective `g` and bias (float32), offsets included."""
        g = ops.cast(self.g, "float32")
        bias = self._bias()
        if bias is not None:
            bias = ops.cast(bias, "float32")
        if self.data_init:
            g = g + self.g_offset
            bias = bias + self.bias_offset
        return g, bias

    def effective_kernel_and_bias(self):
        """The kernel and bias of the equivalent plain layer.

        Returns:
            A `(kernel, bias)` tuple of float32 tensors, `kernel = g * v /
            ||v||` with the shape of the wrapped layer's kernel, `bias` the
            wrapped layer's bias (with the data-dependent offset), or
            `None` where the layer has no bias. Assign them to a plain copy
            of the wrapped layer to drop the wrapper for inference.
        """
        g, bias = self._gain_and_bias()
        return self._direction() * g, bias

    # ------------------------------------------------------------------
    # Call
    # ------------------------------------------------------------------
    def _linear(self, x, kernel):
        """The wrapped layer's op without bias and activation."""
        layer = self.layer
        if isinstance(layer, keras.layers.Dense):
            return ops.matmul(x, kernel)
        padding = layer.padding
        if padding == "causal":
            x = ops.pad(x, _compat.causal_padding(layer))
            padding = "valid"
        return kn_ops.conv(
            x,
            kernel,
            strides=list(layer.strides),
            padding=padding,
            dilation_rate=layer.dilation_rate,
            data_format=layer.data_format,
        )

    def _per_unit(self, vector, ndim, dtype):
        """Reshape a `(units,)` vector to broadcast along the unit axis."""
        shape = [1] * ndim
        shape[self._unit_axis] = -1
        return ops.reshape(ops.cast(vector, dtype), shape)

    def call(self, inputs, training=None):
        dtype = self.compute_dtype
        x = ops.cast(inputs, dtype)
        direction = self._direction()
        if self.data_init and training:
            outputs = self._call_with_data_init(x, direction)
        else:
            g, bias = self._gain_and_bias()
            outputs = self._linear(x, ops.cast(direction * g, dtype))
            if bias is not None:
                outputs = outputs + self._per_unit(
                    bias, len(outputs.shape), dtype
                )
        if self.layer.activation is not None:
            outputs = self.layer.activation(outputs)
        return outputs

    def _call_with_data_init(self, x, direction):
        """Training call of a `data_init` layer: init on the first batch.

        Computes `t = x * (v / ||v||)`, then `y = t * g + b`. While the
        `data_initialized` flag is 0 the offsets are set so that `g` and `b`
        equal `1 / std(t)` and `-mean(t) / std(t)`; the blending is an
        `ops.cond` on the flag, so it works in a compiled train step.
        """
        dtype = self.compute_dtype
        t = self._linear(x, ops.cast(direction, dtype))
        ndim = len(t.shape)
        stat_axes = tuple(a for a in range(ndim) if a != self._unit_axis % ndim)
        g = ops.cast(self.g, "float32")
        bias = ops.cast(self._bias(), "float32")

        def initial_offsets():
            mean, variance = kn_ops.moments(t, stat_axes, keepdims=False)
            init_g = ops.rsqrt(variance + _DATA_INIT_EPSILON)
            init_bias = -mean * init_g
            return (
                ops.stop_gradient(init_g - g),
                ops.stop_gradient(init_bias - bias),
            )

        def current_offsets():
            return (
                ops.convert_to_tensor(self.g_offset),
                ops.convert_to_tensor(self.bias_offset),
            )

        # An empty batch has no statistics: the layer stays uninitialized
        # and the first batch holding samples initializes it.
        has_values = kn_ops.has_values(t, stat_axes)
        if has_values is False:
            g_offset, bias_offset = current_offsets()
        else:
            pending = ops.equal(
                ops.convert_to_tensor(self.data_initialized), 0.0
            )
            if has_values is not True:
                pending = ops.logical_and(pending, has_values)
            g_offset, bias_offset = ops.cond(
                pending, initial_offsets, current_offsets
            )
            self.g_offset.assign(g_offset)
            self.bias_offset.assign(bias_offset)
        if has_values is True:
            self.data_initialized.assign(ops.ones((), "float32"))
        elif has_values is not False:
            self.data_initialized.assign(
                ops.where(
                    has_values,
                    ops.ones((), "float32"),
                    ops.convert_to_tensor(self.data_initialized),
                )
            )
        t = ops.cast(t, "float32") * self._per_unit(
            g + g_offset, ndim, "float32"
        )
        t = t + self._per_unit(bias + bias_offset, ndim, "float32")
        return ops.cast(t, dtype)

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def get_config(self):
        config = super().get_config()
        config["data_init"] = self.data_init
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        # keras.layers.Wrapper.from_config pops "layer" from the caller's
        # dict; work on a copy so the config can be reused.
        return super().from_config(dict(config), custom_objects=custom_objects)
