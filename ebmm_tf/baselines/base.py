"""Common part of the learned baselines: the ``EnergyMemory`` interface without an energy.

A baseline is a Keras model with the methods that ``ebmm_tf.meta.meta_loss``, ``ebmm_tf.trainer.Experiment``
and ``ebmm_tf.evaluate`` use:

* ``write(patterns [N, *pattern_shape], first_order=None) -> MemoryState`` (``first_order`` is accepted and
  ignored: a baseline's write has no inner gradient);
* ``read(state, queries [M, *pattern_shape], mask=None) -> [x_1, ..., x_K]`` (list of read iterates; with a
  clamp ``mask``, 1 = known, the known dimensions keep the query's value, A.2);
* ``recall(state, queries, mask=None) -> x_K``;
* ``reconstruction_loss(patterns, iterates) -> (sum_k mean_i ||x_i - x_i^(k)||^2, per_step [K])``, B.4's
  step-wise loss, which for one iterate is the paper's loss (2);
* ``memory_size()`` (floats of the written state, Section 4's definition), ``data_range``, ``pattern_shape``.

Decoded outputs are squashed into the data range: ``lo + (hi - lo) * sigmoid(logits)``.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from ebmm_tf.contract import RecallMixin

__all__ = ["BaselineMemory", "LIKELIHOODS", "PixelLikelihood", "RangeOutputs", "check_data_range"]

LIKELIHOODS = ("bernoulli", "gaussian")


def check_data_range(data_range) -> tuple[float, float]:
    """``(lo, hi)`` as floats; raises ``ValueError`` unless ``lo < hi``."""
    lo, hi = (float(v) for v in data_range)
    if not lo < hi:
        raise ValueError(f"data_range must be (lo, hi) with lo < hi, got {data_range}")
    return lo, hi


class RangeOutputs:
    """Output squashing and clamping shared by every learned baseline (needs ``data_range`` and ``_cast``)."""

    def squash(self, logits):
        """Decoder logits -> the data range: ``lo + (hi - lo) * sigmoid(logits)``."""
        lo, hi = self.data_range
        return lo + (hi - lo) * tf.sigmoid(logits)

    def _clamp_fn(self, queries, mask):
        if mask is None:
            return lambda x: x
        mask = self._cast(mask, "mask")
        known = queries * mask
        keep = 1.0 - mask
        return lambda x: x * keep + known


class PixelLikelihood:
    """The factorised pixel likelihood of the generative baselines (VAE, Kanerva Machine) over decoder logits.

    ``"bernoulli"``: ``-log p(x | logits) = sum_d BCE((x_d - lo) / (hi - lo), logits_d)``, mode ``hi`` where
    ``logits > 0`` else ``lo``. ``"gaussian"``: mean ``squash(logits)``, one learned scale ``sigma`` (weight
    ``log_scale``), ``-log p = sum_d (x_d - m_d)^2 / (2 sigma^2) + log sigma + log(2 pi) / 2``, mode = the mean.
    Needs ``data_range``, ``pattern_shape``, ``squash`` and ``add_weight``; call ``_init_likelihood`` in ``__init__``.
    """

    def _init_likelihood(self, likelihood):
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
        self.likelihood = likelihood
        if likelihood == "gaussian":
            self.log_scale = self.add_weight(name="log_scale", shape=(), initializer="zeros")

    def pixel_nll(self, x, logits):
        """``-log p(x | logits)`` per pattern ``[B]`` (x in the data range)."""
        axes = list(range(1, len(self.pattern_shape) + 1))
        lo, hi = self.data_range
        if self.likelihood == "bernoulli":
            bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=(x - lo) / (hi - lo), logits=logits)
            return tf.reduce_sum(bce, axis=axes)
        log_scale = tf.cast(self.log_scale, x.dtype)
        sq = tf.square(x - self.squash(logits)) * (0.5 * tf.exp(-2.0 * log_scale))
        return tf.reduce_sum(sq + log_scale + 0.5 * math.log(2.0 * math.pi), axis=axes)

    def pixel_mode(self, logits):
        """``argmin_x -log p(x | logits)``: the Bernoulli mode or the Gaussian mean, in the data range."""
        if self.likelihood == "bernoulli":
            lo, hi = self.data_range
            return tf.where(logits > 0, tf.cast(hi, logits.dtype), tf.cast(lo, logits.dtype))
        return self.squash(logits)


class BaselineMemory(RangeOutputs, RecallMixin, keras.Model):
    """Base class of the learned baselines over a shared encoder/decoder ``network`` (``project``, ``recall``,
    ``reconstruction_loss`` and ``call`` come from ``ebmm_tf.contract.RecallMixin``).

    Args:
      network: a ``ConvAutoEncoder`` or ``DenseAutoEncoder`` (``ebmm_tf.baselines.networks``).
      data_range: ``(lo, hi)`` of the patterns.
    """

    def __init__(self, network, data_range=(0.0, 1.0), **kwargs):
        super().__init__(**kwargs)
        for attr in ("encode", "decode", "pattern_shape", "encoding_size"):
            if not hasattr(network, attr):
                raise TypeError(f"network must be an encoder/decoder with `{attr}`, got {type(network).__name__}")
        self.network = network
        self.data_range = check_data_range(data_range)

    @property
    def pattern_shape(self) -> tuple[int, ...]:
        return tuple(self.network.pattern_shape)

    def memory_size(self) -> int:
        raise NotImplementedError

    def get_config(self):
        config = super().get_config()
        config.update(network=keras.saving.serialize_keras_object(self.network), data_range=list(self.data_range))
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["network"] = keras.saving.deserialize_keras_object(config["network"])
        return cls(**config)
