"""Memory Networks baseline (Weston et al., 2014; paper Section 4, Figure 3, Table 1 and Appendix C.2).

Section 4 defines the memory size of a Memory Network as "the number of slots x the slot size"; all models
share the C.2 encoder and its transposed decoder. The paper gives no further detail, so this is our reading:

* write: each of the N patterns of an episode is encoded and projected into its own slot,
  ``m_i = W_w encode(x_i) + b_w``, ``m [N, slot_size]``, ``N <= num_slots`` (the memory size
  ``num_slots * slot_size`` is the capacity; an episode of N < num_slots patterns fills N slots);
* read, ``hops`` times (one read iterate per hop; default one hop, i.e. one iterate), starting from the code of
  the projected query ``u_0 = encode(x~)``: content-based attention over the slots
  ``a = softmax(s * (W_a u_k + b_a) . m_j / sqrt(slot_size))`` with a learned sharpness ``s = softplus(.)``,
  readout ``r = sum_j a_j m_j``, ``u_{k+1} = u_k + W_r r + b_r`` (the MemN2N-style residual update, so the
  decoder sees both the query and the memory), iterate ``x_{k+1} = lo + (hi - lo) sigmoid(decode(u_{k+1}))``;
  with a clamp mask the known dimensions keep the query's value (A.2).

It is meta-trained by the same ``Experiment`` / ``MetaLearner`` as EBMM (``Experiment.model = @MemoryNetwork``,
see ``gin/baselines/``) with B.4's step-wise loss over the hops, and evaluated by ``ebmm_tf.evaluate``.
Paper numbers: Table 1 (binary strings, 8,256 floats) 0.0 / 0.0 / 0.0 / 0.0 / 10.5 bits for N = 16 .. 96;
Figure 3 (Omniglot, CIFAR-10) curves only.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

import gin
from ebmm_tf.baselines import networks  # noqa: F401  (registers @ConvAutoEncoder / @DenseAutoEncoder with gin)
from ebmm_tf.baselines.base import BaselineMemory
from ebmm_tf.contract import MemoryState
from ebmm_tf.layers import Linear, inverse_softplus

__all__ = ["MemoryNetwork", "memory_network"]


@keras.saving.register_keras_serializable(package="ebmm_tf")
class MemoryNetwork(BaselineMemory):
    """Slot memory over the shared encoder/decoder: one slot per written pattern, attention read.

    Args:
      network: the shared encoder/decoder (``ConvAutoEncoder`` / ``DenseAutoEncoder``).
      num_slots: slots in memory (the largest N that can be written).
      slot_size: floats per slot. Memory size = ``num_slots * slot_size``.
      hops: attention hops = read iterates.
      data_range: ``(lo, hi)`` of the patterns.
      sharpness_init: initial softmax sharpness ``s``.
    """

    def __init__(self, network, num_slots=64, slot_size=128, hops=1, data_range=(0.0, 1.0), sharpness_init=1.0, **kw):
        kw.setdefault("name", "memory_network")
        super().__init__(network, data_range, **kw)
        if num_slots < 1 or slot_size < 1 or hops < 1:
            raise ValueError(f"need num_slots, slot_size, hops >= 1; got {num_slots}, {slot_size}, {hops}")
        self.num_slots, self.slot_size, self.hops = int(num_slots), int(slot_size), int(hops)
        self.sharpness_init = float(sharpness_init)
        enc = network.encoding_size
        dt = self.dtype_policy
        self.write_proj = Linear(enc, self.slot_size, name="write", dtype=dt)
        self.address = Linear(enc, self.slot_size, name="address", dtype=dt)
        self.readout = Linear(self.slot_size, enc, name="readout", dtype=dt)
        self.sharpness_raw = self.add_weight(
            name="sharpness", shape=(), initializer=keras.initializers.Constant(inverse_softplus(self.sharpness_init))
        )
        self.built = True

    def memory_size(self) -> int:
        """``num_slots * slot_size`` floats (Section 4's definition for Memory Networks)."""
        return self.num_slots * self.slot_size

    def write(self, patterns, first_order=None) -> MemoryState:
        """Encodes ``patterns [N, *pattern_shape]`` into slots ``[N, slot_size]`` (``N <= num_slots``)."""
        del first_order
        x = self.project(self._cast(patterns, "patterns"))
        n = x.shape[0]
        if n is not None and n > self.num_slots:
            raise ValueError(f"{n} patterns do not fit in {self.num_slots} slots")
        slots = self.write_proj(self.network.encode(x))
        if n is None:
            with tf.control_dependencies([tf.debugging.assert_less_equal(tf.shape(x)[0], self.num_slots)]):
                slots = tf.identity(slots)
        return MemoryState({"slots": slots})

    def attention(self, state: MemoryState, code):
        """Attention weights ``[M, N]`` of query codes ``[M, encoding_size]`` over the slots."""
        slots = state.weights["slots"]
        scale = tf.nn.softplus(self.sharpness_raw) / math.sqrt(self.slot_size)
        return tf.nn.softmax(tf.matmul(self.address(code), slots, transpose_b=True) * scale, axis=-1)

    def read(self, state: MemoryState, queries, mask=None):
        """``hops`` iterates ``[M, *pattern_shape]`` for ``queries [M, *pattern_shape]``."""
        q = self.project(self._cast(queries, "queries"))
        clamp = self._clamp_fn(q, mask)
        u = self.network.encode(q)
        iterates = []
        for _ in range(self.hops):
            r = tf.matmul(self.attention(state, u), state.weights["slots"])
            u = u + self.readout(r)
            iterates.append(clamp(self.squash(self.network.decode(u))))
        return iterates

    def get_config(self):
        config = super().get_config()
        config.update(
            num_slots=self.num_slots, slot_size=self.slot_size, hops=self.hops, sharpness_init=self.sharpness_init
        )
        return config


@gin.configurable("MemoryNetwork", module="ebmm_tf.baselines")
def memory_network(
    energy=None,
    pattern_shape=gin.REQUIRED,
    data_range=(0.0, 1.0),
    network=gin.REQUIRED,
    num_slots=gin.REQUIRED,
    slot_size=None,
    memory_size=None,
    hops=1,
    sharpness_init=1.0,
):
    """gin factory for ``Experiment.model``: ``model(energy, pattern_shape=..., data_range=...)``.

    Give either ``slot_size`` or a memory budget ``memory_size`` (then ``slot_size = memory_size // num_slots``).
    ``network`` is a factory called with ``pattern_shape`` (``@ConvAutoEncoder`` / ``@DenseAutoEncoder``);
    ``energy`` must be None (leave ``Experiment.energy`` unbound).
    """
    if energy is not None:
        raise ValueError("MemoryNetwork has no energy network: leave Experiment.energy unbound.")
    if (slot_size is None) == (memory_size is None):
        raise ValueError("give exactly one of MemoryNetwork.slot_size and MemoryNetwork.memory_size")
    if slot_size is None:
        slot_size = int(memory_size) // int(num_slots)
    return MemoryNetwork(
        network(pattern_shape=pattern_shape),
        num_slots=num_slots,
        slot_size=slot_size,
        hops=hops,
        data_range=data_range,
        sharpness_init=sharpness_init,
    )
