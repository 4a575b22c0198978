"""Source names, their data ranges and pattern shapes, and :func:`load_split`."""

from __future__ import annotations

from ebmm_tf.data import binary_strings, cifar10, common, imagenet64, mnist, omniglot

_SHAPES = {
    "omniglot": omniglot.IMAGE_SHAPE,  # binarized, {0, 1}
    "cifar10": cifar10.IMAGE_SHAPE,  # RGB in [0, 1]
    "imagenet64": imagenet64.IMAGE_SHAPE,  # RGB in [0, 1] (offline: Tiny ImageNet stand-in)
    "mnist": mnist.IMAGE_SHAPE,  # binarized, {0, 1}
    "sklearn_digits": mnist.IMAGE_SHAPE,  # MNIST stand-in, binarized, {0, 1}
}
SOURCES = ("binary_strings",) + tuple(_SHAPES)
SPLITS = ("train", "test")


def _check(source: str) -> None:
    if source not in SOURCES:
        raise ValueError(f"Unknown source {source!r}; expected one of {SOURCES}")


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
    if source == "sklearn_digits":
        return mnist.load_digits_standin(split)
    module = {"omniglot": omniglot, "cifar10": cifar10, "imagenet64": imagenet64, "mnist": mnist}[source]
    return module.load(split, data_dir=data_dir, tfds_data_dir=tfds_data_dir)


def load_split(source: str, split: str, data_dir=None, *, tfds_data_dir=None):
    """Returns ``(images float32 [M, H, W, C] in the data range, labels int32 [M] or None)``.

    ``source`` in ``SOURCES`` (``"binary_strings"`` is not loadable and raises ValueError), ``split`` in
    ``{"train", "test"}``. See the per-source modules for preprocessing and where the data is looked
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
