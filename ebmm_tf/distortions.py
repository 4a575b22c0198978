"""Distortion models p(x~ | x) that turn stored patterns into retrieval queries (paper Sections 3-4, A.2, A.5).

Every distortion is a gin-configurable callable ``d(patterns, seed) -> Distorted`` built only from
stateless TensorFlow ops: ``seed`` is a shape-[2] int32/int64 tensor and the same seed always gives the
same result (a scalar int is accepted too and read as ``[seed, 0]``). ``patterns`` is float32
``[N, ...]``: images ``[N, H, W, C]`` (or ``[N, H, W]``), binary strings ``[N, D]`` in {-1, +1}.

* :class:`BlockNoise`: a ``size x size`` square at a uniformly random position, drawn independently for
  each image among all positions that keep the block fully inside the image, is overwritten (the
  same block covers every channel). The paper's queries: 16x16 random binary block for Omniglot (4.1),
  the same for CIFAR-10 (4.2), 32x32 for ImageNet 64x64 (4.3), 20x20 etc. in A.5.
* :class:`SaltAndPepper`: each pixel independently, with probability ``rate``, is set to the low or high
  end of the data range with equal probability (A.5, Figure 9b: rates up to ~0.3; 15% in A.4). For
  ``[N, H, W, C]`` images a pixel is one spatial position (all its channels get the same value: black or
  white); for other ranks each entry is a pixel.
* :class:`BinaryStringProtocol`: A.2: keep exactly ``num_known`` (64) randomly chosen bits
  of each pattern and replace every other bit by a fresh random +-1; the kept bits form the clamp mask
  that retrieval must hold fixed.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import tensorflow as tf

import gin


class Distorted(NamedTuple):
    """Result of a distortion; all three have the shape and dtype of the patterns.

    query: the distorted patterns.
    corrupted: 1.0 where the query differs in distribution from the pattern (the whole block, the
      salt-and-pepper pixels, the replaced bits), even where a random fill happens to equal the original.
    clamp: 1.0 where retrieval must keep the query's value (binary-string protocol: the kept bits);
      all zeros for the image distortions.
    """

    query: tf.Tensor
    corrupted: tf.Tensor
    clamp: tf.Tensor


def as_seed(seed) -> tf.Tensor:
    """A shape-[2] int64 seed tensor from a tensor/array/list of two ints or a scalar int.

    Always int64: ``stateless_split`` keeps its input's dtype, so int32 and int64 seeds with the same
    values would otherwise give different streams.
    """
    s = tf.cast(tf.convert_to_tensor(seed), tf.int64)
    if s.shape.rank == 0:
        s = tf.stack([s, tf.zeros_like(s)])
    return s


def _split(seed, n: int):
    return tf.unstack(tf.random.experimental.stateless_split(as_seed(seed), n))


def _range(data_range: Sequence[float]) -> tuple[float, float]:
    lo, hi = (float(v) for v in data_range)
    if not lo < hi:
        raise ValueError(f"data_range must be (lo, hi) with lo < hi, got {data_range}")
    return lo, hi


@gin.configurable(module="ebmm_tf.distortions")
class BlockNoise:
    """Square block at a uniformly random valid position, independently per image.

    Args:
      size: block side (int) or (height, width). Must fit in the image.
      fill: "random" = each entry of the block is lo or hi with probability 1/2 (binary data; the paper's
        "randomly positioned binary distortions"); "uniform" = U(lo, hi) per entry (continuous data);
        "constant" = ``value``.
      value: fill value for ``fill="constant"``.
      data_range: (lo, hi) of the data.
    """

    FILLS = ("random", "uniform", "constant")

    def __init__(self, size=16, fill: str = "random", value: float = 0.0, data_range=(0.0, 1.0)):
        if isinstance(size, int):
            size = (size, size)
        self.size = tuple(int(s) for s in size)
        if len(self.size) != 2 or min(self.size) < 1:
            raise ValueError(f"size must be a positive int or a pair, got {size}")
        if fill not in self.FILLS:
            raise ValueError(f"fill must be one of {self.FILLS}, got {fill!r}")
        self.fill = fill
        self.value = float(value)
        self.data_range = _range(data_range)

    def __repr__(self):
        return f"BlockNoise(size={self.size}, fill={self.fill!r}, value={self.value}, data_range={self.data_range})"

    def __call__(self, patterns, seed) -> Distorted:
        x = tf.convert_to_tensor(patterns)
        if x.shape.rank not in (3, 4):
            raise ValueError(f"BlockNoise expects images [N, H, W(, C)], got shape {x.shape}")
        squeeze = x.shape.rank == 3
        if squeeze:
            x = x[..., None]
        bh, bw = self.size
        if (x.shape[1] is not None and bh > x.shape[1]) or (x.shape[2] is not None and bw > x.shape[2]):
            raise ValueError(f"Block {self.size} does not fit in images of shape {x.shape[1:3]}")
        shape = tf.shape(x)
        n, h, w = shape[0], shape[1], shape[2]
        s_y, s_x, s_fill = _split(seed, 3)
        y0 = tf.random.stateless_uniform([n], seed=s_y, minval=0, maxval=h - bh + 1, dtype=tf.int32)
        x0 = tf.random.stateless_uniform([n], seed=s_x, minval=0, maxval=w - bw + 1, dtype=tf.int32)
        rows, cols = tf.range(h)[None, :], tf.range(w)[None, :]
        in_rows = (rows >= y0[:, None]) & (rows < y0[:, None] + bh)  # [N, H]
        in_cols = (cols >= x0[:, None]) & (cols < x0[:, None] + bw)  # [N, W]
        mask = tf.broadcast_to(in_rows[:, :, None, None] & in_cols[:, None, :, None], shape)
        lo, hi = self.data_range
        if self.fill == "random":
            fill = tf.where(tf.random.stateless_uniform(shape, seed=s_fill) < 0.5, lo, hi)
        elif self.fill == "uniform":
            fill = tf.random.stateless_uniform(shape, seed=s_fill, minval=lo, maxval=hi)
        else:
            fill = tf.fill(shape, self.value)
        query = tf.where(mask, tf.cast(fill, x.dtype), x)
        corrupted = tf.cast(mask, x.dtype)
        out = Distorted(query, corrupted, tf.zeros_like(x))
        if squeeze:
            out = Distorted(*(t[..., 0] for t in out))
        return out


@gin.configurable(module="ebmm_tf.distortions")
class SaltAndPepper:
    """Each pixel independently corrupted with probability ``rate``, set to lo or hi with equal odds (A.5)."""

    def __init__(self, rate: float = 0.15, data_range=(0.0, 1.0)):
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate must be in [0, 1], got {rate}")
        self.rate = float(rate)
        self.data_range = _range(data_range)

    def __repr__(self):
        return f"SaltAndPepper(rate={self.rate}, data_range={self.data_range})"

    def __call__(self, patterns, seed) -> Distorted:
        x = tf.convert_to_tensor(patterns)
        shape = tf.shape(x)
        # For [N, H, W, C] images a pixel spans the channels; otherwise every entry is a pixel.
        mshape = tf.concat([shape[:-1], [1]], 0) if x.shape.rank == 4 else shape
        s_hit, s_val = _split(seed, 2)
        hit = tf.random.stateless_uniform(mshape, seed=s_hit) < self.rate
        lo, hi = self.data_range
        value = tf.where(tf.random.stateless_uniform(mshape, seed=s_val) < 0.5, lo, hi)
        hit = tf.broadcast_to(hit, shape)
        query = tf.where(hit, tf.cast(tf.broadcast_to(value, shape), x.dtype), x)
        return Distorted(query, tf.cast(hit, x.dtype), tf.zeros_like(x))


@gin.configurable(module="ebmm_tf.distortions")
class BinaryStringProtocol:
    """A.2: keep exactly ``num_known`` random bits per pattern, replace the rest by random +-1.

    Returns ``clamp`` = 1 on the kept bits (retrieval clamps them) and ``corrupted = 1 - clamp``.
    Patterns are [N, D] (or [N, ...], flattened per pattern) with values in {-1, +1}.
    """

    clamps = True  # retrieval must clamp the kept bits (the trainer and evaluator pass ``clamp`` as the read mask)

    def __init__(self, num_known: int = 64):
        if num_known < 0:
            raise ValueError(f"num_known must be >= 0, got {num_known}")
        self.num_known = int(num_known)

    def __repr__(self):
        return f"BinaryStringProtocol(num_known={self.num_known})"

    def __call__(self, patterns, seed) -> Distorted:
        x = tf.convert_to_tensor(patterns)
        shape = tf.shape(x)
        n = shape[0]
        flat = tf.reshape(x, [n, -1])
        d_static = flat.shape[1]
        if d_static is not None and self.num_known > d_static:
            raise ValueError(f"num_known={self.num_known} exceeds the pattern dimension {d_static}")
        d = tf.shape(flat)[1]
        s_keep, s_bits = _split(seed, 2)
        u = tf.random.stateless_uniform([n, d], seed=s_keep)
        kept = tf.math.top_k(u, k=self.num_known).indices  # [N, num_known], distinct per row
        clamp = tf.reduce_sum(tf.one_hot(kept, d, dtype=x.dtype), axis=1)  # exactly num_known ones per row
        bits = tf.random.stateless_uniform([n, d], seed=s_bits, minval=0, maxval=2, dtype=tf.int32)
        random_pm1 = tf.cast(2 * bits - 1, x.dtype)
        query = tf.where(clamp > 0, flat, random_pm1)
        reshape = lambda t: tf.reshape(t, shape)
        return Distorted(reshape(query), reshape(1.0 - clamp), reshape(clamp))
