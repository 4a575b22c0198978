"""Datasets of the paper as seeded, checkpointable ``tf.data`` episode streams (offline first).

Sources (``SOURCES``): ``"binary_strings"`` (A.2, generated), ``"omniglot"`` (4.1; 32x32 binarized),
``"cifar10"`` (4.2; RGB in [0, 1]), ``"imagenet64"`` (4.3; TFDS ``imagenet_resized/64x64`` or, offline, a
Tiny ImageNet **stand-in**), ``"mnist"`` (A.6; 32x32 binarized) and ``"sklearn_digits"`` (a small
**stand-in** for MNIST, for tests). Real data is looked up in ``data_dir``, then ``$EBMM_DATA_DIR`` (the
official distribution layouts), then in a prepared TFDS data dir (never downloaded); otherwise
:class:`DatasetNotFoundError` explains how to provide it. Decoded arrays are cached in
``$EBMM_CACHE_DIR`` (default ``~/.cache/ebmm_tf``).
"""

from ebmm_tf.data.common import DatasetNotFoundError, RawSplit
from ebmm_tf.data.episodes import episode_seeds, make_episodes
from ebmm_tf.data.registry import (
    BINARY_SOURCES,
    SOURCES,
    SPLITS,
    data_range,
    dataset_info,
    is_binary,
    load_raw,
    load_split,
    pattern_shape,
)
from ebmm_tf.data.samplers import CorrelatedSampler, uniform_indices

__all__ = [
    "DatasetNotFoundError",
    "RawSplit",
    "SOURCES",
    "SPLITS",
    "BINARY_SOURCES",
    "CorrelatedSampler",
    "data_range",
    "dataset_info",
    "episode_seeds",
    "is_binary",
    "load_raw",
    "load_split",
    "make_episodes",
    "pattern_shape",
    "uniform_indices",
]
