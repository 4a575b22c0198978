"""Energy networks of the paper's Appendix C, each a Keras model with one scalar energy per pattern.

Every network is called as ``energy_net(x, memory=weights)`` where ``weights`` maps the memory names of
its writable layers (``network.memory_spec()``) to tensors. Output: ``[batch]`` energies.

Readings of the appendix pseudocode (its evident typos are implemented by their evident intent):

* ``concat(a, b) @ W`` is computed as ``a @ W_a + b @ W_b`` (identical maths). Terms that depend only on the
  input ``x`` are computed once, outside the hop loop, and the state-dependent terms are skipped at the
  first hop where the state is zero. This is the same function, computed with fewer flops.
* C.2: ``state = u * c + (1 - u) * c`` is read as ``state = u * c + (1 - u) * state`` (the GRU-style update
  of C.1 and C.3); ``Linear(input_size, dynamic_size)`` takes the encoder output (256 features).
* C.3 / C.4: the energy head (``Linear(1024)``, ``tanh``, ``Linear(1)``) stands *after* the hop loop and
  reads the flattened final hidden state; the residual ``x += z`` of ``resblock_bottleneck`` applies with
  and without downscaling (the shortcut is only average-pooled when downscaling).
* ``ResBlock(c, kernel=3, stride=s, downscale=...)`` (static, not given in the appendix):
  ``tanh(LN(conv3x3(tanh(LN(conv3x3_s(x))))) + pool_s(conv1x1(x)))`` where ``pool_s`` is a 3x3 average pool
  with stride ``s`` when ``s > 1``; the ``downscale`` flag is folded into the stride.
* C.5: the second writable convolution of the memory block has stride 1 (``y += x`` needs equal shapes) and
  ``nonlinear`` is ``tanh``.
* LayerNorm normalises over all non-batch axes (see ``layers.LayerNorm``). No bias on the output layer
  (a constant offset never receives a gradient: it changes neither grad_x E nor the write).
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from ebmm_tf.layers import (
    Conv,
    LayerNorm,
    Linear,
    ResBlock,
    WritableConv2D,
    WritableDense,
    WritableLayer,
    inverse_softplus,
    rescale_columns,
)

__all__ = [
    "EnergyNetwork",
    "GatedRNNEnergy",
    "SlotEnergy",
    "ResNetFCEnergy",
    "ResNetConvEnergy",
    "ResNetLowerConvEnergy",
    "ResBlock",
    "imagenet_conv_energy",
]


class EnergyNetwork(keras.Model):
    """Base class: ``call(x, memory) -> [batch]`` energies; ``memory_spec()`` names the writable tensors.

    Subclasses create every weight in ``__init__`` (the pattern shape is a constructor argument), so a
    network is fully built once constructed and its memory spec is static.
    """

    def __init__(self, pattern_shape, **kwargs):
        super().__init__(**kwargs)
        self.pattern_shape = tuple(int(d) for d in pattern_shape)

    def writable_layers(self) -> list[WritableLayer]:
        """Writable layers sorted by name: the order of the learned per-layer write rates."""
        layers = [layer for layer in self._flatten_layers(include_self=False) if isinstance(layer, WritableLayer)]
        return sorted(layers, key=lambda layer: layer.name)

    def memory_spec(self) -> dict[str, tuple[tuple[int, ...], int]]:
        """``{memory name: (shape, fan_in)}`` over all writable layers, in layer order."""
        spec = {}
        for layer in self.writable_layers():
            for name, shape in layer.memory_shapes().items():
                if name in spec:
                    raise ValueError(f"Duplicate memory name {name!r}: give writable layers unique names.")
                spec[name] = (shape, layer.memory_fan_in())
        return spec

    def memory_size(self) -> int:
        """Number of writable floats: the paper's "memory size"."""
        return sum(math.prod(shape) for shape, _ in self.memory_spec().values())

    @property
    def starting_memory_size(self):
        """How many training patterns ``starting_memory(patterns)`` needs (``Experiment.memory_from_data``), or
        ``None`` for a network whose starting memory is not drawn from data (the default)."""
        return None

    def _check_input(self, x):
        if tuple(x.shape[1:]) != self.pattern_shape:
            raise ValueError(
                f"{type(self).__name__} expects patterns of shape [batch, {', '.join(map(str, self.pattern_shape))}], "
                f"got {list(x.shape)}"
            )

    def get_config(self):
        config = super().get_config()
        config["pattern_shape"] = list(self.pattern_shape)
        return config


def _gated_update(u, candidate, state):
    return u * candidate + (1.0 - u) * state


