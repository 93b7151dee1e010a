"""AdaptiveInstanceNormalization: content normalized to a style's statistics.

It derives from `_base.Normalization` with `center=False, scale=False`
(no `gamma`, no `beta`): the base still gives it the `axis` and `epsilon`
checks, the canonical channel axis, the spatial axes with their error for
inputs without one, float32 statistics under mixed precision
(`autocast=False`) and the config. What a two-input layer needs on top is
small and local: `build` checks the pair and gives each input its spec,
`_normalize` runs `keras_norms.ops.adaptive_instance_normalization`, and
`get_config` leaves out the affine arguments the layer does not take.
"""

import keras

from keras_norms import ops as kn_ops
from keras_norms.layers import _base


@keras.saving.register_keras_serializable(package="keras_norms")
class AdaptiveInstanceNormalization(_base.Normalization):
    """Adaptive instance normalization (AdaIN; Huang & Belongie, 2017).

    Called on `[content, style]`, it instance-normalizes the content and
    gives each (sample, channel) the mean and standard deviation of the
    same (sample, channel) of the style:

    `y = sigma(style) * (content - mu(content)) / sigma(content) + mu(style)`

    with `mu` and `sigma` the mean and (biased) standard deviation over the
    spatial axes (every axis but the batch and channel axes), and
    `sigma(content) = sqrt(var(content) + epsilon)`,
    `sigma(style) = sqrt(var(style))`: epsilon where the authors' reference
    code puts it (see `keras_norms.ops.adaptive_instance_normalization`).
    The style may have other spatial sizes than the content (a style
    image of another resolution), but the same rank, batch size and
    channels. The layer has no weights and behaves the same in training
    and at inference; it is the core of arbitrary style transfer and of
    StyleGAN's style modulation (there with a learned style, see
    `ConditionalNormalization`).

    Args:
        axis: Integer, the channel axis of both inputs: `-1` for
            channels-last, `1` for channels-first.
        epsilon: Small float added to the content's variance, `> 0`
            (`1e-5`, the authors' default, not Keras' `1e-3`).
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: A list `[content, style]` of tensors of rank 3 to 5.
        training: Ignored (no batch statistics, no state).

    Reference:
        - [Huang & Belongie, 2017](https://arxiv.org/abs/1703.06868),
          equation 8.

    Examples:
        >>> layer = kn.AdaptiveInstanceNormalization()
        >>> content = np.array([[[1.0], [2.0], [3.0]]], "float32")  # N, T, C
        >>> style = np.array([[[10.0], [30.0]]], "float32")  # other T
        >>> y = layer([content, style])  # style mean 20, std 10
        >>> print(np.round(keras.ops.convert_to_numpy(y)[0, :, 0], 2))
        [ 7.75 20.   32.25]
    """

    def __init__(self, axis=-1, epsilon=1e-5, **kwargs):
        super().__init__(
            axis=axis, epsilon=epsilon, center=False, scale=False, **kwargs
        )
        # One output from two inputs: a content mask would have to be
        # combined with a style mask the statistics do not use.
        self.supports_masking = False

    def build(self, input_shape):
        content_shape, style_shape = self._input_pair(input_shape)
        super().build(content_shape)
        style_shape = tuple(style_shape)
        (channel,) = self._param_axes
        for what, axis in (("batch size", 0), ("channels", channel)):
            sizes = (content_shape[axis], style_shape[axis])
            if None not in sizes and sizes[0] != sizes[1]:
                raise ValueError(
                    f"AdaptiveInstanceNormalization needs a style with the "
                    f"{what} of the content (axis {axis}). Received: "
                    f"content_shape={tuple(content_shape)}, "
                    f"style_shape={style_shape}"
                )
        self._spatial_axes(style_shape)
        spec = keras.layers.InputSpec(
            ndim=self._ndim, axes={channel: content_shape[channel]}
        )
        self.input_spec = [spec, spec]

    def _input_pair(self, input_shape):
        """`(content_shape, style_shape)`, or a ValueError naming the call."""
        shapes = input_shape
        if isinstance(shapes, dict) or not isinstance(shapes, (list, tuple)):
            shapes = None
        elif len(shapes) != 2 or not all(
            isinstance(s, (list, tuple)) for s in shapes
        ):
            shapes = None
        if shapes is None:
            raise ValueError(
                "AdaptiveInstanceNormalization is called on a list of two "
                "tensors, `[content, style]`. Received: "
                f"input_shape={input_shape}"
            )
        content_shape, style_shape = (tuple(s) for s in shapes)
        if len(style_shape) != len(content_shape):
            raise ValueError(
                "AdaptiveInstanceNormalization needs a style of the "
                "content's rank. Received: "
                f"content_shape={content_shape}, style_shape={style_shape}"
            )
        return content_shape, style_shape

    def _layout(self, input_shape):
        return self._spatial_axes(input_shape)

    def _normalize(self, inputs, training, mask):
        content, style = inputs
        (axis,) = self._param_axes
        return kn_ops.adaptive_instance_normalization(
            content, style, axis, self.epsilon, dtype=self.compute_dtype
        )

    def compute_output_shape(self, input_shape):
        content_shape, _ = self._input_pair(input_shape)
        return content_shape

    def get_config(self):
        config = super().get_config()
        for name in _base.BASE_ARGUMENTS:
            if name not in ("axis", "epsilon"):
                config.pop(name)
        return config
