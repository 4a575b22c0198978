"""The episode pipeline: an infinite, seeded, checkpointable ``tf.data`` stream of written batches.

An *episode* is one batch of N patterns that a memory model writes, plus the queries made from them by
a distortion model (paper Section 4: "we write a fixed-sized batch of images into a memory model, then
corrupt a random block of the written image to form a query"). Episode ``i`` is a pure function of
``(seed, i)``: ``key_i = stateless_fold_in([seed, 0], i)`` is split into a sampling seed and a distortion
seed, and everything downstream uses stateless ops. The pipeline is ``Dataset.counter()`` -> ``map``
over the in-memory split, so ``tf.train.Checkpoint(it=iterator)`` restores the exact stream (the
captured image array is not written into the checkpoint, only the counter position and buffers).
"""

from __future__ import annotations

import logging

import numpy as np
import tensorflow as tf

import gin
from ebmm_tf.data import binary_strings, registry, samplers

logger = logging.getLogger("ebmm_tf.data")

SAMPLERS = ("uniform", "correlated")


def episode_seeds(seed: int, index, stream: int = 0) -> tuple[tf.Tensor, tf.Tensor]:
    """(sampling seed, distortion seed), each shape-[2] int64, of episode ``index`` of stream ``seed``.

    ``stream`` keeps other per-episode streams drawn from the same seed apart (the data episodes use 0).
    """
    key = tf.random.experimental.stateless_fold_in(
        tf.constant([int(seed), int(stream)], tf.int64), tf.cast(index, tf.int64)
    )
    s_sample, s_dist = tf.unstack(tf.random.experimental.stateless_split(key, 2))
    return s_sample, s_dist


@gin.configurable(module="ebmm_tf.data")
def make_episodes(
    source: str,
    split: str,
    num_patterns: int,
    distortion=None,
    seed: int = 0,
    data_dir=None,
    sampler: str = "uniform",
    num_classes: int = 2,
    dim: int = 128,
    *,
    tfds_data_dir=None,
    with_indices: bool = False,
    start: int = 0,
) -> tf.data.Dataset:
    """Infinite dataset of episodes ``{"patterns", "queries", "corrupted", "clamp"}`` (float32, [N, ...]).

    Args:
      source: one of ``ebmm_tf.data.SOURCES``; ``"binary_strings"`` generates ``dim`` random +-1 bits
        per pattern (Appendix A.2); the others sample from the in-memory split (see ``load_split``).
      split: one of ``ebmm_tf.data.SPLITS``: "train", "test", or the two parts of "train", "validation" and
        "train_minus_validation" (see ``ebmm_tf.data.registry``).
      num_patterns: N, patterns per episode (drawn without replacement within an episode).
      distortion: a callable ``(patterns, seed) -> Distorted`` (``ebmm_tf.distortions``), or a
        distortion class (instantiated with its gin defaults), or None: queries = patterns and the
        ``corrupted`` / ``clamp`` masks are zeros.
      seed: stream seed; the same seed gives the same stream.
      data_dir: dataset directory (official layout or TFDS data dir), see ``ebmm_tf.data.common``.
      sampler: "uniform" (Section 4) or "correlated" (Appendix A.7: exactly ``num_classes`` classes per
        episode, balanced counts; needs labels).
      num_classes: k for the correlated sampler.
      dim: bit count for binary strings.
      tfds_data_dir: TFDS data dir to try after ``data_dir`` (default ``$TFDS_DATA_DIR`` or
        ``~/tensorflow_datasets``).
      with_indices: also return ``"indices"`` (int32 [N], positions in the split; -1 for binary strings).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    if num_patterns < 1:
        raise ValueError(f"num_patterns must be positive, got {num_patterns}")
    if isinstance(distortion, type):
        distortion = distortion()
    shape = registry.pattern_shape(source, dim)

    if source == "binary_strings":
        if sampler != "uniform":
            raise ValueError("binary_strings episodes are random: only sampler='uniform' applies")

        def draw(s_sample):
            return binary_strings.generate(num_patterns, s_sample, dim), tf.fill([num_patterns], -1)
    else:
        raw = registry.load_raw(source, split, data_dir, tfds_data_dir=tfds_data_dir)
        logger.info(
            "Episodes of %d from %s (%s, %d images%s).",
            num_patterns,
            raw.info["description"],
            raw.info["origin"],
            raw.info["num_examples"],
            ", STAND-IN" if raw.info["standin"] else "",
        )
        images = tf.constant(raw.images)
        scale = np.float32(raw.scale)
        if sampler == "uniform":
            num_items = int(raw.images.shape[0])
            pick = lambda s: samplers.uniform_indices(s, num_items, num_patterns)
        else:
            if raw.labels is None:
                raise ValueError(f"The correlated sampler needs labels; {source} has none.")
            pick = samplers.CorrelatedSampler(raw.labels, num_patterns, num_classes)

        def draw(s_sample):
            idx = pick(s_sample)
            return tf.cast(tf.gather(images, idx), tf.float32) * scale, idx

    def episode(index):
        s_sample, s_dist = episode_seeds(seed, index)
        patterns, idx = draw(s_sample)
        patterns = tf.ensure_shape(patterns, (num_patterns,) + tuple(shape))
        if distortion is None:
            zeros = tf.zeros_like(patterns)
            out = {"patterns": patterns, "queries": patterns, "corrupted": zeros, "clamp": zeros}
        else:
            d = distortion(patterns, s_dist)
            out = {
                "patterns": patterns,
                "queries": tf.cast(d.query, tf.float32),
                "corrupted": tf.cast(d.corrupted, tf.float32),
                "clamp": tf.cast(d.clamp, tf.float32),
            }
        if with_indices:
            out["indices"] = tf.cast(idx, tf.int32)
        return out

    ds = tf.data.Dataset.counter(start=int(start), dtype=tf.int64)
    ds = ds.map(episode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(2)
