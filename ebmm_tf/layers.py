"""Building blocks of the energy networks: writable layers and a LayerNorm with exact higher-order gradients.

Writable layers split their output channels into a *static* part (ordinary Keras variables, learned by
meta-training) and a *writable* part whose weights arrive as an explicit argument:
``layer(x, memory)`` where ``memory`` maps the layer's memory names to tensors. This is the functional
form of Appendix C's ``memory = Linear(...)`` / ``memory_part = Conv2D(dynamic_size, ...)``: the write rule
(eq. 4) produces new writable tensors and never assigns variables inside the differentiated loops.

Both parts are computed with a single matmul / convolution over the concatenated kernel
``[static | writable]`` (output channels in that order), which is mathematically identical to the paper's
``concat([static_part, memory_part], -1)`` and costs one kernel launch instead of two.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

__all__ = [
    "Linear",
    "Conv",
    "conv2d_same",
    "LayerNorm",
    "WritableLayer",
    "WritableDense",
    "WritableConv2D",
    "he_normal",
    "ResBlock",
    "inverse_softplus",
    "logit",
    "rescale_columns",
]


def inverse_softplus(y: float) -> float:
    """``x`` such that ``softplus(x) = y`` (y > 0): the raw value of a positive learned step size."""
    if y <= 0:
        raise ValueError(f"softplus values must be positive, got {y}")
    return float(y + np.log(-np.expm1(-y)))


def logit(p: float) -> float:
    """``x`` such that ``sigmoid(x) = p`` (0 < p < 1)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"a sigmoid value must be in (0, 1), got {p}")
    return float(np.log(p) - np.log1p(-p))


def rescale_columns(w, norm):
    """``w [D, K]`` with every column scaled to the Euclidean norm ``norm`` (no column may be zero): starting
    memories whose columns favour none of them through their length."""
    return w * (norm / tf.norm(w, axis=0, keepdims=True))


def _register_xla_dynamic_update_slice_gradient():
    """Gradient of ``XlaDynamicUpdateSlice``, which TensorFlow does not register (checked on TF 2.21).

    Under XLA (``tf.function(jit_compile=True)``) the gradient of ``Slice`` (hence of ``concat``, used by the
    writable layers) is an ``XlaDynamicUpdateSlice`` of the incoming gradient into zeros; the meta-gradient
    differentiates it again and fails with "gradient registry has no entry for: XlaDynamicUpdateSlice".
    ``out = input`` with ``update`` written at ``indices``, so ``d input`` is the incoming gradient
    with that window zeroed and ``d update`` is the window itself. Registered only if TensorFlow has none
    (docs/design.md, numerical facts).
    """
    try:
        from tensorflow.compiler.tf2xla.ops import gen_xla_ops
        from tensorflow.python.framework import ops as tf_ops
    except ImportError:  # pragma: no cover - private modules moved: XLA meta-gradients stay unavailable
        return
    try:
        tf_ops.gradient_registry.lookup("XlaDynamicUpdateSlice")
        return  # TensorFlow has one
    except LookupError:
        pass

    @tf.RegisterGradient("XlaDynamicUpdateSlice")
    def _xla_dynamic_update_slice_grad(op, grad):
        update, indices = op.inputs[1], op.inputs[2]
        grad_input = gen_xla_ops.xla_dynamic_update_slice(grad, tf.zeros_like(update), indices)
        grad_update = tf.slice(grad, indices, tf.shape(update))
        return grad_input, grad_update, None


_register_xla_dynamic_update_slice_gradient()


def _flip_transpose(kernel):
    """``[k, k, in, out] -> [k, k, out, in]``, spatially reversed: the kernel of the adjoint convolution."""
    return tf.transpose(tf.reverse(kernel, [0, 1]), [0, 1, 3, 2])


@tf.custom_gradient
def _conv_same_s1(x, kernel):
    """Stride-1 'SAME' convolution (odd kernel) whose gradients are themselves forward convolutions.

    For stride 1, 'SAME' padding and an odd kernel, the gradient with respect to the input is the same
    convolution of the output gradient with the spatially reversed, transposed kernel. TensorFlow's own gradient
    uses ``Conv2DBackpropInput``, which on CPU runs 2-3x slower than ``Conv2D`` on the small feature maps of the
    energy networks (4x4 to 16x16, docs/performance.md). Every derivative order goes through this function
    again (and through ``_conv_filter_grad``), so the nested write/read/meta gradients all use forward
    convolutions; the maths is unchanged (the meta-gradient finite-difference tests check all three orders).
    """
    y = tf.nn.conv2d(x, kernel, strides=1, padding="SAME")

    def grad(dy):
        return _conv_same_s1(dy, _flip_transpose(kernel)), _conv_filter_grad(x, dy, kernel.shape)

    return y, grad


