"""ImageNet 64x64 (paper Section 4.3), with an offline **stand-in** (Tiny ImageNet validation subset).

Images: RGB float32 in [0, 1] (``uint8 / 255``), shape [64, 64, 3]. Labels: class ids.

Sources, in order:

1. The paper's data: TFDS ``imagenet_resized/64x64`` (downsampled ImageNet of Chrabaszcz et al., 2017;
   1,281,167 train / 50,000 validation images, ``"test"`` = TFDS ``validation``), looked up in
   ``data_dir`` and then ``tfds_data_dir`` / ``$TFDS_DATA_DIR`` / ``~/tensorflow_datasets`` with
   ``download=False``. It is tried *before* the stand-in because the stand-in is not the paper's data.
   Note that ``load`` materialises the whole split in memory (about 15.7 GB of uint8 for train).
2. **STAND-IN, not the paper's dataset**: the Tiny ImageNet validation subset
   ``tiny_imagenet_64/tiny_imagenet_val_5000.zip`` (or the zip directly) under ``data_dir`` /
   ``$EBMM_DATA_DIR``: 200 classes x 25 real 64x64 JPEGs derived from ImageNet (``val/images/*.JPEG``,
   ``val/val_annotations.txt``, ``wnids.txt``, ``words.txt``). 85 are grayscale and are converted to RGB
   (channel replication via PIL ``convert("RGB")``). Deterministic **per-image split within each class**:
   images of a class sorted by their number (``val_<n>.JPEG``); the first 20 go to ``"train"`` (4,000
   images) and the last 5 to ``"test"`` (1,000 images), so both splits cover the same 200 classes, as
   ImageNet's train and validation sets do. Labels = index of the wnid in sorted ``wnids.txt``.
   ``info["standin"]`` is True and a warning is logged whenever it is used; results on it must be
   reported as "Tiny ImageNet stand-in", never as ImageNet 64x64.
"""

from __future__ import annotations

import io
import logging
import os
import re
import zipfile
from pathlib import Path

import numpy as np

from ebmm_tf.data import cache as cache_lib
from ebmm_tf.data import common

logger = logging.getLogger("ebmm_tf.data")

PREPROCESSING_VERSION = "imagenet64-v1:uint8,rgb"
IMAGE_SHAPE = (64, 64, 3)
TFDS_NAME = "imagenet_resized/64x64"
TFDS_SPLITS = {"train": "train", "test": "validation"}
STANDIN_ZIP = "tiny_imagenet_val_5000.zip"
STANDIN_TRAIN_PER_CLASS = 20  # of 25 per class; the remaining 5 are the test split
STANDIN_DESCRIPTION = (
    "Tiny ImageNet validation subset, 64x64 (STAND-IN for the paper's ImageNet 64x64, not the same data)"
)

LAYOUT = f"""\
The paper's data is only read through TFDS (route (2) below).
Offline stand-in (NOT the paper's data): DIR/tiny_imagenet_64/{STANDIN_ZIP} or DIR/{STANDIN_ZIP}
  with val/images/val_<n>.JPEG, val/val_annotations.txt, wnids.txt, words.txt"""


def find_standin(root: Path) -> Path | None:
    for p in (root / "tiny_imagenet_64" / STANDIN_ZIP, root / STANDIN_ZIP):
        if p.is_file():
            return p
    return None


