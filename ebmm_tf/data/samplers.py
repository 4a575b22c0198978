"""Episode samplers: which N items of a split form one episode (one written batch).

All samplers are pure TensorFlow functions of a shape-[2] seed (stateless ops only), so an episode is
a deterministic function of its seed and a ``tf.data`` pipeline built from them is checkpointable.

* :func:`uniform_indices`: N distinct items drawn uniformly (paper Section 4: "Batches were sampled
  uniformly"): the N largest of M i.i.d. uniforms, i.e. a uniformly random N-subset, in random order.
* :class:`CorrelatedSampler`: Appendix A.7, "each batch of 32 images has characters of exactly two
  classes". Draws k distinct classes uniformly among the classes that have at least ceil(N / k)
  items, then a balanced number of distinct items from each (N // k each; the N % k leftover items go
  to randomly chosen classes), then shuffles the episode. Every episode therefore holds exactly k
  classes. For Omniglot a class is a character (``<Alphabet>/characterNN``, 20 drawings each).
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf


def _random_order(n, seed):
    """A uniformly random permutation of range(n) (argsort of i.i.d. uniforms)."""
    return tf.argsort(tf.random.stateless_uniform([n], seed=seed), stable=True)


def uniform_indices(seed, num_items: int, num_patterns: int) -> tf.Tensor:
    """int32 [num_patterns]: distinct indices into ``range(num_items)``, uniformly random subset and order."""
    if num_patterns > num_items:
        raise ValueError(f"Cannot draw {num_patterns} distinct patterns from {num_items}.")
    u = tf.random.stateless_uniform([num_items], seed=seed)
    return tf.math.top_k(u, k=num_patterns, sorted=True).indices


class CorrelatedSampler:
    """Episodes of ``num_patterns`` items from exactly ``num_classes`` classes (Appendix A.7).

    Args:
      labels: int array [M] of class ids of the split.
      num_patterns: N, items per episode.
      num_classes: k, classes per episode (2 in the paper).
    Call with a shape-[2] seed to get int32 [N] indices into the split.
    """

    def __init__(self, labels, num_patterns: int, num_classes: int = 2):
        labels = np.asarray(labels)
        if labels.ndim != 1:
            raise ValueError("labels must be a 1-D array of class ids")
        if num_classes < 1 or num_classes > num_patterns:
            raise ValueError(f"num_classes must be in [1, num_patterns={num_patterns}], got {num_classes}")
        self.num_patterns = int(num_patterns)
        self.num_classes = int(num_classes)
        self.per_class_max = math.ceil(num_patterns / num_classes)
        classes, counts = np.unique(labels, return_counts=True)
        eligible = classes[counts >= self.per_class_max]
        if len(eligible) < num_classes:
            raise ValueError(
                f"Only {len(eligible)} classes have at least {self.per_class_max} items; cannot draw "
                f"{num_patterns} patterns from exactly {num_classes} classes."
            )
        members = [np.flatnonzero(labels == c) for c in eligible]
        self.classes = eligible
        self._order = tf.constant(np.concatenate(members).astype(np.int32))
        sizes = np.array([len(m) for m in members], np.int32)
        self._sizes = tf.constant(sizes)
        self._offsets = tf.constant(np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int32))
        self._max_size = int(sizes.max())
        base = num_patterns // num_classes
        self._counts = tf.constant([base + (j < num_patterns % num_classes) for j in range(num_classes)], tf.int32)

    def __call__(self, seed) -> tf.Tensor:
        seed = tf.cast(seed, tf.int64)  # stateless_split keeps the seed dtype: fix it so int32/int64 agree
        s_cls, s_items, s_order = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
        num_eligible = int(self._sizes.shape[0])
        cls = tf.math.top_k(tf.random.stateless_uniform([num_eligible], seed=s_cls), k=self.num_classes).indices
        sizes = tf.gather(self._sizes, cls)  # [k]
        u = tf.random.stateless_uniform([self.num_classes, self._max_size], seed=s_items)
        valid = tf.range(self._max_size)[None, :] < sizes[:, None]
        u = tf.where(valid, u, -1.0)  # padding positions are never among the top per_class_max
        picks = tf.math.top_k(u, k=self.per_class_max).indices  # [k, per_class_max], distinct within a row
        take = tf.range(self.per_class_max)[None, :] < self._counts[:, None]
        positions = tf.boolean_mask(tf.gather(self._offsets, cls)[:, None] + picks, take)
        idx = tf.gather(self._order, positions)
        idx = tf.gather(idx, _random_order(self.num_patterns, s_order))
        return tf.ensure_shape(idx, [self.num_patterns])
