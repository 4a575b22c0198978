"""Encoder / decoder networks shared by the learned baselines (paper Section 4: "all models use the same
encoder (and decoder, when applicable) networks"; Appendix C.2: "The encoder module is also shared with all
baseline models together with its transposed version as a decoder").

* :class:`ConvAutoEncoder` (images ``[B, H, W, C]``): the C.2 encoder, ``ResBlock(c, s2) -> ResBlock(2c, s2)
  -> ResBlock(3c, s2) -> flatten -> Linear(encoding_size) -> LayerNorm``, and its transposed decoder,
  ``Linear(flat) -> tanh -> UpResBlock(2c) -> UpResBlock(c) -> UpResBlock(c) -> conv3x3(C)``, each
  ``UpResBlock`` undoing one stride-2 ``ResBlock`` (transposed 3x3 convolution with stride 2 in place of the
  strided convolution, nearest-neighbour upsampling in place of the average-pooled shortcut) and restoring the
  encoder's spatial sizes exactly (32 -> 16 -> 8 -> 4 -> 8 -> 16 -> 32; also odd sizes such as 28 -> 14 -> 7
  -> 4 -> 7 -> 14 -> 28).
* :class:`DenseAutoEncoder` (vectors ``[B, D]``, binary strings A.2): ``Linear(hidden) -> tanh ->
  Linear(encoding_size) -> LayerNorm`` and the mirrored ``Linear(hidden) -> tanh -> Linear(D)``.

Both expose ``pattern_shape``, ``encoding_size``, ``encode(x) -> [B, encoding_size]`` and
``decode(code) -> [B, *pattern_shape]`` *logits* (unbounded; the baseline models squash them into the data
range). Every weight is created in ``__init__`` (He initialisation, Appendix A) so that ``.keras`` files load
without a dummy call. The gin factories of the same names (``@ConvAutoEncoder``, ``@DenseAutoEncoder``) are
called with ``pattern_shape``, like ``Experiment.energy``.
"""

from __future__ import annotations

import inspect

import keras
import tensorflow as tf

import gin
from ebmm_tf.layers import Conv, LayerNorm, Linear, ResBlock

__all__ = ["ConvAutoEncoder", "ConvTranspose", "DenseAutoEncoder", "UpResBlock", "gin_factory"]


def gin_factory(target, name=None):
    """A gin configurable that builds the plain Keras class ``target`` (see ``ebmm_tf.configurables``).

    Keras inspects ``__init__``'s arguments when it deserializes a model, so the classes stay undecorated and
    gin gets a factory with the class' exact signature (a misspelt binding fails at parse time).
    """
    signature = inspect.signature(target)
    params = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]

    def build(*args, **kwargs):
        return target(*args, **kwargs)

    build.__name__ = build.__qualname__ = name or target.__name__
    build.__doc__ = target.__doc__
    build.__signature__ = signature.replace(parameters=params)
    return gin.external_configurable(build, name=name or target.__name__, module="ebmm_tf.baselines")


@keras.saving.register_keras_serializable(package="ebmm_tf")
class ConvTranspose(Conv):
    """Transposed 2-D convolution, NHWC, 'SAME' padding, weights created eagerly (``Conv``'s arguments).

    ``x [B, h, w, in_channels] -> [B, out_h, out_w, filters]`` with ``output_size = (out_h, out_w)`` and
    ``ceil(out / strides) == h``: the layer inverts the shape change of a strided 'SAME' convolution exactly.
    """

    def __init__(self, in_channels, filters, output_size, kernel_size=3, strides=2, use_bias=True, seed=None, **kwargs):
        super().__init__(in_channels, filters, kernel_size, strides, use_bias, seed, **kwargs)
        self.output_size = tuple(int(s) for s in output_size)

    def _kernel_shape(self):
        # conv2d_transpose kernels are [k, k, filters, in_channels]; HeNormal takes its fan-in from that shape.
        k = self.kernel_size
        return (k, k, self.filters, self.in_channels)

    def call(self, x):
        h, w = self.output_size
        shape = tf.stack([tf.shape(x)[0], h, w, self.filters])
        y = tf.nn.conv2d_transpose(x, self.kernel, shape, strides=self.strides, padding="SAME")
        y = tf.ensure_shape(y, [None, h, w, self.filters])
        return y + self.bias if self.use_bias else y

    def get_config(self):
        config = super().get_config()
        config.update(output_size=list(self.output_size))
        return config


@keras.saving.register_keras_serializable(package="ebmm_tf")
class UpResBlock(ResBlock):
    """Transposed ``ResBlock``: ``tanh(LN(conv3x3(tanh(LN(convT3x3_s(x))))) + conv1x1(up_s(x)))``.

    ``x [B, h, w, in_channels] -> [B, out_h, out_w, channels]`` (``output_size = (out_h, out_w)``); ``up_s`` is
    nearest-neighbour upsampling to ``output_size`` (the transpose of the encoder's average-pooled shortcut).
    """

    def __init__(self, in_channels, channels, output_size, stride=2, **kwargs):
        self.output_size = tuple(int(s) for s in output_size)  # read by _first_conv during ResBlock.__init__
        super().__init__(in_channels, channels, stride, **kwargs)

    def _first_conv(self, dtype):
        size = self.output_size
        return ConvTranspose(self.in_channels, self.channels, size, 3, self.stride, name="conv1", dtype=dtype)

    def _shortcut_input(self, x):
        return tf.image.resize(x, self.output_size, method="nearest")

    def get_config(self):
        config = super().get_config()
        config.update(output_size=list(self.output_size))
        return config