def _decode_standin(src: Path):
    from PIL import Image  # pylint: disable=g-import-not-at-top
    from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top

    logger.warning("Using the Tiny ImageNet STAND-IN (%s) for ImageNet 64x64: it is not the paper's data.", src)
    with zipfile.ZipFile(src) as zf:
        names = {Path(n).name: n for n in zf.namelist()}
        wnids = sorted(zf.read(names["wnids.txt"]).decode().split())
        words = {}
        if "words.txt" in names:
            for line in zf.read(names["words.txt"]).decode().splitlines():
                if "\t" in line:
                    w, desc = line.split("\t", 1)
                    words[w] = desc
        ann = []
        for line in zf.read(names["val_annotations.txt"]).decode().splitlines():
            fields = line.split("\t")
            if len(fields) >= 2:
                ann.append((fields[0], fields[1]))
        by_class: dict[str, list[str]] = {w: [] for w in wnids}
        for fname, wnid in ann:
            by_class[wnid].append(fname)
        split_of = {}
        for wnid, files in by_class.items():
            files.sort(key=lambda f: int(re.findall(r"\d+", f)[-1]))
            for j, f in enumerate(files):
                split_of[f] = "train" if j < STANDIN_TRAIN_PER_CLASS else "test"
        wnid_index = {w: i for i, w in enumerate(wnids)}
        arrays = {}
        for split in ("train", "test"):
            files = [(f, w) for w in wnids for f in by_class[w] if split_of[f] == split]
            images = np.empty((len(files),) + IMAGE_SHAPE, np.uint8)
            labels = np.empty((len(files),), np.int32)
            num_grey = 0
            for i, (f, w) in enumerate(
                tqdm(files, desc=f"Decoding Tiny ImageNet stand-in ({split})", unit="img", mininterval=1.0, leave=False)
            ):
                with Image.open(io.BytesIO(zf.read(names[f]))) as im:
                    num_grey += im.mode != "RGB"
                    rgb = im.convert("RGB")
                    if rgb.size != IMAGE_SHAPE[:2]:
                        raise ValueError(f"{f} in {src} is {rgb.size}, expected 64x64")
                    images[i] = np.asarray(rgb, np.uint8)
                labels[i] = wnid_index[w]
            arrays[f"{split}_images"] = images
            arrays[f"{split}_labels"] = labels
            arrays[f"{split}_num_grey"] = np.array(num_grey)
    meta = {"class_names": [f"{w}: {words.get(w, '')}".strip() for w in wnids]}
    return arrays, meta


def load(split: str, data_dir=None, tfds_data_dir=None, allow_standin: bool = True) -> common.RawSplit:
    """Loads an ImageNet 64x64 split (TFDS) or, offline, the Tiny ImageNet stand-in (see module doc).

    Returns uint8 [M, 64, 64, 3] with scale 1/255 and int32 labels; ``info["standin"]`` tells which.
    """
    if split not in TFDS_SPLITS:
        raise ValueError(f"ImageNet 64x64 split must be one of {sorted(TFDS_SPLITS)}, got {split!r}")
    tsplit = TFDS_SPLITS[split]

    def build(tfds_root):
        logger.warning("Materialising TFDS %s[%s] in memory (train: ~15.7 GB uint8).", TFDS_NAME, tsplit)
        return common.tfds_images_labels(TFDS_NAME, tsplit, tfds_root, f"ImageNet64 TFDS {tsplit}")

    found = common.tfds_cached(
        TFDS_NAME, f"imagenet64-tfds-{split}", tsplit, PREPROCESSING_VERSION, data_dir, tfds_data_dir, build
    )
    if found is not None:
        arrays, _, origin = found
        images, labels = arrays["images"], arrays["labels"]
        return common.RawSplit.build(
            images,
            labels,
            scale=1.0 / 255.0,
            source="imagenet64",
            split=split,
            origin=origin,
            num_classes=1000,
            standin=False,
            description=f"ImageNet 64x64 (TFDS {TFDS_NAME}, split {tsplit}), RGB in [0, 1]",
            preprocessing=PREPROCESSING_VERSION,
        )
    searched = common.candidate_dirs(data_dir)
    if allow_standin:
        for root in searched:
            src = find_standin(root)
            if src is None:
                continue
            key = {
                "v": PREPROCESSING_VERSION,
                "standin_split": f"per-class first {STANDIN_TRAIN_PER_CLASS}",
                "files": common.file_stats([src]),
            }
            arrays, meta, hit = cache_lib.cached("imagenet64-standin", key, lambda: _decode_standin(src))
            if hit:
                logger.warning(
                    "Using the Tiny ImageNet STAND-IN (%s) for ImageNet 64x64: it is not the paper's data.", src
                )
            images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
            return common.RawSplit.build(
                images,
                labels,
                scale=1.0 / 255.0,
                source="imagenet64",
                split=split,
                origin=os.fspath(src),
                num_classes=len(meta.get("class_names", [])),
                standin=True,
                num_grayscale_converted=int(arrays[f"{split}_num_grey"]),
                class_names=meta.get("class_names"),
                description=f"{STANDIN_DESCRIPTION}; split {split}: per class, images sorted by number, first "
                f"{STANDIN_TRAIN_PER_CLASS} -> train, last 5 -> test",
                preprocessing=PREPROCESSING_VERSION,
            )
    raise common.DatasetNotFoundError(
        common.missing_message(
            "ImageNet 64x64", split, searched, LAYOUT, TFDS_NAME, common.tfds_dirs(data_dir, tfds_data_dir)
        )
    )
