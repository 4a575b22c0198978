"""Source names, their data ranges and pattern shapes, and :func:`load_split`.

Splits: ``"train"`` and ``"test"`` are the dataset's own (the paper trains on the first and reports on the
second). ``"validation"`` and ``"train_minus_validation"`` partition ``"train"``, so that model selection never
looks at the test split: meta-training uses the second and selects checkpoints on the first (the default of
``ebmm_tf.trainer.Experiment``). The validation part is fixed (no seed): for sources with one class per
character (Omniglot) it is every ``VALIDATION_EVERY``-th class (whole characters held out, as the test alphabets
are), for the others every ``VALIDATION_EVERY``-th image of the training split.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ebmm_tf.data import binary_strings, cifar10, common, imagenet64, mnist, omniglot

_SHAPES = {
    "omniglot": omniglot.IMAGE_SHAPE,  # binarized, {0, 1}
    "cifar10": cifar10.IMAGE_SHAPE,  # RGB in [0, 1]
    "imagenet64": imagenet64.IMAGE_SHAPE,  # RGB in [0, 1] (offline: Tiny ImageNet stand-in)
    "mnist": mnist.IMAGE_SHAPE,  # binarized, {0, 1}
    "sklearn_digits": mnist.IMAGE_SHAPE,  # MNIST stand-in, binarized, {0, 1}
}
SOURCES = ("binary_strings",) + tuple(_SHAPES)
# Sources whose patterns are binary: their error is the Hamming distance after binarization (paper 4.1, A.2);
# the others' is the squared error (4.2, 4.3).
BINARY_SOURCES = ("binary_strings", "omniglot", "mnist", "sklearn_digits")
SPLITS = ("train", "test", "validation", "train_minus_validation")
VALIDATION_EVERY = 10  # 1 in 10 classes (Omniglot) or images (others) of the training split is held out
_HOLD_OUT_CLASSES = ("omniglot",)  # sources whose validation split holds out whole classes


def _check(source: str) -> None:
    if source not in SOURCES:
        raise ValueError(f"Unknown source {source!r}; expected one of {SOURCES}")


def is_binary(source: str) -> bool:
    """Whether the patterns of ``source`` are binary (+-1 strings, {0, 1} images)."""
    _check(source)
    return source in BINARY_SOURCES


def data_range(source: str) -> tuple[float, float]:
    """(-1, 1) for binary strings, (0, 1) for every image source."""
    _check(source)
    return (-1.0, 1.0) if source == "binary_strings" else (0.0, 1.0)


def pattern_shape(source: str, dim: int = binary_strings.DEFAULT_DIM) -> tuple[int, ...]:
    """Shape of one pattern: (dim,) for binary strings, (H, W, C) for images."""
    _check(source)
    return (int(dim),) if source == "binary_strings" else tuple(_SHAPES[source])


def load_raw(source: str, split: str, data_dir=None, *, tfds_data_dir=None) -> common.RawSplit:
    """Loads a split as a :class:`~ebmm_tf.data.common.RawSplit` (uint8 storage + scale + provenance)."""
    _check(source)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if source == "binary_strings":
        raise ValueError(
            "binary_strings has no stored data: patterns are generated per episode "
            "(use make_episodes('binary_strings', ...) or binary_strings.generate)."
        )
    stored = "test" if split == "test" else "train"  # validation parts are cut from the training split
    if source == "sklearn_digits":
        raw = mnist.load_digits_standin(stored)
    else:
        module = {"omniglot": omniglot, "cifar10": cifar10, "imagenet64": imagenet64, "mnist": mnist}[source]
        raw = module.load(stored, data_dir=data_dir, tfds_data_dir=tfds_data_dir)
    return raw if split in ("train", "test") else _partition(source, raw, split)


def validation_mask(source: str, num_examples: int, labels=None) -> np.ndarray:
    """bool [num_examples]: which examples of the training split form the validation split."""
    if source in _HOLD_OUT_CLASSES and labels is not None:
        return np.asarray(labels) % VALIDATION_EVERY == VALIDATION_EVERY - 1
    return np.arange(num_examples) % VALIDATION_EVERY == VALIDATION_EVERY - 1


def _partition(source: str, raw: common.RawSplit, split: str) -> common.RawSplit:
    """The ``"validation"`` or ``"train_minus_validation"`` part of the dataset's training split ``raw``."""
    held = validation_mask(source, raw.images.shape[0], raw.labels)
    keep = held if split == "validation" else ~held
    labels = None if raw.labels is None else raw.labels[keep]
    if labels is not None and source in _HOLD_OUT_CLASSES:
        labels = np.unique(labels, return_inverse=True)[1].astype(np.int32)  # contiguous again
    unit = "classes" if source in _HOLD_OUT_CLASSES and raw.labels is not None else "images"
    info = dict(raw.info)
    info.update(
        split=split,
        num_examples=int(keep.sum()),
        description=f"{raw.info['description']} [{split}: "
        + ("every" if split == "validation" else "all but every")
        + f" {VALIDATION_EVERY}th of the training split's {unit}]",
    )
    info.pop("class_names", None)
    if labels is not None:
        info["num_classes"] = int(len(np.unique(labels)))
    return dataclasses.replace(raw, images=raw.images[keep], labels=labels, info=info)


def load_split(source: str, split: str, data_dir=None, *, tfds_data_dir=None):
    """Returns ``(images float32 [M, H, W, C] in the data range, labels int32 [M] or None)``.

    ``source`` in ``SOURCES`` (``"binary_strings"`` is not loadable and raises ValueError), ``split`` in
    ``SPLITS`` (``"validation"`` / ``"train_minus_validation"``: the two parts of ``"train"``, see the module
    docstring). See the per-source modules for preprocessing and where the data is looked
    up; a missing dataset raises :class:`~ebmm_tf.data.common.DatasetNotFoundError`.
    """
    raw = load_raw(source, split, data_dir, tfds_data_dir=tfds_data_dir)
    return raw.as_float(), raw.labels


def dataset_info(source: str, split: str, data_dir=None, *, tfds_data_dir=None) -> dict:
    """Provenance of a split: origin, num_examples, ``standin`` flag, description."""
    if source == "binary_strings":
        return {
            "source": source,
            "split": split,
            "origin": "generated",
            "num_examples": None,
            "standin": False,
            "description": "random +-1 strings (Appendix A.2), generated per episode",
        }
    info = dict(load_raw(source, split, data_dir, tfds_data_dir=tfds_data_dir).info)
    info.pop("class_names", None)
    return info