def _conv_filter_grad(x, dy, kernel_shape):
    """``d kernel`` of ``_conv_same_s1`` (linear in ``x`` and in ``dy``), with gradients again in convolutions."""
    sizes = tf.constant([int(d) for d in kernel_shape], tf.int32)

    @tf.custom_gradient
    def filter_grad(x, dy):
        dk = tf.raw_ops.Conv2DBackpropFilter(
            input=x, filter_sizes=sizes, out_backprop=dy, strides=[1, 1, 1, 1], padding="SAME"
        )

        def grad(ddk):
            return _conv_same_s1(dy, _flip_transpose(ddk)), _conv_same_s1(x, ddk)

        return dk, grad

    return filter_grad(x, dy)


def conv2d_same(x, kernel, strides=1):
    """``tf.nn.conv2d(x, kernel, strides, "SAME")``, NHWC; stride-1 odd kernels use ``_conv_same_s1``."""
    kernel = tf.convert_to_tensor(kernel)
    k_h, k_w = kernel.shape[0], kernel.shape[1]
    if int(strides) == 1 and k_h is not None and k_w is not None and k_h % 2 == 1 and k_w % 2 == 1:
        return _conv_same_s1(x, kernel)
    return tf.nn.conv2d(x, kernel, strides=strides, padding="SAME")


def he_normal(seed=None):
    """He et al. (2015) initialisation, used for every kernel (paper, Appendix A)."""
    return keras.initializers.HeNormal(seed=seed)


