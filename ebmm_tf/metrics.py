"""Retrieval error metrics and their summary, in one place (paper Sections 4.1-4.3, A.2).

* :func:`hamming_error`: number of differing dimensions per pattern after binarizing both tensors at
  the midpoint of the data range (``> 0.5`` for {0, 1} images, i.e. Omniglot and MNIST; ``> 0``, the
  sign, for {-1, +1} binary strings; a value exactly at the midpoint counts as the low value).
* :func:`squared_error`: per-pattern sum of squared differences over all dimensions (CIFAR-10, ImageNet).
* :func:`error_metric` / :func:`per_pattern_error`: the paper's error of a data source (Hamming for the binary
  sources of ``ebmm_tf.data.BINARY_SOURCES``, squared otherwise).
* :class:`ErrorSummary`: the paper reports the mean with 5th and 95th percentiles "computed on a 1000 of
  random batches" (Appendix A, "Error bars"): accumulate the per-pattern errors of each test batch; the
  mean is over all patterns, the percentiles over the per-batch mean errors.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf


def _flat(x) -> tf.Tensor:
    x = tf.convert_to_tensor(x)
    if x.shape.rank is not None and x.shape.rank < 2:
        raise ValueError(f"Expected a batch [N, ...] of patterns, got shape {x.shape}")
    return tf.reshape(x, [tf.shape(x)[0], -1])


def hamming_error(originals, retrieved, data_range: Sequence[float] = (0.0, 1.0)) -> tf.Tensor:
    """float32 [N]: dimensions that differ after binarization at the midpoint of ``data_range``."""
    lo, hi = (float(v) for v in data_range)
    mid = 0.5 * (lo + hi)
    a = _flat(originals)
    b = _flat(retrieved)
    a_bits = tf.cast(a, tf.float32) > mid
    b_bits = tf.cast(b, tf.float32) > mid
    return tf.reduce_sum(tf.cast(tf.not_equal(a_bits, b_bits), tf.float32), axis=1)


def squared_error(originals, retrieved) -> tf.Tensor:
    """float32 [N]: sum over all dimensions of (original - retrieved)^2."""
    a = tf.cast(_flat(originals), tf.float32)
    b = tf.cast(_flat(retrieved), tf.float32)
    return tf.reduce_sum(tf.square(a - b), axis=1)


def error_metric(source: str) -> str:
    """``"hamming"`` for binary sources, else ``"squared"``."""
    from ebmm_tf.data import registry

    return "hamming" if registry.is_binary(source) else "squared"


def per_pattern_error(source, originals, retrieved) -> tf.Tensor:
    """float32 [N]: the paper's error of ``source`` between ``originals`` and ``retrieved``."""
    from ebmm_tf.data import registry

    if error_metric(source) == "hamming":
        return hamming_error(originals, retrieved, registry.data_range(source))
    return squared_error(originals, retrieved)


class ErrorSummary:
    """Accumulates per-pattern errors batch by batch; ``result()`` gives mean and 5/95 percentiles.

    ``accumulate(batch_errors)`` takes the [N] errors of one test batch (tensor or array). ``result()``
    returns ``dict(mean, p5, p95, num_batches, num_patterns)``: ``mean`` over all patterns, ``p5``/``p95``
    the 5th/95th percentiles of the per-batch mean errors (NaN before any batch).
    """

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self._batch_means: list[float] = []
        self._sum = 0.0
        self._count = 0

    def accumulate(self, batch_errors) -> None:
        e = np.asarray(batch_errors, dtype=np.float64).reshape(-1)
        if e.size == 0:
            raise ValueError("Empty batch of errors")
        self._batch_means.append(float(e.mean()))
        self._sum += float(e.sum())
        self._count += int(e.size)

    @property
    def batch_means(self) -> np.ndarray:
        return np.asarray(self._batch_means)

    def result(self) -> dict:
        if not self._batch_means:
            nan = float("nan")
            return {"mean": nan, "p5": nan, "p95": nan, "num_batches": 0, "num_patterns": 0}
        p5, p95 = np.percentile(self._batch_means, [5.0, 95.0])
        return {
            "mean": self._sum / self._count,
            "p5": float(p5),
            "p95": float(p95),
            "num_batches": len(self._batch_means),
            "num_patterns": self._count,
        }
