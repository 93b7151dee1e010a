"""A convolution that runs channels-first wherever the backend can."""


from keras import config
from keras import ops

from keras_norms import backend as kn_backend


def conv(x, kernel, strides=1, padding="valid", data_format=None,
         dilation_rate=1):
    """`keras.ops.conv` that runs channels-first wherever the backend can.

    Identical to `keras.ops.conv`, except where the backend has no
    channels-first convolution outside XLA (TensorFlow's CPU kernels with
    oneDNN off: `UnimplementedError: The Conv2D op currently only supports
    the NHWC tensor format on the CPU`): there a channels-first input is
    transposed to channels-last, convolved, and transposed back. Under XLA
    the transposes cost nothing; op by op they cost two copies.

    Args:
        x: Input of rank 3 to 5.
        kernel: Kernel `(*spatial, in_channels, out_channels)`.
        strides, padding, data_format, dilation_rate: As in
            `keras.ops.conv`.
    """
    data_format = data_format or config.image_data_format()
    if (
        data_format == "channels_last"
        or kn_backend.channels_first_conv_supported()
    ):
        return ops.conv(
            x, kernel, strides, padding, data_format, dilation_rate
        )
    rank = len(x.shape)
    to_last = [0, *range(2, rank), 1]
    to_first = [0, rank - 1, *range(1, rank - 1)]
    y = ops.conv(
        ops.transpose(x, to_last),
        kernel,
        strides,
        padding,
        "channels_last",
        dilation_rate,
    )
    return ops.transpose(y, to_first)
