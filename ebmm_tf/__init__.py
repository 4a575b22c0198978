"""ebmm_tf: meta-learned deep energy-based associative memory (Bartunov et al., ICLR 2020) in TensorFlow 2.

Public API::

    from ebmm_tf import EnergyMemory, MemoryState, GatedRNNEnergy, ResNetConvEnergy
    memory = EnergyMemory(GatedRNNEnergy(hidden_size=256), data_range=(-1.0, 1.0))
    state = memory.write(patterns)                 # MemoryState: the writable weights for this episode
    retrieved = memory.recall(state, queries, mask=known_bits)
"""

from ebmm_tf.energies import (
    EnergyNetwork,
    GatedRNNEnergy,
    ResBlock,
    ResNetConvEnergy,
    ResNetFCEnergy,
    ResNetLowerConvEnergy,
    SlotEnergy,
    imagenet_conv_energy,
)
from ebmm_tf.layers import Conv, LayerNorm, Linear, WritableConv2D, WritableDense
from ebmm_tf.memory import EnergyMemory, MemoryState
from ebmm_tf.meta import MetaLearner, meta_loss

__version__ = "0.1.0"

__all__ = [
    "EnergyMemory",
    "MemoryState",
    "MetaLearner",
    "meta_loss",
    "EnergyNetwork",
    "GatedRNNEnergy",
    "SlotEnergy",
    "ResNetFCEnergy",
    "ResNetConvEnergy",
    "ResNetLowerConvEnergy",
    "ResBlock",
    "imagenet_conv_energy",
    "LayerNorm",
    "Linear",
    "Conv",
    "WritableDense",
    "WritableConv2D",
]
