"""LocalResponseNormalization: each channel divided by its neighbours' energy."""

import keras

from keras_norms import _validation
from keras_norms import ops as kn_ops


@keras.saving.register_keras_serializable(package="keras_norms")
class LocalResponseNormalization(keras.layers.Layer):
    """Local response normalization (Krizhevsky et al., 2012).

    The cross-channel normalization of AlexNet and GoogLeNet, with
    TensorFlow's argument names and semantics
    (`tf.nn.local_response_normalization`) along a channel `axis`: each
    value is divided by a power of the sum of squares over the
    `2 * depth_radius + 1` channels centred on its own, at the same
    position of the same sample (channels past the edges count as 0):

    `sqr_sum[..., d] = sum(x[..., d - depth_radius : d + depth_radius + 1] ** 2)`
    `y = x / (bias + alpha * sqr_sum) ** beta`

    No weights and no state; the same in training and at inference.

    PyTorch's `torch.nn.LocalResponseNorm(size, alpha, beta, k)` divides
    the window sum by `size`; the same layer here is
    `LocalResponseNormalization(depth_radius=(size - 1) // 2,
    alpha=alpha / size, beta=beta, bias=k, axis=1)` for an odd `size`
    (conversely, `size = 2 * depth_radius + 1`,
    `alpha_torch = alpha * size`, `k = bias`). Caffe's `LRN`
    (`local_size`, `alpha`, `beta`, `k`) maps as torch's does; the AlexNet
    paper's `n`, `k`, `alpha`, `beta` (its sum not averaged) map to
    `depth_radius = n // 2`, `bias = k` and `alpha`, `beta` unchanged.

    Computed in float32 for half-precision inputs (mixed precision); the
    output has the layer's compute dtype. Uses TensorFlow's LRN kernel
    for float32 channels-last images outside XLA (measured faster than
    the `keras.ops` path); see `keras_norms.ops.local_response_normalization`.

    Args:
        depth_radius: Non-negative int, the half-width of the window
            (TensorFlow's default 5: 11 channels).
        bias: Float added to the scaled sum, usually `> 0` to avoid a
            division by 0 (torch's `k`).
        alpha: Float, the scale of the sum of squares.
        beta: Float, the exponent.
        axis: Integer, the channel axis: `-1` for channels-last, `1` for
            channels-first.
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: Input tensor of rank 2 or more, with a known size along
            `axis`.
        training: Ignored: the layer behaves the same in both modes.

    Reference:
        - [Krizhevsky et al., 2012, ImageNet Classification with Deep
          Convolutional Neural Networks](
          https://papers.nips.cc/paper/4824-imagenet-classification-with-deep-convolutional-neural-networks).

    Examples:
        >>> layer = kn.LocalResponseNormalization(depth_radius=1, bias=0.0)
        >>> x = np.array([[1.0, 2.0, 2.0]], "float32")
        >>> y = layer(x)  # [1 / sqrt(1 + 4), 2 / sqrt(1 + 4 + 4), 2 / sqrt(8)]
        >>> print(np.round(keras.ops.convert_to_numpy(y), 3))
        [[0.447 0.667 0.707]]
        >>> layer.weights
        []
    """

    def __init__(
        self, depth_radius=5, bias=1.0, alpha=1.0, beta=0.5, axis=-1, **kwargs
    ):
        super().__init__(**kwargs)
        self.depth_radius = _validation.check_non_negative_int(
            "depth_radius", depth_radius
        )
        self.bias = _validation.check_float("bias", bias)
        self.alpha = _validation.check_float("alpha", alpha)
        self.beta = _validation.check_float("beta", beta)
        self.axis = _validation.check_axis_argument(axis)
        self.supports_masking = True

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        (self._channel_axis,) = _validation.canonical_axes(
            self.axis, len(input_shape)
        )
        if input_shape[self._channel_axis] is None:
            raise ValueError(
                "LocalResponseNormalization needs a known size along its "
                "`axis` (the window runs along it). "
                f"Received: axis={self.axis}, input_shape={input_shape}"
            )
        self.input_spec = keras.layers.InputSpec(
            ndim=len(input_shape),
            axes={self._channel_axis: input_shape[self._channel_axis]},
        )

    def call(self, inputs, training=None):
        return kn_ops.local_response_normalization(
            inputs,
            self.depth_radius,
            self.bias,
            self.alpha,
            self.beta,
            self._channel_axis,
            self.compute_dtype,
        )

    def compute_output_shape(self, input_shape):
        _validation.canonical_axes(self.axis, len(input_shape))
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "depth_radius": self.depth_radius,
                "bias": self.bias,
                "alpha": self.alpha,
                "beta": self.beta,
                "axis": self.axis,
            }
        )
        return config