def _down(size):
    return -(-size // 2)


@keras.saving.register_keras_serializable(package="ebmm_tf")
class ConvAutoEncoder(keras.Model):
    """The C.2 ResNet encoder with its transposed decoder (images ``[B, H, W, C]``).

    Args:
      pattern_shape: ``(H, W, C)``.
      channels: ``c`` of the encoder's ResBlocks ``(c, 2c, 3c)`` (paper: 32).
      encoding_size: width of the code (paper: 256, the DAE's "bottleneck of 256 hidden units", A.3).
    """

    def __init__(self, pattern_shape=(32, 32, 1), channels=32, encoding_size=256, **kwargs):
        kwargs.setdefault("name", "conv_autoencoder")
        super().__init__(**kwargs)
        self.pattern_shape = tuple(int(d) for d in pattern_shape)
        if len(self.pattern_shape) != 3:
            raise ValueError(f"ConvAutoEncoder needs image patterns (H, W, C), got {self.pattern_shape}")
        self.channels, self.encoding_size = int(channels), int(encoding_size)
        dt = self.dtype_policy
        h, w, c = self.pattern_shape
        sizes = [(h, w)]
        widths = [c]
        self.encoder_blocks = []
        for i, mult in enumerate((1, 2, 3)):
            self.encoder_blocks.append(ResBlock(widths[-1], channels * mult, 2, name=f"encoder_block{i + 1}", dtype=dt))
            widths.append(channels * mult)
            sizes.append((_down(sizes[-1][0]), _down(sizes[-1][1])))
        self._code_shape = (sizes[-1][0], sizes[-1][1], widths[-1])  # e.g. (4, 4, 3c) for 32x32
        flat = sizes[-1][0] * sizes[-1][1] * widths[-1]
        self.encoder_linear = Linear(flat, encoding_size, name="encoder_linear", dtype=dt)
        self.encoder_norm = LayerNorm(channels=encoding_size, name="encoder_norm", dtype=dt)
        # transposed decoder: widths 3c -> 2c -> c -> c, sizes back up the encoder's ladder
        self.decoder_linear = Linear(encoding_size, flat, name="decoder_linear", dtype=dt)
        out_widths = (2 * channels, channels, channels)
        self.decoder_blocks = []
        in_ch = widths[-1]
        for i, (size, width) in enumerate(zip(reversed(sizes[:-1]), out_widths)):
            self.decoder_blocks.append(UpResBlock(in_ch, width, size, 2, name=f"decoder_block{i + 1}", dtype=dt))
            in_ch = width
        self.decoder_out = Conv(in_ch, c, 3, 1, name="decoder_out", dtype=dt)
        self.built = True

    def encode(self, x):
        """``x [B, H, W, C] -> code [B, encoding_size]``."""
        for block in self.encoder_blocks:
            x = block(x)
        return self.encoder_norm(self.encoder_linear(tf.reshape(x, [tf.shape(x)[0], -1])))

    def decode(self, code):
        """``code [B, encoding_size] -> logits [B, H, W, C]``."""
        y = tf.tanh(self.decoder_linear(code))
        y = tf.reshape(y, [-1, *self._code_shape])
        for block in self.decoder_blocks:
            y = block(y)
        return self.decoder_out(y)

    def call(self, x):
        return self.decode(self.encode(x))

    def get_config(self):
        config = super().get_config()
        config.update(pattern_shape=list(self.pattern_shape), channels=self.channels, encoding_size=self.encoding_size)
        return config


@keras.saving.register_keras_serializable(package="ebmm_tf")
class DenseAutoEncoder(keras.Model):
    """A fully-connected encoder / mirrored decoder for vector patterns ``[B, D]`` (binary strings, A.2).

    ``encode``: ``Linear(hidden_size) -> tanh -> Linear(encoding_size) -> LayerNorm``;
    ``decode``: ``Linear(hidden_size) -> tanh -> Linear(D)`` (logits).
    """

    def __init__(self, pattern_shape=(128,), hidden_size=512, encoding_size=256, **kwargs):
        kwargs.setdefault("name", "dense_autoencoder")
        super().__init__(**kwargs)
        self.pattern_shape = tuple(int(d) for d in pattern_shape)
        if len(self.pattern_shape) != 1:
            raise ValueError(f"DenseAutoEncoder needs vector patterns (D,), got {self.pattern_shape}")
        self.hidden_size, self.encoding_size = int(hidden_size), int(encoding_size)
        d = self.pattern_shape[0]
        dt = self.dtype_policy
        self.encoder_hidden = Linear(d, hidden_size, name="encoder_hidden", dtype=dt)
        self.encoder_linear = Linear(hidden_size, encoding_size, name="encoder_linear", dtype=dt)
        self.encoder_norm = LayerNorm(channels=encoding_size, name="encoder_norm", dtype=dt)
        self.decoder_hidden = Linear(encoding_size, hidden_size, name="decoder_hidden", dtype=dt)
        self.decoder_out = Linear(hidden_size, d, name="decoder_out", dtype=dt)
        self.built = True

    def encode(self, x):
        return self.encoder_norm(self.encoder_linear(tf.tanh(self.encoder_hidden(x))))

    def decode(self, code):
        return self.decoder_out(tf.tanh(self.decoder_hidden(code)))

    def call(self, x):
        return self.decode(self.encode(x))

    def get_config(self):
        config = super().get_config()
        config.update(
            pattern_shape=list(self.pattern_shape), hidden_size=self.hidden_size, encoding_size=self.encoding_size
        )
        return config


ConvAutoEncoderFactory = gin_factory(ConvAutoEncoder)
DenseAutoEncoderFactory = gin_factory(DenseAutoEncoder)
