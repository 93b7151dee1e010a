"""WeightStandardization: standardize a Dense or Conv kernel per output unit."""

import keras

from keras_norms import _compat
from keras_norms import ops as kn_ops
from keras_norms import _validation

_SUPPORTED = (
    keras.layers.Dense,
    keras.layers.Conv1D,
    keras.layers.Conv2D,
    keras.layers.Conv3D,
)
# Kernels whose last axis is not the output units: refused for now.
_NOT_YET = (
    keras.layers.Conv1DTranspose,
    keras.layers.Conv2DTranspose,
    keras.layers.Conv3DTranspose,
    keras.layers.DepthwiseConv1D,
    keras.layers.DepthwiseConv2D,
    keras.layers.SeparableConv1D,
    keras.layers.SeparableConv2D,
)


@keras.saving.register_keras_serializable(package="keras_norms")
class WeightStandardization(keras.layers.Wrapper):
    """Weight standardization (Qiao et al., 2019).

    Before every call, standardizes the kernel of the wrapped layer per
    output unit over its fan-in (every kernel axis but the last: the
    spatial axes and input channels of a convolution, the inputs of a
    Dense layer), then runs the wrapped layer with it:

    `w_hat = (w - mean(w)) / sqrt(var(w) + epsilon)`

    with the biased variance. The kernel variable keeps the raw `w`, and
    gradients flow through the standardization into it. Where Batch, Layer,
    Instance and Group normalization normalize activations, it normalizes
    weights, which smooths the loss landscape; it has no statistics of the
    data, so it is the same in training and at inference. It is meant to
    be paired with an activation norm that does not depend on the batch:
    Conv + WeightStandardization + GroupNormalization trains with small
    batches (1 or 2 images per replica) as well as BatchNormalization does
    with large ones; Big Transfer (BiT, Kolesnikov et al., 2020) uses that
    pairing with `epsilon=1e-10`. The default `1e-6` is timm's `StdConv2d`.

    Weights: the wrapper adds none; the wrapped layer keeps its `kernel`
    (raw) and `bias`, names and checkpoint layout. `standardized_kernel()`
    returns `w_hat`, to fold the wrapper away for inference.

    Args:
        layer: A `keras.layers.Dense`, `Conv1D`, `Conv2D` or `Conv3D`
            layer (causal padding, dilations, strides, bias, activation and
            either data format are supported). Layers without a `kernel`
            are refused, and so, for now, are transposed, depthwise and
            separable convolutions (their kernel's last axis is not the
            output units). Its fan-in must be more than 1 value (otherwise
            `w_hat` is always 0).
        epsilon: Small float added to the kernel's variance, `> 0`.
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: The wrapped layer's input.
        training: Passed on to the wrapped layer (through Keras' call
            context).

    Reference:
        - [Qiao et al., 2019](https://arxiv.org/abs/1903.10520).
        - [Kolesnikov et al., 2020, Big Transfer (BiT)](
          https://arxiv.org/abs/1912.11370).

    Examples:
        >>> layer = kn.WeightStandardization(keras.layers.Conv2D(4, 3))
        >>> y = layer(np.ones((1, 8, 8, 3), dtype="float32"))
        >>> tuple(y.shape)
        (1, 6, 6, 4)

        The kernel it convolves with has, per output channel, mean 0 and
        standard deviation 1:

        >>> w_hat = keras.ops.convert_to_numpy(layer.standardized_kernel())
        >>> np.allclose(w_hat.mean(axis=(0, 1, 2)), 0.0, atol=1e-6)
        True
        >>> print(np.round(w_hat.std(axis=(0, 1, 2)), 3))
        [1. 1. 1. 1.]
    """

    def __init__(self, layer, epsilon=1e-6, **kwargs):
        _check_layer(layer)
        super().__init__(layer, **kwargs)
        self.epsilon = _validation.check_positive_float("epsilon", epsilon)
        # The kernel is standardized in float32; the wrapped layer casts
        # it to its compute dtype as usual.
        self.autocast = False

    def build(self, input_shape=None):
        super().build(input_shape)
        if getattr(self.layer, "lora_enabled", False):
            raise ValueError(
                "WeightStandardization cannot wrap layer "
                f"{self.layer.name!r} with LoRA enabled. "
                "Received: layer.lora_enabled=True"
            )
        kernel = getattr(self.layer, "kernel", None)
        if not isinstance(kernel, keras.Variable) or not (
            keras.backend.is_float_dtype(kernel.dtype)
        ):
            raise ValueError(
                "WeightStandardization needs the wrapped layer to own a "
                f"floating-point `kernel` variable once built; layer "
                f"{self.layer.name!r} has none (is it quantized?). "
                f"Received: layer={self.layer!r}"
            )
        self._fan_in_axes = tuple(range(len(kernel.shape) - 1))
        fan_in = 1
        for axis in self._fan_in_axes:
            fan_in *= kernel.shape[axis]
        if fan_in < 2:
            raise ValueError(
                "WeightStandardization needs a fan-in of more than 1 value "
                f"per output unit; layer {self.layer.name!r} has a kernel of "
                f"shape {tuple(kernel.shape)}, whose standardized value would "
                f"always be 0. Received: input_shape={input_shape}"
            )
        self.built = True

    def standardized_kernel(self):
        """The kernel the wrapped layer computes with, in float32.

        `(w - mean) / sqrt(var + epsilon)` per output unit, with the shape of
        the wrapped layer's kernel: assign it to a plain copy of the wrapped
        layer to drop the wrapper for inference.
        """
        kernel = self.layer.kernel
        mean, variance = kn_ops.moments(kernel.value, self._fan_in_axes)
        scale, shift = kn_ops.scale_and_shift(
            mean, variance, epsilon=self.epsilon
        )
        return kn_ops.normalize(kernel.value, scale, shift, kernel.dtype)

    def call(self, inputs, training=None):
        # Run the wrapped layer itself with the standardized kernel: its own
        # padding, bias, activation and dtype handling. Its variables are
        # mapped to their current values in a stateless scope, the kernel to
        # `w_hat`. Every variable is mapped (not only the kernel) because a
        # stateless scope does not fall back on an enclosing one (JAX's
        # compiled train step runs in one, with traced values).
        kernel = self.layer.kernel
        w_hat = self.standardized_kernel()
        mapping = [
            (v, w_hat if v is kernel else v.value)
            for v in self.layer.variables
        ]
        outer = _compat.stateless_scope()
        with keras.StatelessScope(
            state_mapping=mapping,
            collect_losses=True,
            initialize_variables=False,
        ) as scope:
            # `training` reaches the wrapped layer through the call context.
            outputs = self.layer(inputs)
        # The wrapped layer's activity-regularization losses were collected
        # by the inner scope. Hand them to the enclosing stateless scope
        # (JAX's train step), where the wrapped layer already counts them as
        # its own by id; outside one, make them this layer's losses.
        for loss in scope.losses:
            if outer is None:
                self.add_loss(loss)
            elif outer.collect_losses:
                outer.add_loss(loss)
        return outputs

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def get_config(self):
        config = super().get_config()
        config["epsilon"] = self.epsilon
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        # keras.layers.Wrapper.from_config pops "layer" from the caller's
        # dict; work on a copy so the config can be reused.
        return super().from_config(dict(config), custom_objects=custom_objects)


def _check_layer(layer):
    name = getattr(layer, "name", None)
    kind = type(layer).__name__
    if isinstance(layer, _NOT_YET):
        raise ValueError(
            f"WeightStandardization does not support {kind} layers yet (layer "
            f"{name!r}): their kernel's last axis is not the output units. "
            "Supported: keras.layers.Dense, Conv1D, Conv2D, Conv3D. "
            f"Received: layer={layer!r}"
        )
    if not isinstance(layer, _SUPPORTED):
        what = (
            "has no `kernel`"
            if not isinstance(layer, keras.layers.Layer)
            or not _has_kernel_attribute(layer)
            else "is not a supported kind"
        )
        raise ValueError(
            f"WeightStandardization wraps a layer with a `kernel` whose last "
            f"axis is its output units: keras.layers.Dense, Conv1D, Conv2D or "
            f"Conv3D. Layer {name!r} of type {kind} {what}. "
            f"Received: layer={layer!r}"
        )


def _has_kernel_attribute(layer):
    try:
        return hasattr(layer, "kernel")
    except Exception:  # a property that fails before build
        return False
