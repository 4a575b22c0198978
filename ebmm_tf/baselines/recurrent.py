r"""Table 1's recurrent baselines: an LSTM, a memory-augmented network (MANN) and differentiable plasticity.

All three write an episode by reading its N patterns **one after another** (the order of the episode) into a
recurrent state, and recall each query from that state; none has an inner gradient step. Shapes: patterns and
queries are ``[N, D]`` / ``[M, D]`` (``D = prod(pattern_shape)``); every read returns ``read_steps`` iterates
``[M, *pattern_shape]``, each squashed into the data range and, with a clamp mask, with the known dimensions set to
the query's values (A.2), so that the B.4 step-wise loss and ``ebmm_tf.evaluate`` treat them as EBMM's iterates.

**LSTM** (``LSTMMemory``). Cell ``[i, f, g, o] = [x_t, h_{t-1}] W + b`` (``W [D + H, 4H]``, forget bias 1),
``c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)``, ``h_t = sigmoid(o) * tanh(c_t)``. Write: ``(h, c)`` after
the N patterns, from ``h_0 = c_0 = 0``. Read: each query starts from the written ``(h, c)``; step ``k`` feeds the
current iterate ``x_{k-1}`` (``x_0`` = the projected query) and outputs ``x_k = squash(h_k W_out + b_out)``.
Memory counted: the written state ``h`` and ``c``, ``2 H`` floats.

**MANN** (``MANN``, Santoro et al. 2016, least-recently-used access). Memory ``M [S, W]`` (``S`` slots of ``W``
floats), LSTM controller on ``[x_t, r_{t-1}]``. Per written pattern, from the controller output ``h_t``: key
``k_t = tanh(h_t W_k)``, sharpness ``beta_t = 1 + softplus(h_t w_b)``, gate ``sigma_t = sigmoid(h_t w_a)``;
read weights ``w^r_t = softmax(beta_t cos(k_t, M_{t-1}[i]))``; write weights
``w^w_t = sigma_t w^r_{t-1} + (1 - sigma_t) w^lu_{t-1}``; the least-used slot is cleared, then
``M_t = (1 - w^lu_{t-1}) * M_{t-1} + w^w_t k_t^T``; usage ``u_t = gamma u_{t-1} + w^r_t + w^w_t``;
``w^lu_t`` = one-hot of the least-used slot ``argmin u_t`` (one read head, so the paper's "n-th smallest" is the
smallest); read vector ``r_t = w^r_t M_t``. ``gamma = sigmoid(.)`` is learned. Read: from the written controller
state and memory, step ``k`` feeds ``[x_{k-1}, r]`` to the controller, reads ``r = w^r M`` with its key (no write)
and outputs ``x_k = squash([h_k, r] W_out + b_out)``. Memory counted: ``M``, ``S W`` floats (the controller's
``2 H`` floats and the ``2 S`` usage/read weights are carried too; Santoro et al. do not count them either).

**Differentiable plasticity** (``DifferentiablePlasticity``, Miconi et al. 2018). A recurrent network of ``D``
units whose connections are ``w + alpha * Hebb`` with learned ``w [D, D]``, per-connection plasticity coefficients
``alpha [D, D]`` and a learned trace rate ``eta = sigmoid(.)``. Write: each pattern is presented by clamping the
units to it, which updates the Hebbian trace ``Hebb <- (1 - eta) Hebb + eta p p^T`` (from ``Hebb = 0``; Miconi's
``x_i(t-1) x_j(t)`` is ``p_i p_j`` while the units are clamped, so the trace stays symmetric). Read: the network
runs freely from the projected query, ``a_k = x_{k-1} (w + alpha * Hebb) + b``, ``x_k = squash(2 a_k)`` (for the
data range ``(-1, 1)`` that is Miconi's ``tanh(a_k)``). Memory counted: the symmetric trace, ``D (D + 1) / 2``
floats: 8,256 for ``D = 128``, exactly the Hopfield budget of Table 1.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

import gin
from ebmm_tf.baselines.base import RangeOutputs, check_data_range
from ebmm_tf.contract import MemoryState, RecallMixin
from ebmm_tf.layers import Linear

__all__ = ["LSTMMemory", "MANN", "DifferentiablePlasticity", "lstm_memory", "mann", "differentiable_plasticity"]


class SequentialBaseline(RangeOutputs, RecallMixin, keras.Model):
    """Common part: pattern shape, data range, squashing and clamping of the iterates.

    Args:
      pattern_shape: shape of one pattern (flattened to ``D`` floats inside).
      data_range: ``(lo, hi)`` of the patterns.
      read_steps: read iterates ``K``.
    """

    def __init__(self, pattern_shape, data_range=(-1.0, 1.0), read_steps=1, **kwargs):
        super().__init__(**kwargs)
        self.data_range = check_data_range(data_range)
        if int(read_steps) < 1:
            raise ValueError(f"read_steps must be >= 1, got {read_steps}")
        self._pattern_shape = tuple(int(d) for d in pattern_shape)
        self.dim = int(np.prod(self._pattern_shape))
        self.read_steps = int(read_steps)

    @property
    def pattern_shape(self) -> tuple[int, ...]:
        return self._pattern_shape

    def _flat(self, x):
        return tf.reshape(x, [-1, self.dim])

    def _iterate(self, logits, clamp):
        return clamp(tf.reshape(self.squash(logits), [-1, *self._pattern_shape]))

    def get_config(self):
        config = super().get_config()
        config.update(
            pattern_shape=list(self._pattern_shape), data_range=list(self.data_range), read_steps=self.read_steps
        )
        return config


def _lstm_cell(cell, x, h, c):
    """One LSTM step; ``cell`` is the ``Linear(D_in + H, 4 H)`` of the gates."""
    i, f, g, o = tf.split(cell(tf.concat([x, h], axis=-1)), 4, axis=-1)
    c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g)
    return tf.sigmoid(o) * tf.tanh(c), c


def _lstm_gates(in_features, hidden, name, dtype):
    cell = Linear(in_features + hidden, 4 * hidden, name=name, dtype=dtype)
    # forget-gate bias 1 (Gers et al.), He-normal kernel scaled down to keep the gates out of saturation
    cell.bias.assign(np.concatenate([np.zeros(hidden), np.ones(hidden), np.zeros(2 * hidden)]).astype("float32"))
    cell.kernel.assign(cell.kernel * (1.0 / math.sqrt(2.0)))
    return cell


@keras.saving.register_keras_serializable(package="ebmm_tf")
class LSTMMemory(SequentialBaseline):
    """An LSTM that reads the N patterns, then each query; memory = its state ``(h, c)``, ``2 * hidden_size``."""

    def __init__(self, pattern_shape, hidden_size=256, data_range=(-1.0, 1.0), read_steps=1, **kw):
        kw.setdefault("name", "lstm_memory")
        super().__init__(pattern_shape, data_range, read_steps, **kw)
        if int(hidden_size) < 1:
            raise ValueError(f"hidden_size must be >= 1, got {hidden_size}")
        self.hidden_size = int(hidden_size)
        self.cell = _lstm_gates(self.dim, self.hidden_size, "cell", self.dtype_policy)
        self.out = Linear(self.hidden_size, self.dim, name="out", dtype=self.dtype_policy)
        self.built = True

    def memory_size(self) -> int:
        return 2 * self.hidden_size

    def write(self, patterns, first_order=None) -> MemoryState:
        del first_order
        x = self._flat(self.project(self._cast(patterns, "patterns")))
        zero = tf.zeros([1, self.hidden_size], x.dtype)

        def step(hc, xt):
            return _lstm_cell(self.cell, xt[None], *hc)

        h, c = tf.scan(step, x, initializer=(zero, zero))
        return MemoryState({"h": h[-1], "c": c[-1]})

    def read(self, state: MemoryState, queries, mask=None):
        q = self.project(self._cast(queries, "queries"))
        clamp = self._clamp_fn(q, mask)
        m = tf.shape(q)[0]
        h = tf.tile(state.weights["h"], [m, 1])
        c = tf.tile(state.weights["c"], [m, 1])
        x, iterates = q, []
        for _ in range(self.read_steps):
            h, c = _lstm_cell(self.cell, self._flat(x), h, c)
            x = self._iterate(self.out(h), clamp)
            iterates.append(x)
        return iterates

    def get_config(self):
        config = super().get_config()
        config.update(hidden_size=self.hidden_size)
        return config


@keras.saving.register_keras_serializable(package="ebmm_tf")
class MANN(SequentialBaseline):
    """Memory-augmented network with least-recently-used access (Santoro et al. 2016): ``num_slots x word_size``."""

    def __init__(
        self,
        pattern_shape,
        num_slots=64,
        word_size=128,
        controller_size=256,
        data_range=(-1.0, 1.0),
        read_steps=1,
        usage_decay_init=0.95,
        **kw,
    ):
        kw.setdefault("name", "mann")
        super().__init__(pattern_shape, data_range, read_steps, **kw)
        if min(int(num_slots), int(word_size), int(controller_size)) < 1:
            raise ValueError(
                f"need num_slots, word_size, controller_size >= 1; got {num_slots}, {word_size}, {controller_size}"
            )
        if not 0.0 < usage_decay_init < 1.0:
            raise ValueError(f"usage_decay_init must be in (0, 1), got {usage_decay_init}")
        self.num_slots, self.word_size, self.controller_size = int(num_slots), int(word_size), int(controller_size)
        self.usage_decay_init = float(usage_decay_init)
        dt = self.dtype_policy
        self.controller = _lstm_gates(self.dim + self.word_size, self.controller_size, "controller", dt)
        # key (W), sharpness (1), write gate (1)
        self.heads = Linear(self.controller_size, self.word_size + 2, name="heads", dtype=dt)
        self.out = Linear(self.controller_size + self.word_size, self.dim, name="out", dtype=dt)
        g = self.usage_decay_init
        self.usage_decay_logit = self.add_weight(
            name="usage_decay", shape=(), initializer=keras.initializers.Constant(math.log(g / (1.0 - g)))
        )
        self.built = True

    def memory_size(self) -> int:
        return self.num_slots * self.word_size

    def _address(self, h, memory):
        """Key, read weights ``[B, S]`` (cosine similarity, sharpened) and write gate from controller output."""
        heads = self.heads(h)
        key = tf.tanh(heads[:, : self.word_size])
        beta = 1.0 + tf.nn.softplus(heads[:, self.word_size : self.word_size + 1])
        gate = tf.sigmoid(heads[:, self.word_size + 1 :])
        eps = 1e-6
        sim = tf.matmul(key, memory, transpose_b=True) / (
            tf.norm(key, axis=-1, keepdims=True) * tf.norm(memory, axis=-1)[None] + eps
        )
        return key, tf.nn.softmax(beta * sim, axis=-1), gate

    def initial_state(self, dtype=tf.float32):
        s, w, hsz = self.num_slots, self.word_size, self.controller_size
        return {
            "memory": tf.zeros([s, w], dtype),
            "usage": tf.zeros([s], dtype),
            "read_weights": tf.zeros([s], dtype),
            "read": tf.zeros([w], dtype),
            "h": tf.zeros([hsz], dtype),
            "c": tf.zeros([hsz], dtype),
        }

    def write_step(self, state, x):
        """One pattern ``x [D]`` into the state dict (the equations of the module docstring)."""
        h, c = _lstm_cell(self.controller, tf.concat([x, state["read"]], -1)[None], state["h"][None], state["c"][None])
        key, w_read, gate = self._address(h, state["memory"])
        key, w_read, gate = key[0], w_read[0], gate[0]
        least_used = tf.one_hot(tf.argmin(state["usage"]), self.num_slots, dtype=x.dtype)
        w_write = gate * state["read_weights"] + (1.0 - gate) * least_used
        memory = state["memory"] * (1.0 - least_used)[:, None] + w_write[:, None] * key[None, :]
        gamma = tf.sigmoid(self.usage_decay_logit)
        usage = gamma * state["usage"] + w_read + w_write
        read = tf.linalg.matvec(memory, w_read, transpose_a=True)
        return {"memory": memory, "usage": usage, "read_weights": w_read, "read": read, "h": h[0], "c": c[0]}

    def write(self, patterns, first_order=None) -> MemoryState:
        del first_order
        x = self._flat(self.project(self._cast(patterns, "patterns")))
        state = tf.scan(self.write_step, x, initializer=self.initial_state(x.dtype))
        return MemoryState({k: v[-1] for k, v in state.items()})

    def read(self, state: MemoryState, queries, mask=None):
        q = self.project(self._cast(queries, "queries"))
        clamp = self._clamp_fn(q, mask)
        s = state.weights
        m = tf.shape(q)[0]
        h, c = tf.tile(s["h"][None], [m, 1]), tf.tile(s["c"][None], [m, 1])
        r = tf.tile(s["read"][None], [m, 1])
        x, iterates = q, []
        for _ in range(self.read_steps):
            h, c = _lstm_cell(self.controller, tf.concat([self._flat(x), r], -1), h, c)
            _, w_read, _ = self._address(h, s["memory"])
            r = tf.matmul(w_read, s["memory"])
            x = self._iterate(self.out(tf.concat([h, r], -1)), clamp)
            iterates.append(x)
        return iterates

    def get_config(self):
        config = super().get_config()
        config.update(
            num_slots=self.num_slots,
            word_size=self.word_size,
            controller_size=self.controller_size,
            usage_decay_init=self.usage_decay_init,
        )
        return config


@keras.saving.register_keras_serializable(package="ebmm_tf")
class DifferentiablePlasticity(SequentialBaseline):
    """Recurrent network with plastic connections ``w + alpha * Hebb`` (Miconi et al. 2018)."""

    def __init__(self, pattern_shape, data_range=(-1.0, 1.0), read_steps=3, eta_init=0.1, alpha_init=0.01, **kw):
        kw.setdefault("name", "differentiable_plasticity")
        super().__init__(pattern_shape, data_range, read_steps, **kw)
        if not 0.0 < eta_init < 1.0:
            raise ValueError(f"eta_init must be in (0, 1), got {eta_init}")
        self.eta_init, self.alpha_init = float(eta_init), float(alpha_init)
        d = self.dim
        self.w = self.add_weight(name="w", shape=(d, d), initializer=keras.initializers.RandomNormal(stddev=0.01))
        self.alpha = self.add_weight(
            name="alpha", shape=(d, d), initializer=keras.initializers.Constant(self.alpha_init)
        )
        self.b = self.add_weight(name="b", shape=(d,), initializer="zeros")
        self.eta_logit = self.add_weight(
            name="eta", shape=(), initializer=keras.initializers.Constant(math.log(eta_init / (1.0 - eta_init)))
        )
        self.built = True

    def memory_size(self) -> int:
        """The symmetric Hebbian trace: ``D (D + 1) / 2`` floats."""
        return self.dim * (self.dim + 1) // 2

    def write(self, patterns, first_order=None) -> MemoryState:
        del first_order
        x = self._flat(self.project(self._cast(patterns, "patterns")))
        eta = tf.sigmoid(self.eta_logit)

        def step(hebb, p):
            return (1.0 - eta) * hebb + eta * p[:, None] * p[None, :]

        hebb = tf.foldl(step, x, initializer=tf.zeros([self.dim, self.dim], x.dtype))
        return MemoryState({"hebb": hebb})

    def read(self, state: MemoryState, queries, mask=None):
        q = self.project(self._cast(queries, "queries"))
        clamp = self._clamp_fn(q, mask)
        weights = self.w + self.alpha * state.weights["hebb"]
        x, iterates = q, []
        for _ in range(self.read_steps):
            x = self._iterate(2.0 * (tf.matmul(self._flat(x), weights) + self.b), clamp)
            iterates.append(x)
        return iterates

    def get_config(self):
        config = super().get_config()
        config.update(eta_init=self.eta_init, alpha_init=self.alpha_init)
        return config


def _no_energy(name, energy):
    if energy is not None:
        raise ValueError(f"{name} has no energy network: leave Experiment.energy unbound.")


@gin.configurable("LSTMMemory", module="ebmm_tf.baselines")
def lstm_memory(energy=None, pattern_shape=gin.REQUIRED, data_range=(-1.0, 1.0), hidden_size=256, read_steps=1):
    """gin factory for ``Experiment.model``; memory ``2 * hidden_size`` floats."""
    _no_energy("LSTMMemory", energy)
    return LSTMMemory(pattern_shape, hidden_size=hidden_size, data_range=data_range, read_steps=read_steps)


@gin.configurable("MANN", module="ebmm_tf.baselines")
def mann(
    energy=None,
    pattern_shape=gin.REQUIRED,
    data_range=(-1.0, 1.0),
    num_slots=64,
    word_size=None,
    memory_size=None,
    controller_size=256,
    read_steps=1,
    usage_decay_init=0.95,
):
    """gin factory for ``Experiment.model``: give ``word_size`` or a budget ``memory_size`` (``// num_slots``)."""
    _no_energy("MANN", energy)
    if (word_size is None) == (memory_size is None):
        raise ValueError("give exactly one of MANN.word_size and MANN.memory_size")
    if word_size is None:
        word_size = int(memory_size) // int(num_slots)
    return MANN(
        pattern_shape,
        num_slots=num_slots,
        word_size=word_size,
        controller_size=controller_size,
        data_range=data_range,
        read_steps=read_steps,
        usage_decay_init=usage_decay_init,
    )


@gin.configurable("DifferentiablePlasticity", module="ebmm_tf.baselines")
def differentiable_plasticity(
    energy=None, pattern_shape=gin.REQUIRED, data_range=(-1.0, 1.0), read_steps=3, eta_init=0.1, alpha_init=0.01
):
    """gin factory for ``Experiment.model``; memory ``D (D + 1) / 2`` floats (8,256 for 128-bit strings)."""
    _no_energy("DifferentiablePlasticity", energy)
    return DifferentiablePlasticity(
        pattern_shape, data_range=data_range, read_steps=read_steps, eta_init=eta_init, alpha_init=alpha_init
    )