def _finite_center(value):
    """``input_center`` as a float; a non-finite centre is an error."""
    center = float(value)
    if not math.isfinite(center):
        raise ValueError(f"input_center must be finite, got {value}")
    return center


def _flat_centred(x, size, center):
    """``x`` flattened to ``[B, size]``, minus ``center`` (the pixel memories' input)."""
    x = tf.reshape(x, [-1, size])
    return x - tf.cast(center, x.dtype) if center else x


@keras.saving.register_keras_serializable(package="ebmm_tf")
class GatedRNNEnergy(EnergyNetwork):
    """C.1: gated RNN energy for binary strings (Table 1).

    ``x [B, input_size]``; ``state_0 = 0``; for each of ``hops`` steps, with ``z = [x, state]``:
    ``c = tanh([memory(x), static(z)])``, ``u = sigmoid(gate(z))``, ``state = u * c + (1 - u) * state``;
    ``E = w . state`` (no bias). Memory: ``memory`` = ``Linear(input_size, dynamic_size)``, by default
    ``dynamic_size = (input_size - 1) // 2`` = 63, i.e. 8,127 writable floats for 128-bit strings (within
    the 8,256-float Hopfield budget).

    Images: with ``pattern_shape`` (e.g. ``(32, 32, 1)``) and ``input_size=None``, patterns are flattened to
    ``input_size = prod(pattern_shape)`` values, so the memory is a writable linear map of the raw pixels (an
    image memory whose write, per pattern, is the outer product of the pattern with the backpropagated error,
    like a Hebbian rule's).

    ``input_center`` (default 0): the network reads ``x - input_center``. The layers' biases make it the same
    family of functions, but not the same *write*: the energy term's gradient in the memory kernel is the outer
    product of the input with the error at the memory units, so with ``{0, 1}`` images and no centring the
    background pixels' rows get none of it. Centring at the mean pixel value (about 0.08 for 32x32 Omniglot) makes
    the energy term's write a covariance rule, the classical choice for sparse patterns; at 0.5 (the ``+-1/2``
    coding of the binary strings) the writes of different batches become nearly the same (docs/results.md).

    ``smoothness_init`` (default 0: off; images ``[H, W, C]`` only) adds a static quadratic image prior, a
    Gaussian Markov random field on neighbouring pixels:
    ``E += softplus(s) / 2 * sum_{i ~ j} (x_i - x_j)^2`` over horizontal and vertical neighbours of each channel,
    with ``softplus(s) = smoothness_init`` at the start and ``s`` meta-learned like every static weight. Its
    descent is a diffusion that smooths noise. It holds nothing about the stored batch: it only gives the read a
    direction that lowers the error of natural images from the first step, where a random network's gradient
    raises it and meta-training then shrinks the read to the identity (docs/results.md, CIFAR-10). Stable plain
    descent needs ``read step * softplus(s) < 1/4`` (the 4-neighbour Laplacian's eigenvalues are below 8); with the
    read's Nesterov momentum ``psi`` the bound is ``(1 + psi) / (4 (1 + 2 psi))``, 3/16 at ``psi = 0.5``.
    """

    def __init__(
        self,
        input_size=128,
        hidden_size=1024,
        hops=5,
        dynamic_size=None,
        pattern_shape=None,
        input_center=0.0,
        smoothness_init=0.0,
        **kwargs,
    ):
        kwargs.setdefault("name", "gated_rnn_energy")
        if pattern_shape is not None and input_size is None:
            input_size = math.prod(int(d) for d in pattern_shape)
        if pattern_shape is None:
            pattern_shape = (input_size,)
        if math.prod(int(d) for d in pattern_shape) != input_size:
            raise ValueError(f"pattern_shape {tuple(pattern_shape)} does not match input_size {input_size}")
        super().__init__(pattern_shape=pattern_shape, **kwargs)
        dynamic_size = (input_size - 1) // 2 if dynamic_size is None else int(dynamic_size)
        if not 0 < dynamic_size < hidden_size:
            raise ValueError(f"dynamic_size must be in (0, hidden_size={hidden_size}), got {dynamic_size}")
        if hops < 1:
            raise ValueError(f"hops must be >= 1, got {hops}")
        self.input_size, self.hidden_size = int(input_size), int(hidden_size)
        self.hops, self.dynamic_size = int(hops), dynamic_size
        self.input_center = _finite_center(input_center)
        self.smoothness_init = float(smoothness_init)
        if not (math.isfinite(self.smoothness_init) and self.smoothness_init >= 0.0):
            raise ValueError(f"smoothness_init must be finite and >= 0, got {smoothness_init}")
        if self.smoothness_init and len(self.pattern_shape) != 3:
            raise ValueError(f"smoothness_init needs image patterns [H, W, C], got pattern_shape {self.pattern_shape}")
        static_size = hidden_size - dynamic_size
        dt = self.dtype_policy
        self.memory = WritableDense(input_size, 0, dynamic_size, name="memory", dtype=dt)
        self.static_x = Linear(input_size, static_size, name="static_x", dtype=dt)
        self.static_h = Linear(hidden_size, static_size, use_bias=False, name="static_h", dtype=dt)
        self.gate_x = Linear(input_size, hidden_size, name="gate_x", dtype=dt)
        self.gate_h = Linear(hidden_size, hidden_size, use_bias=False, name="gate_h", dtype=dt)
        self.out = Linear(hidden_size, 1, use_bias=False, name="energy", dtype=dt)
        if self.smoothness_init:
            self.smoothness_raw = self.add_weight(
                name="smoothness",
                shape=(),
                initializer=keras.initializers.Constant(inverse_softplus(self.smoothness_init)),
            )
        self.built = True

    def smoothness_energy(self, images):
        """``softplus(s) / 2 *`` the sum of squared neighbour differences of ``images [B, H, W, C]``: ``[B]``."""
        dy = images[:, 1:] - images[:, :-1]
        dx = images[:, :, 1:] - images[:, :, :-1]
        total = tf.reduce_sum(tf.square(dy), axis=[1, 2, 3]) + tf.reduce_sum(tf.square(dx), axis=[1, 2, 3])
        return 0.5 * tf.nn.softplus(tf.cast(self.smoothness_raw, images.dtype)) * total

    def call(self, x, memory=None):
        self._check_input(x)
        prior = self.smoothness_energy(x) if self.smoothness_init else None
        x = _flat_centred(x, self.input_size, self.input_center)
        dynamic = self.memory(x, memory)  # depends on x only: once, outside the hop loop
        static_x = self.static_x(x)
        gate_x = self.gate_x(x)
        state = None
        for _ in range(self.hops):
            if state is None:  # state_0 = 0: the state terms vanish
                static, gate = static_x, gate_x
                c = tf.tanh(tf.concat([dynamic, static], axis=-1))
                state = tf.sigmoid(gate) * c
            else:
                static = static_x + self.static_h(state)
                gate = gate_x + self.gate_h(state)
                c = tf.tanh(tf.concat([dynamic, static], axis=-1))
                state = _gated_update(tf.sigmoid(gate), c, state)
        energy = tf.squeeze(self.out(state), axis=-1)
        return energy if prior is None else energy + prior

    def get_config(self):
        config = super().get_config()
        config.update(
            input_size=self.input_size,
            hidden_size=self.hidden_size,
            hops=self.hops,
            dynamic_size=self.dynamic_size,
            input_center=self.input_center,
            smoothness_init=self.smoothness_init,
        )
        return config

    def widened(self, hidden_size, seed=None):
        """A copy with ``hidden_size`` units (more than this one's) that computes **the same energy**.

        The state becomes ``[dynamic | static | new static units]``. The new units get freshly initialised
        incoming weights (``static_x``, ``gate_x``: He normal as at construction, zero biases; ``static_h``,
        ``gate_h``: the columns that drive them), and every weight *from* a new unit to an old unit or to the
        energy is zero, so the old units and ``E`` are unchanged while the new units' states are not zero: their
        output weights get a gradient from the first step. The memory (``dynamic_size`` columns) is the same
        shape, so ``theta_bar`` and the write rates carry over (``EnergyMemory.with_energy``). Meant to continue
        meta-training a trained memory at a larger width instead of training the wider network from scratch.
        """
        hidden_size = int(hidden_size)
        if hidden_size <= self.hidden_size:
            raise ValueError(f"widened: hidden_size must exceed {self.hidden_size}, got {hidden_size}")
        config = dict(self.get_config(), hidden_size=hidden_size)
        wide = type(self).from_config(config)
        h, d, extra = self.hidden_size, self.dynamic_size, hidden_size - self.hidden_size
        init = keras.initializers.HeNormal(seed=seed)

        def fresh(shape, like):
            return np.asarray(init(shape, dtype=like.dtype))

        def put(var, value):
            var.assign(np.asarray(value, dtype=var.dtype))

        # x -> units: old columns kept, new columns fresh
        for name in ("static_x", "gate_x"):
            old, new = getattr(self, name), getattr(wide, name)
            k = old.kernel.numpy()
            put(new.kernel, np.concatenate([k, fresh((k.shape[0], extra), k)], axis=1))
            put(new.bias, np.concatenate([old.bias.numpy(), np.zeros(extra, k.dtype)]))
        # state -> units: rows of the new state units are zero for the old columns; the new columns are fresh
        for name, old_cols in (("static_h", h - d), ("gate_h", h)):
            old, new = getattr(self, name), getattr(wide, name)
            k = old.kernel.numpy()
            block = np.zeros((hidden_size, old_cols + extra), k.dtype)
            block[:h, :old_cols] = k
            block[:, old_cols:] = fresh((hidden_size, extra), k)
            put(new.kernel, block)
        put(wide.out.kernel, np.concatenate([self.out.kernel.numpy(), np.zeros((extra, 1), self.out.kernel.dtype)]))
        if self.smoothness_init:
            put(wide.smoothness_raw, self.smoothness_raw.numpy())
        return wide


