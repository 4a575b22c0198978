"""MNIST for the Omniglot -> MNIST transfer test (paper Appendix A.6), plus a small labelled stand-in.

Preprocessing (A.6: "upscaled (to match the dimensionality) and binarized MNIST characters"), chosen to
match the Omniglot convention (ink = 1, background = 0): ``x = uint8 / 255`` (MNIST ink is already
bright), upscaled 28x28 -> 32x32 with ``tf.image.resize(..., method="bilinear")`` and binarized with
``> 0.5``. Result: float32 in {0, 1}, shape [32, 32, 1]; labels are the digits.

Sources, in order: ``data_dir`` / ``$EBMM_DATA_DIR`` holding the official files
(``mnist/train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``, ``t10k-images-idx3-ubyte.gz``,
``t10k-labels-idx1-ubyte.gz``, gzipped or not, in ``DIR/mnist/`` or ``DIR/``), then TFDS ``mnist``.
There is no offline copy of MNIST on these machines.

**Stand-in** (source ``"sklearn_digits"``): scikit-learn's bundled 8x8 digits (1,797 images, values
0..16) go through the same steps (``/ 16``, bilinear 8x8 -> 32x32, ``> 0.5``); train = the first 1,297,
test = the last 500. It is NOT MNIST: use it only for tests and smoke runs, and label it as such.
"""

from __future__ import annotations

import gzip
import logging
import os
from pathlib import Path

import numpy as np

from ebmm_tf.data import cache as cache_lib
from ebmm_tf.data import common

logger = logging.getLogger("ebmm_tf.data")

PREPROCESSING_VERSION = "mnist-v1:x/255,bilinear32,>0.5"
IMAGE_SHAPE = (32, 32, 1)
TFDS_NAME = "mnist"
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
DIGITS_TRAIN_SIZE = 1297

LAYOUT = """\
DIR/mnist/train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz,
          t10k-images-idx3-ubyte.gz,  t10k-labels-idx1-ubyte.gz
(also accepted: the same files directly in DIR, or un-gzipped; the official files from
 http://yann.lecun.com/exdb/mnist/)"""


def upscale_binarize(x: np.ndarray) -> np.ndarray:
    """[B, h, w] intensities in [0, 1] (ink = 1) -> uint8 [B, 32, 32, 1] in {0, 1} (bilinear, > 0.5)."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    t = tf.convert_to_tensor(np.asarray(x, np.float32)[..., None])
    big = tf.image.resize(t, IMAGE_SHAPE[:2], method="bilinear")
    return (big.numpy() > 0.5).astype(np.uint8)


def read_idx(path: Path) -> np.ndarray:
    """Reads an IDX file (optionally gzipped): big-endian magic, dims, then uint8 data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def find_local(root: Path, split: str) -> tuple[Path, Path] | None:
    for base in (root / "mnist", root):
        found = []
        for stem in _FILES[split]:
            cands = [base / (stem + ".gz"), base / stem]
            hit = next((c for c in cands if c.is_file()), None)
            if hit is None:
                break
            found.append(hit)
        else:
            return found[0], found[1]
    return None


def load(split: str, data_dir=None, tfds_data_dir=None) -> common.RawSplit:
    """Loads an MNIST split (uint8 [M, 32, 32, 1] in {0, 1}, scale 1; labels [M]); see module doc."""
    if split not in _FILES:
        raise ValueError(f"MNIST split must be one of {sorted(_FILES)}, got {split!r}")
    searched = common.candidate_dirs(data_dir)
    for root in searched:
        found = find_local(root, split)
        if found is None:
            continue
        key = {"v": PREPROCESSING_VERSION, "split": split, "files": common.file_stats(found)}

        def build_local():
            images = read_idx(found[0]).astype(np.float32) / 255.0
            return {"images": upscale_binarize(images), "labels": read_idx(found[1]).astype(np.int32)}, {}

        arrays, _, _ = cache_lib.cached(f"mnist-{split}", key, build_local)
        return _make(arrays, split, os.fspath(found[0].parent))
    found = common.tfds_cached(
        TFDS_NAME,
        f"mnist-tfds-{split}",
        split,
        PREPROCESSING_VERSION,
        data_dir,
        tfds_data_dir,
        lambda root: load_tfds_arrays(split, root),
    )
    if found is not None:
        arrays, _, origin = found
        return _make(arrays, split, origin)
    raise common.DatasetNotFoundError(
        common.missing_message(
            "MNIST",
            split,
            searched,
            LAYOUT,
            TFDS_NAME,
            common.tfds_dirs(data_dir, tfds_data_dir),
            extra="For tests and smoke runs without MNIST, the source 'sklearn_digits' is a small labelled "
            "stand-in (scikit-learn's 8x8 digits, upscaled the same way); it is not MNIST.",
        )
    )


def load_tfds_arrays(split: str, tfds_root) -> tuple[dict, dict]:
    """Reads TFDS ``mnist`` (``download=False``) and preprocesses it (used by :func:`load`)."""
    images, labels = common.tfds_to_numpy(
        TFDS_NAME,
        split,
        tfds_root,
        lambda b: (upscale_binarize(b["image"][..., 0].astype(np.float32) / 255.0), b["label"]),
        desc=f"MNIST TFDS {split}",
    )
    return {"images": images, "labels": labels.astype(np.int32)}, {}


def _make(arrays, split, origin) -> common.RawSplit:
    images, labels = arrays["images"], arrays["labels"].astype(np.int32)
    return common.RawSplit.build(
        images,
        labels,
        scale=1.0,
        source="mnist",
        split=split,
        origin=origin,
        num_classes=10,
        standin=False,
        description=f"MNIST {split}, bilinear-upscaled to 32x32, binarized at 0.5, ink = 1",
        preprocessing=PREPROCESSING_VERSION,
    )


def load_digits_standin(split: str) -> common.RawSplit:
    """STAND-IN for MNIST: scikit-learn's bundled 8x8 digits, upscaled to 32x32 and binarized (not MNIST)."""
    if split not in _FILES:
        raise ValueError(f"split must be one of {sorted(_FILES)}, got {split!r}")
    from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top

    digits = load_digits()
    sl = slice(0, DIGITS_TRAIN_SIZE) if split == "train" else slice(DIGITS_TRAIN_SIZE, None)
    images = upscale_binarize(digits.images[sl] / 16.0)
    labels = digits.target[sl].astype(np.int32)
    return common.RawSplit.build(
        images,
        labels,
        scale=1.0,
        source="sklearn_digits",
        split=split,
        origin="sklearn.datasets.load_digits",
        num_classes=10,
        standin=True,
        description="scikit-learn 8x8 digits, bilinear-upscaled to 32x32, binarized at 0.5 "
        "(STAND-IN for MNIST, not MNIST)",
        preprocessing=PREPROCESSING_VERSION,
    )
