"""Denoising autoencoder baseline (paper Appendix A.3, Table 2): a non-memory model.

"A Denoising Auto-encoder (DAE) which is trained to reconstruct the original pattern x from its distorted
version x~ using a bottleneck of 256 hidden units. This model is trained exactly as our model using (2) as an
objective." Here: the C.2 encoder and its transposed decoder (``ebmm_tf.baselines.networks``), code size 256;
``read(state, x~) = [squash(decode(encode(x~)))]`` (one read iterate), so B.4's step-wise loss is exactly loss (2);
``write`` stores nothing (memory size 0: the model can only learn a prior over the domain and the noise).
It is meta-trained by the same ``Experiment`` / ``MetaLearner`` as EBMM (``Experiment.model =
@DenoisingAutoEncoder``, see ``gin/baselines/``) and evaluated by ``ebmm_tf.evaluate`` in the same form.

Paper numbers (Table 2, 25% block noise): Omniglot 36.08 (Hamming), CIFAR-10 24.66, ImageNet 64x64 141.07
(squared error); 15% salt and pepper: 9.57 / 8.82 / 69.20.
"""

from __future__ import annotations

import keras

import gin
from ebmm_tf.baselines import networks  # noqa: F401  (registers @ConvAutoEncoder / @DenseAutoEncoder with gin)
from ebmm_tf.baselines.base import BaselineMemory
from ebmm_tf.memory import MemoryState

__all__ = ["DenoisingAutoEncoder", "denoising_autoencoder"]


@keras.saving.register_keras_serializable(package="ebmm_tf")
class DenoisingAutoEncoder(BaselineMemory):
    """``x~ [M, *pattern_shape] -> [lo + (hi - lo) sigmoid(decode(encode(proj(x~))))]``; no memory.

    Args:
      network: the shared encoder/decoder (``ConvAutoEncoder`` for images, ``DenseAutoEncoder`` for vectors).
      data_range: ``(lo, hi)`` of the patterns.
    """

    def __init__(self, network, data_range=(0.0, 1.0), **kwargs):
        kwargs.setdefault("name", "denoising_autoencoder")
        super().__init__(network, data_range, **kwargs)
        self.built = True

    def memory_size(self) -> int:
        """0: nothing is written (A.3, "non-memory baselines")."""
        return 0

    def write(self, patterns, first_order=None) -> MemoryState:
        """Stores nothing; returns the empty ``MemoryState`` (shape check only)."""
        del first_order
        self._cast(patterns, "patterns")
        return MemoryState({})

    def read(self, state: MemoryState, queries, mask=None):
        """One iterate: the decoded code of the (projected) query, known dimensions clamped to the query."""
        del state
        q = self.project(self._cast(queries, "queries"))
        clamp = self._clamp_fn(q, mask)
        return [clamp(self.squash(self.network.decode(self.network.encode(q))))]


@gin.configurable("DenoisingAutoEncoder", module="ebmm_tf.baselines")
def denoising_autoencoder(energy=None, pattern_shape=gin.REQUIRED, data_range=(0.0, 1.0), network=gin.REQUIRED):
    """gin factory for ``Experiment.model``: ``model(energy, pattern_shape=..., data_range=...)``.

    ``network`` is a factory called with ``pattern_shape`` (gin: ``@ConvAutoEncoder`` / ``@DenseAutoEncoder``).
    ``energy`` must be None (leave ``Experiment.energy`` unbound).
    """
    if energy is not None:
        raise ValueError("DenoisingAutoEncoder has no energy network: leave Experiment.energy unbound.")
    return DenoisingAutoEncoder(network(pattern_shape=pattern_shape), data_range=data_range)
