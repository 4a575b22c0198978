"""CIFAR-10 (Krizhevsky, 2009) as used in the paper (Section 4.2).

Images: RGB float32 in [0, 1] (``uint8 / 255``, no other preprocessing), shape [32, 32, 3].
Splits: ``"train"`` = ``data_batch_1..5`` (50,000 images), ``"test"`` = ``test_batch``. The number of
test images is whatever the copy holds and is reported in ``info["num_examples"]`` (the offline copy
in ``../shared/data`` holds only the first 1,000 of the 10,000 official test images; a warning is
logged when the count differs from 10,000). Labels: the 10 CIFAR classes.

Sources, in order (see :mod:`ebmm_tf.data.common`): ``data_dir`` / ``$EBMM_DATA_DIR`` holding the
official "python version" (``cifar10/cifar-10-batches-py/`` or ``cifar-10-batches-py/``, or the
unextracted ``cifar-10-python.tar.gz`` in either place), then TFDS ``cifar10``.
"""

from __future__ import annotations

import logging
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np

from ebmm_tf.data import cache as cache_lib
from ebmm_tf.data import common

logger = logging.getLogger("ebmm_tf.data")

PREPROCESSING_VERSION = "cifar10-v1:uint8"
IMAGE_SHAPE = (32, 32, 3)
TFDS_NAME = "cifar10"
OFFICIAL_TEST_SIZE = 10000
_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
_TARBALL = "cifar-10-python.tar.gz"

LAYOUT = """\
DIR/cifar10/cifar-10-batches-py/{data_batch_1..data_batch_5, test_batch, batches.meta}
(also accepted: DIR/cifar-10-batches-py/, or the official archive cifar-10-python.tar.gz in DIR or
 DIR/cifar10/; from https://www.cs.toronto.edu/~kriz/cifar.html, "CIFAR-10 python version")"""


def find_local(root: Path, split: str) -> Path | None:
    """The ``cifar-10-batches-py`` folder or the official tarball under ``root``, or None."""
    for base in (root / "cifar10", root):
        folder = base / "cifar-10-batches-py"
        if all((folder / f).is_file() for f in _FILES[split]):
            return folder
        if (base / _TARBALL).is_file():
            return base / _TARBALL
    return None


def decode_batch(raw: dict) -> tuple[np.ndarray, np.ndarray]:
    """An unpickled CIFAR batch (bytes keys) -> (uint8 [n, 32, 32, 3], int32 [n])."""
    data = np.asarray(raw[b"data"], dtype=np.uint8)
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # 1024 R, 1024 G, 1024 B, row-major
    return np.ascontiguousarray(images), np.asarray(raw[b"labels"], dtype=np.int32)


def _decode_local(src: Path, split: str):
    images, labels = [], []
    if src.is_dir():
        for f in _FILES[split]:
            with open(src / f, "rb") as fh:
                im, lb = decode_batch(pickle.load(fh, encoding="bytes"))
            images.append(im)
            labels.append(lb)
    else:
        with tarfile.open(src, "r:gz") as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            for f in _FILES[split]:
                if f not in members:
                    raise common.DatasetNotFoundError(f"{f} missing from {src}")
                im, lb = decode_batch(pickle.load(tar.extractfile(members[f]), encoding="bytes"))
                images.append(im)
                labels.append(lb)
    return {"images": np.concatenate(images), "labels": np.concatenate(labels)}, {}


def load(split: str, data_dir=None, tfds_data_dir=None) -> common.RawSplit:
    """Loads a CIFAR-10 split as a :class:`RawSplit` (uint8 [M, 32, 32, 3], scale 1/255; labels [M])."""
    if split not in _FILES:
        raise ValueError(f"CIFAR-10 split must be one of {sorted(_FILES)}, got {split!r}")
    searched = common.candidate_dirs(data_dir)
    for root in searched:
        src = find_local(root, split)
        if src is None:
            continue
        files = [src / f for f in _FILES[split]] if src.is_dir() else [src]
        key = {"v": PREPROCESSING_VERSION, "split": split, "files": common.file_stats(files)}
        arrays, _, _ = cache_lib.cached(f"cifar10-{split}", key, lambda: _decode_local(src, split))
        return _make(arrays, split, os.fspath(src))
    found = common.tfds_cached(
        TFDS_NAME,
        f"cifar10-tfds-{split}",
        split,
        PREPROCESSING_VERSION,
        data_dir,
        tfds_data_dir,
        lambda root: common.tfds_images_labels(TFDS_NAME, split, root, f"CIFAR-10 TFDS {split}"),
    )
    if found is not None:
        arrays, _, origin = found
        return _make(arrays, split, origin)
    raise common.DatasetNotFoundError(
        common.missing_message(
            "CIFAR-10", split, searched, LAYOUT, TFDS_NAME, common.tfds_dirs(data_dir, tfds_data_dir)
        )
    )


def _make(arrays, split, origin) -> common.RawSplit:
    images, labels = arrays["images"], arrays["labels"].astype(np.int32)
    n = int(len(images))
    note = ""
    if split == "test" and n != OFFICIAL_TEST_SIZE:
        note = f" (this copy holds {n:,} of the {OFFICIAL_TEST_SIZE:,} official test images)"
        logger.warning("CIFAR-10 test split from %s has %d images, not %d.", origin, n, OFFICIAL_TEST_SIZE)
    return common.RawSplit.build(
        images,
        labels,
        scale=1.0 / 255.0,
        source="cifar10",
        split=split,
        origin=origin,
        num_classes=10,
        standin=False,
        description=f"CIFAR-10 {split}, RGB in [0, 1]{note}",
        preprocessing=PREPROCESSING_VERSION,
    )
