"""Random binary strings (paper Appendix A.2): N patterns of ``dim`` (128) i.i.d. bits in {-1, +1}.

No data is needed; patterns are generated on the fly with stateless ops, so a given seed always gives
the same patterns. The query protocol (keep 64 random bits, replace the others by random +-1, clamp the
kept bits) is :class:`ebmm_tf.distortions.BinaryStringProtocol`.
"""

from __future__ import annotations

import tensorflow as tf

DEFAULT_DIM = 128


def generate(num_patterns: int, seed, dim: int = DEFAULT_DIM) -> tf.Tensor:
    """float32 [num_patterns, dim] with entries -1 / +1 (probability 1/2 each), from a shape-[2] seed."""
    bits = tf.random.stateless_uniform([num_patterns, dim], seed=seed, minval=0, maxval=2, dtype=tf.int32)
    return tf.cast(2 * bits - 1, tf.float32)