@keras.saving.register_keras_serializable(package="ebmm_tf")
class SlotEnergy(EnergyNetwork):
    """A mixture energy over writable slots on the raw pixels (a dense associative memory); CPU-scale image memory.

    ``x~ = flatten(x) - input_center`` (``[B, D]``); the memory is a writable ``Linear(D, num_slots)``: slots
    ``m_k`` (its kernel's columns, ``[D, K]``) and log-weights ``b_k`` (its bias, ``[K]``);
    ``s_k(x) = x~ . m_k - |m_k|^2 / 2 + b_k``;
    ``E(x) = |x~|^2 / 2 - logsumexp_k(beta * s_k(x)) / beta = -log sum_k exp(beta * (b_k - |x~ - m_k|^2 / 2)) / beta``,
    the negative log-density of a Gaussian mixture at temperature ``1 / beta``; ``beta = softplus(.)`` is a static
    meta-learned weight starting at ``sharpness_init``. ``grad_x E = x~ - sum_k p_k(x) m_k`` with
    ``p = softmax(beta * s)``: the read moves the query towards the slots that match it. The write (the memory's
    gradient steps on ``E`` and ``|grad_x E|^2`` at the stored patterns) moves each slot towards the patterns it
    matches, in proportion to ``p``: slots are taken by patterns as in soft competitive learning, so two patterns
    of a batch can share a slot (then both are read as a blend). ``slot_init_std``: ``theta_bar``'s slots start
    normal with this deviation per pixel (a spread of starting slots breaks the symmetry between them);
    ``equal_norm_slots``: each starting slot is then rescaled to the same norm, ``slot_init_std * sqrt(D)``, so
    that the ``-|m_k|^2 / 2`` term favours no slot for every pattern alike (random norms make the shortest starting
    slots win many patterns, which then share them).

    Not an energy of the paper's Appendix C: the C.3 conv memories write batch-independent offsets at CPU scale
    and the gated-RNN pixel memory does not learn to recall natural images within a CPU budget
    (docs/results.md, "What makes the memory work"). ``num_slots * (D + 1)`` writable floats.
    """

    def __init__(
        self,
        pattern_shape,
        num_slots=128,
        input_center=0.0,
        sharpness_init=1.0,
        slot_init_std=0.05,
        equal_norm_slots=False,
        **kwargs,
    ):
        kwargs.setdefault("name", "slot_energy")
        super().__init__(pattern_shape=pattern_shape, **kwargs)
        if isinstance(num_slots, bool) or not float(num_slots).is_integer() or int(num_slots) < 1:
            raise ValueError(f"num_slots must be a whole number >= 1, got {num_slots!r}")
        for label, value in (("sharpness_init", sharpness_init), ("slot_init_std", slot_init_std)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{label} must be a positive number, got {value}")
        self.num_slots, self.input_size = int(num_slots), math.prod(self.pattern_shape)
        self.input_center, self.sharpness_init = _finite_center(input_center), float(sharpness_init)
        self.slot_init_std, self.equal_norm_slots = float(slot_init_std), bool(equal_norm_slots)
        self.slots = WritableDense(
            self.input_size,
            0,
            self.num_slots,
            memory_init_std=self.slot_init_std,
            memory_init_equal_norm=self.equal_norm_slots,
            name="slots",
            dtype=self.dtype_policy,
        )
        self.sharpness_raw = self.add_weight(
            name="sharpness", shape=(), initializer=keras.initializers.Constant(inverse_softplus(self.sharpness_init))
        )
        self.built = True

    @property
    def starting_memory_size(self):
        """``starting_memory`` takes one pattern per slot."""
        return self.num_slots

    def starting_memory(self, patterns):
        """Starting slots drawn from data: the first ``num_slots`` of ``patterns [>= K, *pattern_shape]``, centred
        and each rescaled to the norm ``slot_init_std * sqrt(D)``, as ``{"slots/kernel": [D, K]}`` for
        ``EnergyMemory.set_starting_memory``. Random starting slots lie far from every image, so a slot that one
        write step has moved towards a pattern is then nearer to the other patterns than the untouched slots
        are, and takes them too; slots on the data do not (docs/results.md, CIFAR-10 slot memories)."""
        x = tf.convert_to_tensor(patterns)
        if x.shape.rank is None or x.shape[0] is None or x.shape[0] < self.num_slots:
            raise ValueError(f"need at least num_slots = {self.num_slots} patterns, got shape {x.shape}")
        self._check_input(x)
        columns = tf.transpose(_flat_centred(x[: self.num_slots], self.input_size, self.input_center))  # [D, K]
        if not bool(tf.reduce_all(tf.norm(columns, axis=0) > 0)):
            raise ValueError("a starting pattern equals input_center everywhere: it gives no slot direction")
        return {f"{self.slots.name}/kernel": rescale_columns(columns, self.slot_init_std * math.sqrt(self.input_size))}

    def sharpness(self):
        """``beta``, the inverse temperature of the mixture."""
        return tf.nn.softplus(self.sharpness_raw)

    def call(self, x, memory=None):
        self._check_input(x)
        x = _flat_centred(x, self.input_size, self.input_center)
        kernel = self.slots.memory_tensors(memory)[0]
        scores = self.slots(x, memory) - 0.5 * tf.reduce_sum(tf.square(kernel), axis=0)  # [B, K]
        beta = tf.cast(self.sharpness(), x.dtype)
        return 0.5 * tf.reduce_sum(tf.square(x), axis=-1) - tf.reduce_logsumexp(beta * scores, axis=-1) / beta

    def get_config(self):
        config = super().get_config()
        config.update(
            num_slots=self.num_slots,
            input_center=self.input_center,
            sharpness_init=self.sharpness_init,
            slot_init_std=self.slot_init_std,
            equal_norm_slots=self.equal_norm_slots,
        )
        return config


def _conv_out(size, stride):
    return -(-size // stride)


class _ConvRecurrentHead(keras.layers.Layer):
    """Gated convolutional recurrence over the final feature map, then the energy head (C.3 - C.5).

    ``z = [x, h]``; ``candidate = tanh(LN(conv3x3(z)))``; ``u = sigmoid(LN(conv1x1(z)))``;
    ``h = u * candidate + (1 - u) * h``, ``h_0 = 0``; ``E = w . tanh(Linear(1024)(flatten(h)))``.
    The convolutions over ``z`` are split into an ``x`` part (computed once) and an ``h`` part.
    """

    def __init__(self, spatial, in_channels, hidden_size, hops, head_size, **kwargs):
        super().__init__(**kwargs)
        dt = self.dtype_policy
        self.hops = hops
        self.rec_x = Conv(in_channels, hidden_size, 3, 1, name="recurrent_x", dtype=dt)
        self.rec_h = Conv(hidden_size, hidden_size, 3, 1, use_bias=False, name="recurrent_h", dtype=dt)
        self.rec_norm = LayerNorm(channels=hidden_size, name="recurrent_norm", dtype=dt)
        self.gate_x = Conv(in_channels, hidden_size, 1, 1, name="gate_x", dtype=dt)
        self.gate_h = Conv(hidden_size, hidden_size, 1, 1, use_bias=False, name="gate_h", dtype=dt)
        self.gate_norm = LayerNorm(channels=hidden_size, name="gate_norm", dtype=dt)
        self.head = Linear(spatial[0] * spatial[1] * hidden_size, head_size, name="head", dtype=dt)
        self.out = Linear(head_size, 1, use_bias=False, name="energy", dtype=dt)
        self.built = True

    def call(self, x):
        rec_x, gate_x = self.rec_x(x), self.gate_x(x)
        h = None
        for _ in range(self.hops):
            if h is None:
                cand = tf.tanh(self.rec_norm(rec_x))
                h = tf.sigmoid(self.gate_norm(gate_x)) * cand
            else:
                cand = tf.tanh(self.rec_norm(rec_x + self.rec_h(h)))
                u = tf.sigmoid(self.gate_norm(gate_x + self.gate_h(h)))
                h = _gated_update(u, cand, h)
        flat = tf.reshape(h, [tf.shape(h)[0], -1])
        return tf.squeeze(self.out(tf.tanh(self.head(flat))), axis=-1)


@keras.saving.register_keras_serializable(package="ebmm_tf")
class ResNetFCEnergy(EnergyNetwork):
    """C.2: ResNet encoder with fully-connected memory (Omniglot "FC" in Figure 3a).

    ``x [B, 32, 32, C]`` -> 3 ResBlocks (channels, 2x, 3x; stride 2) -> flatten -> Linear(256) -> LayerNorm
    -> ``tanh([memory(f), static(f)])`` (``memory = Linear(256, dynamic_size)``, static width
    ``representation_size - dynamic_size``) -> 3 gated hops over ``state [B, hidden_size]`` with
    ``c = LN(tanh(Linear(z)))`` -> ``E = w . tanh(Linear(1024)(state))``.
    Memory: ``256 * dynamic_size + dynamic_size`` floats.
    """

    def __init__(
        self,
        pattern_shape=(32, 32, 1),
        channels=32,
        hidden_size=512,
        representation_size=512,
        dynamic_size=32,
        encoding_size=256,
        hops=3,
        head_size=1024,
        **kwargs,
    ):
        kwargs.setdefault("name", "resnet_fc_energy")
        super().__init__(pattern_shape=pattern_shape, **kwargs)
        if not 0 < dynamic_size < representation_size:
            raise ValueError(f"dynamic_size must be in (0, representation_size), got {dynamic_size}")
        self.channels, self.hidden_size, self.representation_size = channels, hidden_size, representation_size
        self.dynamic_size, self.encoding_size, self.hops, self.head_size = dynamic_size, encoding_size, hops, head_size
        dt = self.dtype_policy
        h, w, c = self.pattern_shape
        self.blocks = []
        in_ch = c
        for i, mult in enumerate((1, 2, 3)):
            self.blocks.append(ResBlock(in_ch, channels * mult, 2, name=f"encoder_block{i + 1}", dtype=dt))
            in_ch, h, w = channels * mult, _conv_out(h, 2), _conv_out(w, 2)
        self.encoder_linear = Linear(h * w * in_ch, encoding_size, name="encoder_linear", dtype=dt)
        self.encoder_norm = LayerNorm(channels=encoding_size, name="encoder_norm", dtype=dt)
        self.memory = WritableDense(
            encoding_size, representation_size - dynamic_size, dynamic_size, name="memory", dtype=dt
        )
        self.hidden_x = Linear(representation_size, hidden_size, name="hidden_x", dtype=dt)
        self.hidden_h = Linear(hidden_size, hidden_size, use_bias=False, name="hidden_h", dtype=dt)
        self.hidden_norm = LayerNorm(channels=hidden_size, name="hidden_norm", dtype=dt)
        self.gate_x = Linear(representation_size, hidden_size, name="gate_x", dtype=dt)
        self.gate_h = Linear(hidden_size, hidden_size, use_bias=False, name="gate_h", dtype=dt)
        self.head = Linear(hidden_size, head_size, name="head", dtype=dt)
        self.out = Linear(head_size, 1, use_bias=False, name="energy", dtype=dt)
        self.built = True

    def call(self, x, memory=None):
        self._check_input(x)
        for block in self.blocks:
            x = block(x)
        f = self.encoder_norm(self.encoder_linear(tf.reshape(x, [tf.shape(x)[0], -1])))
        r = tf.tanh(self.memory(f, memory))  # [static | writable] channel order
        hid_x, gate_x = self.hidden_x(r), self.gate_x(r)
        state = None
        for _ in range(self.hops):
            if state is None:
                c = self.hidden_norm(tf.tanh(hid_x))
                state = tf.sigmoid(gate_x) * c
            else:
                c = self.hidden_norm(tf.tanh(hid_x + self.hidden_h(state)))
                state = _gated_update(tf.sigmoid(gate_x + self.gate_h(state)), c, state)
        return tf.squeeze(self.out(tf.tanh(self.head(state))), axis=-1)

    def get_config(self):
        config = super().get_config()
        config.update(
            channels=self.channels,
            hidden_size=self.hidden_size,
            representation_size=self.representation_size,
            dynamic_size=self.dynamic_size,
            encoding_size=self.encoding_size,
            hops=self.hops,
            head_size=self.head_size,
        )
        return config


@keras.saving.register_keras_serializable(package="ebmm_tf")
class BottleneckMemoryBlock(keras.layers.Layer):
    """C.3 ``resblock_bottleneck`` with a writable 3x3 convolution.

    ``x -> tanh(LN(conv1x1(x, bottleneck)))`` -> ``[static conv3x3_s (channels - d) | memory conv3x3_s (d)]``
    -> ``tanh(LN(.))`` + shortcut ``pool_s(conv1x1(x, channels))``. Memory: ``9 * bottleneck * d + d``.
    """

    def __init__(self, in_channels, channels, bottleneck_channels, dynamic_size, downscale, **kwargs):
        super().__init__(**kwargs)
        dt = self.dtype_policy
        self.in_channels, self.channels, self.bottleneck_channels = in_channels, channels, bottleneck_channels
        self.dynamic_size, self.downscale = dynamic_size, bool(downscale)
        stride = 2 if downscale else 1
        self.reduce = Conv(in_channels, bottleneck_channels, 1, 1, name="reduce", dtype=dt)
        self.reduce_norm = LayerNorm(channels=bottleneck_channels, name="reduce_norm", dtype=dt)
        self.memory = WritableConv2D(
            bottleneck_channels, channels - dynamic_size, dynamic_size, 3, stride, name=f"{self.name}_memory", dtype=dt
        )
        self.norm = LayerNorm(channels=channels, name="norm", dtype=dt)
        self.shortcut = Conv(in_channels, channels, 1, 1, name="shortcut", dtype=dt)
        self.built = True

    def call(self, x, memory=None):
        y = tf.tanh(self.reduce_norm(self.reduce(x)))
        y = tf.tanh(self.norm(self.memory(y, memory)))
        if self.downscale:
            x = tf.nn.avg_pool2d(x, 3, 2, "SAME")
        return y + self.shortcut(x)

    def get_config(self):
        config = super().get_config()
        config.update(
            in_channels=self.in_channels,
            channels=self.channels,
            bottleneck_channels=self.bottleneck_channels,
            dynamic_size=self.dynamic_size,
            downscale=self.downscale,
        )
        return config


@keras.saving.register_keras_serializable(package="ebmm_tf")
class ResNetConvEnergy(EnergyNetwork):
    """C.3 (Omniglot / CIFAR-10, Figure 3) and C.4 (ImageNet 64x64, Figure 5): convolutional memory.

    ``x [B, H, W, C]`` -> ResBlock(channels, s2) -> ResBlock(2 channels, s2) -> for each entry of
    ``bottleneck_downscale`` a ``BottleneckMemoryBlock(4 channels, 2 channels, dynamic_size)`` -> gated
    convolutional recurrence (``hidden_size``, ``hops``) -> energy head. C.3: 32x32 input,
    ``bottleneck_downscale=(False, True)``, channels 32, hidden 128; C.4 (``imagenet_conv_energy``): 64x64
    input, ``(True, True)``, channels 64, hidden 256. Memory: ``len(blocks) * (9 * 2 channels * d + d)``
    (C.3, d = 8: 9,232 floats; C.4, d = 8: 18,448, the paper's "~18K").
    """

    def __init__(
        self,
        pattern_shape=(32, 32, 1),
        channels=32,
        hidden_size=128,
        dynamic_size=8,
        bottleneck_downscale=(False, True),
        hops=3,
        head_size=1024,
        **kwargs,
    ):
        kwargs.setdefault("name", "resnet_conv_energy")
        super().__init__(pattern_shape=pattern_shape, **kwargs)
        if not 0 < dynamic_size < 4 * channels:
            raise ValueError(f"dynamic_size must be in (0, 4 * channels = {4 * channels}), got {dynamic_size}")
        self.channels, self.hidden_size, self.dynamic_size = channels, hidden_size, dynamic_size
        self.bottleneck_downscale = tuple(bool(b) for b in bottleneck_downscale)
        self.hops, self.head_size = hops, head_size
        dt = self.dtype_policy
        h, w, c = self.pattern_shape
        self.block1 = ResBlock(c, channels, 2, name="block1", dtype=dt)
        self.block2 = ResBlock(channels, 2 * channels, 2, name="block2", dtype=dt)
        h, w = _conv_out(_conv_out(h, 2), 2), _conv_out(_conv_out(w, 2), 2)
        self.memory_blocks = []
        in_ch = 2 * channels
        for i, down in enumerate(self.bottleneck_downscale):
            self.memory_blocks.append(
                BottleneckMemoryBlock(
                    in_ch, 4 * channels, 2 * channels, dynamic_size, down, name=f"bottleneck{i + 1}", dtype=dt
                )
            )
            in_ch = 4 * channels
            if down:
                h, w = _conv_out(h, 2), _conv_out(w, 2)
        self.recurrent = _ConvRecurrentHead((h, w), in_ch, hidden_size, hops, head_size, name="recurrent", dtype=dt)
        self.built = True

    def call(self, x, memory=None):
        self._check_input(x)
        x = self.block2(self.block1(x))
        for block in self.memory_blocks:
            x = block(x, memory)
        return self.recurrent(x)

    def get_config(self):
        config = super().get_config()
        config.update(
            channels=self.channels,
            hidden_size=self.hidden_size,
            dynamic_size=self.dynamic_size,
            bottleneck_downscale=list(self.bottleneck_downscale),
            hops=self.hops,
            head_size=self.head_size,
        )
        return config


def imagenet_conv_energy(pattern_shape=(64, 64, 3), channels=64, hidden_size=256, dynamic_size=8, **kwargs):
    """C.4: the ImageNet 64x64 variant of ``ResNetConvEnergy`` (both bottleneck blocks downscale)."""
    kwargs.setdefault("name", "imagenet_conv_energy")
    return ResNetConvEnergy(
        pattern_shape=pattern_shape,
        channels=channels,
        hidden_size=hidden_size,
        dynamic_size=dynamic_size,
        bottleneck_downscale=(True, True),
        **kwargs,
    )


@keras.saving.register_keras_serializable(package="ebmm_tf")
class LowerMemoryBlock(keras.layers.Layer):
    """C.5 ``resblock`` with writable convolutions in the second residual block.

    ``y1 = tanh(LN([static | memory] conv3x3_s2(x)))``; ``y2 = tanh(LN([static | memory] conv3x3(y1) + y1))``;
    ``out = y1 + y2 + pool_2(conv1x1(x))``. Memory: ``(9 in d + d) + (9 channels d + d)``.
    """

    def __init__(self, in_channels, channels, dynamic_size, **kwargs):
        super().__init__(**kwargs)
        dt = self.dtype_policy
        self.in_channels, self.channels, self.dynamic_size = in_channels, channels, dynamic_size
        self.memory1 = WritableConv2D(
            in_channels, channels - dynamic_size, dynamic_size, 3, 2, name=f"{self.name}_memory1", dtype=dt
        )
        self.norm1 = LayerNorm(channels=channels, name="norm1", dtype=dt)
        self.memory2 = WritableConv2D(
            channels, channels - dynamic_size, dynamic_size, 3, 1, name=f"{self.name}_memory2", dtype=dt
        )
        self.norm2 = LayerNorm(channels=channels, name="norm2", dtype=dt)
        self.shortcut = Conv(in_channels, channels, 1, 1, name="shortcut", dtype=dt)
        self.built = True

    def call(self, x, memory=None):
        y1 = tf.tanh(self.norm1(self.memory1(x, memory)))
        y2 = tf.tanh(self.norm2(self.memory2(y1, memory) + y1))
        return y1 + y2 + self.shortcut(tf.nn.avg_pool2d(x, 3, 2, "SAME"))

    def get_config(self):
        config = super().get_config()
        config.update(in_channels=self.in_channels, channels=self.channels, dynamic_size=self.dynamic_size)
        return config


@keras.saving.register_keras_serializable(package="ebmm_tf")
class ResNetLowerConvEnergy(EnergyNetwork):
    """C.5: convolutional memory in the second residual block (correlated batches, Table 3).

    ``x [B, 32, 32, C]`` -> ResBlock(channels, s2) -> LowerMemoryBlock(2 channels, d) ->
    ResBlock(4 channels, s2) -> gated recurrence (hidden 256) -> energy head.
    Memory: ``9 channels d + d + 18 channels d + d`` (channels 32: d = 5 -> 4,330 floats, d = 6 -> 5,196,
    the paper's "4K" and "5K").
    """

    def __init__(
        self, pattern_shape=(32, 32, 1), channels=32, hidden_size=256, dynamic_size=8, hops=3, head_size=1024, **kwargs
    ):
        kwargs.setdefault("name", "resnet_lower_conv_energy")
        super().__init__(pattern_shape=pattern_shape, **kwargs)
        if not 0 < dynamic_size < 2 * channels:
            raise ValueError(f"dynamic_size must be in (0, 2 * channels = {2 * channels}), got {dynamic_size}")
        self.channels, self.hidden_size, self.dynamic_size = channels, hidden_size, dynamic_size
        self.hops, self.head_size = hops, head_size
        dt = self.dtype_policy
        h, w, c = self.pattern_shape
        self.block1 = ResBlock(c, channels, 2, name="block1", dtype=dt)
        self.memory_block = LowerMemoryBlock(channels, 2 * channels, dynamic_size, name="block2", dtype=dt)
        self.block3 = ResBlock(2 * channels, 4 * channels, 2, name="block3", dtype=dt)
        for _ in range(3):
            h, w = _conv_out(h, 2), _conv_out(w, 2)
        self.recurrent = _ConvRecurrentHead(
            (h, w), 4 * channels, hidden_size, hops, head_size, name="recurrent", dtype=dt
        )
        self.built = True

    def call(self, x, memory=None):
        self._check_input(x)
        x = self.block3(self.memory_block(self.block1(x), memory))
        return self.recurrent(x)

    def get_config(self):
        config = super().get_config()
        config.update(
            channels=self.channels,
            hidden_size=self.hidden_size,
            dynamic_size=self.dynamic_size,
            hops=self.hops,
            head_size=self.head_size,
        )
        return config