@keras.saving.register_keras_serializable(package="ebmm_tf")
class Linear(keras.layers.Layer):
    """Static fully-connected layer ``x [B, in_features] -> [B, units]``, weights created eagerly.

    Keras' Dense builds lazily; creating the weights at construction keeps every energy network fully
    built after ``__init__`` (so ``.keras`` files load without a dummy call) and its memory spec static.
    """

    def __init__(self, in_features, units, use_bias=True, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.in_features, self.units, self.use_bias, self.seed = int(in_features), int(units), bool(use_bias), seed
        self.kernel = self.add_weight(name="kernel", shape=(self.in_features, self.units), initializer=he_normal(seed))
        self.bias = self.add_weight(name="bias", shape=(self.units,), initializer="zeros") if use_bias else None
        self.built = True

    def call(self, x):
        y = tf.matmul(x, self.kernel)
        return y + self.bias if self.use_bias else y

    def get_config(self):
        config = super().get_config()
        config.update(in_features=self.in_features, units=self.units, use_bias=self.use_bias, seed=self.seed)
        return config


@keras.saving.register_keras_serializable(package="ebmm_tf")
class Conv(keras.layers.Layer):
    """Static 2-D convolution, NHWC, 'SAME' padding, weights created eagerly (see ``Linear``)."""

    def __init__(self, in_channels, filters, kernel_size=3, strides=1, use_bias=True, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.in_channels, self.filters = int(in_channels), int(filters)
        self.kernel_size, self.strides, self.use_bias, self.seed = int(kernel_size), int(strides), bool(use_bias), seed
        self.kernel = self.add_weight(name="kernel", shape=self._kernel_shape(), initializer=he_normal(seed))
        self.bias = self.add_weight(name="bias", shape=(self.filters,), initializer="zeros") if use_bias else None
        self.built = True

    def _kernel_shape(self):
        k = self.kernel_size
        return (k, k, self.in_channels, self.filters)

    def call(self, x):
        y = conv2d_same(x, self.kernel, self.strides)
        return y + self.bias if self.use_bias else y

    def get_config(self):
        config = super().get_config()
        config.update(
            in_channels=self.in_channels,
            filters=self.filters,
            kernel_size=self.kernel_size,
            strides=self.strides,
            use_bias=self.use_bias,
            seed=self.seed,
        )
        return config


@keras.saving.register_keras_serializable(package="ebmm_tf")
class LayerNorm(keras.layers.Layer):
    """Layer normalisation whose mean and variance are computed directly.

    ``y = (x - mean(x)) / sqrt(var(x) + eps) * scale + offset``, statistics over ``axes`` (default: every
    non-batch axis, as Sonnet 1's LayerNorm that the paper used), ``scale`` / ``offset`` per channel (last axis).

    Why not ``keras.layers.LayerNormalization``: it calls ``tf.nn.moments``, whose gradient registration
    stops the gradient through the mean, so the second- and third-order derivatives that meta-training
    needs (gradient of a gradient of the energy) come out wrong (we measured a 0.25 relative error of
    the meta-gradient). ``tests/test_layers.py`` checks this layer's higher-order gradients against finite
    differences and documents Keras' error (docs/design.md, numerical facts).
    """

    def __init__(self, axes=None, epsilon=1e-5, channels=None, **kwargs):
        super().__init__(**kwargs)
        self.axes = None if axes is None else tuple(int(a) for a in axes)
        self.epsilon = float(epsilon)
        self.channels = channels
        if channels is not None:
            self._create(channels)

    def _create(self, channels):
        self.scale = self.add_weight(name="scale", shape=(channels,), initializer="ones")
        self.offset = self.add_weight(name="offset", shape=(channels,), initializer="zeros")
        self.channels = int(channels)
        self.built = True

    def build(self, input_shape):
        if self.channels is None:
            self._create(int(input_shape[-1]))

    def call(self, x):
        rank = len(x.shape)
        axes = self.axes if self.axes is not None else tuple(range(1, rank))
        axes = tuple(sorted(a % rank for a in axes))
        size = math.prod(x.shape[a] for a in axes) if all(x.shape[a] is not None for a in axes) else None
        if axes == tuple(range(1, rank)) and size is not None:
            # Statistics over every non-batch axis, on a [batch, features] view. Same maths, but the gradients
            # of the 2-D reductions are far cheaper than those of a reduction over 3 axes of a 4-D tensor (whose
            # gradient tiles and divides a full-size tensor); the meta-gradient differentiates them 3 times.
            # docs/performance.md measured the third-order gradient of this form 3x faster.
            flat = tf.reshape(x, [-1, size])
            mean = tf.reduce_sum(flat, axis=1, keepdims=True) * (1.0 / size)
            centred = flat - mean
            var = tf.reduce_sum(tf.square(centred), axis=1, keepdims=True) * (1.0 / size)
            normed = tf.reshape(centred * tf.math.rsqrt(var + self.epsilon), tf.shape(x))
            return normed * self.scale + self.offset
        mean = tf.reduce_mean(x, axis=axes, keepdims=True)
        centred = x - mean
        var = tf.reduce_mean(tf.square(centred), axis=axes, keepdims=True)
        return centred * tf.math.rsqrt(var + self.epsilon) * self.scale + self.offset

    def get_config(self):
        config = super().get_config()
        config.update(axes=self.axes, epsilon=self.epsilon, channels=self.channels)
        return config


class WritableLayer(keras.layers.Layer):
    """Base class of layers with a writable part. Subclasses define ``memory_shapes``.

    The memory names of a layer are ``f"{layer.name}/kernel"`` and ``f"{layer.name}/bias"``; an energy
    network's memory is the union over its writable layers (see ``EnergyNetwork.memory_spec``).
    """

    def memory_shapes(self) -> dict[str, tuple[int, ...]]:
        raise NotImplementedError

    def memory_fan_in(self) -> int:
        raise NotImplementedError

    def memory_initializer(self, name):
        """Initializer of ``theta_bar`` for memory tensor ``name``, or ``None`` for the memory's default."""
        return None

    @property
    def memory_names(self) -> list[str]:
        return list(self.memory_shapes())

    def memory_size(self) -> int:
        return sum(math.prod(s) for s in self.memory_shapes().values())

    def memory_tensors(self, memory) -> list:
        """This layer's tensors of ``memory`` (a dict over all memory names), in ``memory_names`` order."""
        return self._memory(memory)

    def _memory(self, memory):
        if memory is None:
            raise ValueError(f"Writable layer {self.name!r} needs its memory tensors ({self.memory_names}).")
        try:
            return [memory[n] for n in self.memory_names]
        except KeyError as err:
            raise KeyError(
                f"Memory for writable layer {self.name!r} is missing {err}; got keys {sorted(memory)}."
            ) from None


@keras.saving.register_keras_serializable(package="ebmm_tf")
class WritableDense(WritableLayer):
    """Fully-connected layer with ``static_units`` static and ``writable_units`` writable outputs.

    ``y = x @ [K_static | K_mem] + [b_static | b_mem]``, shapes: ``x [B, in_features]`` -> ``y [B, static +
    writable]``. Memory: ``kernel [in_features, writable_units]`` and ``bias [writable_units]``
    (``in_features * writable_units + writable_units`` floats; C.1's ``Linear(128, 63)`` holds 8,127).
    ``static_units = 0`` gives a purely writable layer.
    """

    def __init__(
        self,
        in_features,
        static_units,
        writable_units,
        use_bias=True,
        seed=None,
        memory_init_std=None,
        memory_init_equal_norm=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if memory_init_std is not None and not (math.isfinite(memory_init_std) and memory_init_std > 0):
            raise ValueError(f"memory_init_std must be a positive number or None, got {memory_init_std}")
        if memory_init_equal_norm and memory_init_std is None:
            raise ValueError("memory_init_equal_norm needs memory_init_std")
        self.memory_init_std = None if memory_init_std is None else float(memory_init_std)
        self.memory_init_equal_norm = bool(memory_init_equal_norm)
        if writable_units < 1:
            raise ValueError(f"writable_units must be >= 1, got {writable_units}")
        if static_units < 0:
            raise ValueError(f"static_units must be >= 0, got {static_units}")
        self.in_features = int(in_features)
        self.static_units = int(static_units)
        self.writable_units = int(writable_units)
        self.use_bias = bool(use_bias)
        self.seed = seed
        if self.static_units:
            self.kernel = self.add_weight(
                name="kernel", shape=(self.in_features, self.static_units), initializer=he_normal(seed)
            )
            self.bias = self.add_weight(name="bias", shape=(self.static_units,), initializer="zeros")
        self.built = True

    def memory_shapes(self):
        shapes = {f"{self.name}/kernel": (self.in_features, self.writable_units)}
        if self.use_bias:
            shapes[f"{self.name}/bias"] = (self.writable_units,)
        return shapes

    def memory_fan_in(self):
        return self.in_features

    def memory_initializer(self, name):
        """``memory_init_std`` (if set): ``theta_bar``'s kernel starts normal with that deviation; with
        ``memory_init_equal_norm`` each of its columns is then rescaled to the norm ``memory_init_std *
        sqrt(in_features)`` (the columns' expected norm), so no column is shorter than the others."""
        if self.memory_init_std is None or name != f"{self.name}/kernel":
            return None
        normal = keras.initializers.RandomNormal(stddev=self.memory_init_std, seed=self.seed)
        if not self.memory_init_equal_norm:
            return normal
        target = self.memory_init_std * math.sqrt(self.in_features)

        def equal_norm(shape, dtype=None):
            return rescale_columns(normal(shape, dtype=dtype), target)

        return equal_norm

    def call(self, x, memory=None):
        parts = self._memory(memory)
        kernel, bias = parts[0], (parts[1] if self.use_bias else None)
        if self.static_units:
            kernel = tf.concat([self.kernel, kernel], axis=-1)
            bias = (
                tf.concat([self.bias, bias], axis=-1)
                if bias is not None
                else tf.pad(self.bias, [[0, self.writable_units]])
            )
        y = tf.matmul(x, kernel)
        return y + bias if bias is not None else y

    def get_config(self):
        config = super().get_config()
        config.update(
            in_features=self.in_features,
            static_units=self.static_units,
            writable_units=self.writable_units,
            use_bias=self.use_bias,
            seed=self.seed,
            memory_init_std=self.memory_init_std,
            memory_init_equal_norm=self.memory_init_equal_norm,
        )
        return config


@keras.saving.register_keras_serializable(package="ebmm_tf")
class WritableConv2D(WritableLayer):
    """2-D convolution (NHWC, 'SAME' padding) with ``static_filters`` static and ``writable_filters``
    writable output channels: C.3's ``Conv2D(static_size)`` and ``memory_part = Conv2D(dynamic_size)``.

    Shapes: ``x [B, H, W, in_channels]`` -> ``[B, ceil(H/stride), ceil(W/stride), static + writable]``.
    Memory: ``kernel [k, k, in_channels, writable_filters]`` and ``bias [writable_filters]``.
    """

    def __init__(
        self,
        in_channels,
        static_filters,
        writable_filters,
        kernel_size=3,
        strides=1,
        use_bias=True,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if writable_filters < 1:
            raise ValueError(f"writable_filters must be >= 1, got {writable_filters}")
        if static_filters < 0:
            raise ValueError(f"static_filters must be >= 0, got {static_filters}")
        self.in_channels = int(in_channels)
        self.static_filters = int(static_filters)
        self.writable_filters = int(writable_filters)
        self.kernel_size = int(kernel_size)
        self.strides = int(strides)
        self.use_bias = bool(use_bias)
        self.seed = seed
        k = self.kernel_size
        if self.static_filters:
            self.kernel = self.add_weight(
                name="kernel", shape=(k, k, self.in_channels, self.static_filters), initializer=he_normal(seed)
            )
            self.bias = self.add_weight(name="bias", shape=(self.static_filters,), initializer="zeros")
        self.built = True

    def memory_shapes(self):
        k = self.kernel_size
        shapes = {f"{self.name}/kernel": (k, k, self.in_channels, self.writable_filters)}
        if self.use_bias:
            shapes[f"{self.name}/bias"] = (self.writable_filters,)
        return shapes

    def memory_fan_in(self):
        return self.kernel_size * self.kernel_size * self.in_channels

    def call(self, x, memory=None):
        parts = self._memory(memory)
        kernel, bias = parts[0], (parts[1] if self.use_bias else None)
        if self.static_filters:
            kernel = tf.concat([self.kernel, kernel], axis=-1)
            bias = (
                tf.concat([self.bias, bias], axis=-1)
                if bias is not None
                else tf.pad(self.bias, [[0, self.writable_filters]])
            )
        y = conv2d_same(x, kernel, self.strides)
        return y + bias if bias is not None else y

    def get_config(self):
        config = super().get_config()
        config.update(
            in_channels=self.in_channels,
            static_filters=self.static_filters,
            writable_filters=self.writable_filters,
            kernel_size=self.kernel_size,
            strides=self.strides,
            use_bias=self.use_bias,
            seed=self.seed,
        )
        return config


@keras.saving.register_keras_serializable(package="ebmm_tf")
class ResBlock(keras.layers.Layer):
    """Static residual block: ``tanh(LN(conv3x3(tanh(LN(conv3x3_s(x))))) + pool_s(conv1x1(x)))``.

    ``x [B, H, W, in_channels] -> [B, ceil(H/s), ceil(W/s), channels]``. The shortcut is average-pooled
    (3x3, stride s) *before* the 1x1 convolution, which equals pooling after it (both are linear and the
    pooling weights sum to one) at a fraction of the cost.
    """

    def __init__(self, in_channels, channels, stride=2, **kwargs):
        super().__init__(**kwargs)
        self.in_channels, self.channels, self.stride = int(in_channels), int(channels), int(stride)
        dt = self.dtype_policy
        self.conv1 = self._first_conv(dt)
        self.norm1 = LayerNorm(channels=channels, name="norm1", dtype=dt)
        self.conv2 = Conv(channels, channels, 3, 1, name="conv2", dtype=dt)
        self.norm2 = LayerNorm(channels=channels, name="norm2", dtype=dt)
        self.shortcut = Conv(in_channels, channels, 1, 1, name="shortcut", dtype=dt)
        self.built = True

    def _first_conv(self, dtype):
        """The 3x3 convolution with the block's stride (a transposed one in ``baselines.networks.UpResBlock``)."""
        return Conv(self.in_channels, self.channels, 3, self.stride, name="conv1", dtype=dtype)

    def _shortcut_input(self, x):
        """What the 1x1 shortcut convolution sees: ``x`` resampled to the output's spatial size."""
        return tf.nn.avg_pool2d(x, 3, self.stride, "SAME") if self.stride > 1 else x

    def call(self, x):
        y = tf.tanh(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        return tf.tanh(y + self.shortcut(self._shortcut_input(x)))

    def get_config(self):
        config = super().get_config()
        config.update(in_channels=self.in_channels, channels=self.channels, stride=self.stride)
        return config
