"""Tiny float64 energy networks and helpers shared by the core tests."""

import keras
import numpy as np
import tensorflow as tf

import ebmm_tf
from ebmm_tf.energies import EnergyNetwork
from ebmm_tf.layers import Linear, WritableDense


@keras.saving.register_keras_serializable(package="ebmm_tf_tests")
class OneLayerEnergy(EnergyNetwork):
    """``E(x) = v . tanh(x M + b)`` with ``(M, b)`` writable: small enough for closed-form gradients."""

    def __init__(self, dim=5, hidden=4, **kwargs):
        super().__init__(pattern_shape=(dim,), **kwargs)
        self.dim, self.hidden = dim, hidden
        self.memory = WritableDense(dim, 0, hidden, name="memory", dtype=self.dtype_policy)
        self.out = Linear(hidden, 1, use_bias=False, name="out", dtype=self.dtype_policy)
        self.built = True

    def call(self, x, memory=None):
        return tf.squeeze(self.out(tf.tanh(self.memory(x, memory))), -1)

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "hidden": self.hidden}


def tiny_rnn(dtype="float64", **kw):
    return ebmm_tf.GatedRNNEnergy(input_size=6, hidden_size=8, hops=3, dynamic_size=3, dtype=dtype, **kw)


def tiny_conv(dtype="float64", **kw):
    return ebmm_tf.ResNetConvEnergy(
        pattern_shape=(8, 8, 1), channels=2, hidden_size=3, dynamic_size=2, head_size=4, hops=2, dtype=dtype, **kw
    )


def tiny_fc(dtype="float64", **kw):
    return ebmm_tf.ResNetFCEnergy(
        pattern_shape=(8, 8, 1),
        channels=2,
        hidden_size=4,
        representation_size=6,
        dynamic_size=2,
        encoding_size=4,
        head_size=4,
        hops=2,
        dtype=dtype,
        **kw,
    )


def tiny_lower(dtype="float64", **kw):
    return ebmm_tf.ResNetLowerConvEnergy(
        pattern_shape=(8, 8, 1), channels=2, hidden_size=3, dynamic_size=1, head_size=4, hops=2, dtype=dtype, **kw
    )


def episode(shape, n, data_range=(0.0, 1.0), seed=0, dtype=np.float64, clamp=False):
    """Random patterns/queries strictly inside the data range (no projection ties for finite differences)."""
    rng = np.random.default_rng(seed)
    lo, hi = data_range
    pad = 0.1 * (hi - lo)
    ep = {
        "patterns": rng.uniform(lo + pad, hi - pad, size=(n,) + tuple(shape)).astype(dtype),
        "queries": rng.uniform(lo + pad, hi - pad, size=(n,) + tuple(shape)).astype(dtype),
    }
    if clamp:
        ep["clamp"] = (rng.uniform(size=(n,) + tuple(shape)) < 0.5).astype(dtype)
    return ep
