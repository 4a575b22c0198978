"""Omniglot (Lake et al., 2015) as used in the paper (Section 4.1, Appendices A.5 and A.7).

Splits: ``"train"`` = the *background* set (964 characters x 20 drawers = 19,280 images, 30 alphabets),
``"test"`` = the *evaluation* set (659 characters x 20 = 13,180 images, 20 alphabets).

Preprocessing (paper Section 4.1: "downscaled the images to 32x32 size and binarized them using a 0.5
threshold"; the pixel convention is ours): the 105x105 1-bit PNGs (white background, black
ink) are read as ``ink = 1 - png / 255`` (ink = 1, background = 0), area-averaged to 32x32 with
``tf.image.resize(..., method="area")`` and binarized with ``> 0.5``. Result: float32 in {0, 1}, shape
[32, 32, 1] per image (stored as uint8 in memory and in the cache).

Labels: one class per character, i.e. per ``<Alphabet>/characterNN`` folder, numbered 0.. in sorted
order of those names (needed by the correlated sampler of Appendix A.7).

Sources, in order (see :mod:`ebmm_tf.data.common`): ``data_dir`` / ``$EBMM_DATA_DIR`` holding the
official release (``omniglot/images_background.zip``, ``omniglot/images_evaluation.zip``; the zips may
also sit directly in the directory, or be extracted as ``images_background/`` and
``images_evaluation/`` folders), then TFDS ``omniglot`` (splits ``train`` / ``test``).
The first decode takes ~10 s per split (progress bar); later runs read the ``.npz`` cache.
"""

from __future__ import annotations

import io
import logging
import os
import time
import zipfile
from pathlib import Path

import numpy as np

from ebmm_tf.data import cache as cache_lib
from ebmm_tf.data import common

logger = logging.getLogger("ebmm_tf.data")

PREPROCESSING_VERSION = "omniglot-v1:ink=1-png/255,area32,>0.5"
IMAGE_SHAPE = (32, 32, 1)
TFDS_NAME = "omniglot"
SPLIT_DIRS = {"train": "images_background", "test": "images_evaluation"}
_CHUNK = 1024

LAYOUT = """\
DIR/omniglot/images_background.zip      (train: images_background/<Alphabet>/characterNN/<id>_<drawer>.png)
DIR/omniglot/images_evaluation.zip      (test:  images_evaluation/<Alphabet>/characterNN/<id>_<drawer>.png)
(also accepted: the two zips directly in DIR, or extracted folders DIR[/omniglot]/images_background/
 and DIR[/omniglot]/images_evaluation/; files from https://github.com/brendenlake/omniglot/tree/master/python)"""


def binarize_ink(ink: np.ndarray) -> np.ndarray:
    """[B, h, w] ink intensities in [0, 1] -> uint8 [B, 32, 32, 1] in {0, 1} (area resize, > 0.5)."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    x = tf.convert_to_tensor(np.asarray(ink, np.float32)[..., None])
    small = tf.image.resize(x, IMAGE_SHAPE[:2], method="area")
    return (small.numpy() > 0.5).astype(np.uint8)


def _png_ink(data: bytes) -> np.ndarray:
    from PIL import Image  # pylint: disable=g-import-not-at-top

    with Image.open(io.BytesIO(data)) as im:
        grey = np.asarray(im.convert("L"), dtype=np.float32)
    return 1.0 - grey / 255.0


def _class_key(parts: tuple[str, ...]) -> str:
    # .../<Alphabet>/characterNN/<file>.png
    return f"{parts[-3]}/{parts[-2]}"


def find_local(root: Path, split: str) -> Path | None:
    """The zip or extracted folder of ``split`` under ``root`` (official layout), or None."""
    name = SPLIT_DIRS[split]
    for base in (root / "omniglot", root):
        if (base / f"{name}.zip").is_file():
            return base / f"{name}.zip"
        if (base / name).is_dir():
            return base / name
    return None


def _list_entries(src: Path) -> list[tuple[str, str]]:
    """Sorted (class key, member path) of every PNG in a zip or an extracted folder."""
    entries = []
    if src.is_file():
        with zipfile.ZipFile(src) as zf:
            for n in zf.namelist():
                if n.lower().endswith(".png"):
                    parts = tuple(p for p in n.split("/") if p)
                    if len(parts) >= 3:
                        entries.append((_class_key(parts), n))
    else:
        for p in src.rglob("*.png"):
            parts = p.relative_to(src).parts
            if len(parts) >= 3:
                entries.append((_class_key(parts), os.fspath(p)))
    entries.sort()
    return entries


def _decode_local(src: Path, split: str):
    from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top

    entries = _list_entries(src)
    if not entries:
        raise common.DatasetNotFoundError(f"No Omniglot PNGs found in {src}.")
    logger.info(
        "Decoding Omniglot %s (%d images) from %s: first run, cached afterwards.", SPLIT_DIRS[split], len(entries), src
    )
    t0 = time.perf_counter()
    zf = zipfile.ZipFile(src) if src.is_file() else None
    try:
        out = np.empty((len(entries),) + IMAGE_SHAPE, np.uint8)
        bar = tqdm(
            total=len(entries), desc=f"Decoding Omniglot {SPLIT_DIRS[split]}", unit="img", mininterval=1.0, leave=False
        )
        for start in range(0, len(entries), _CHUNK):
            chunk = entries[start : start + _CHUNK]
            ink = []
            for _, member in chunk:
                data = zf.read(member) if zf is not None else Path(member).read_bytes()
                ink.append(_png_ink(data))
            out[start : start + len(chunk)] = binarize_ink(np.stack(ink))
            bar.update(len(chunk))
        bar.close()
    finally:
        if zf is not None:
            zf.close()
    labels, names = common.contiguous_labels([k for k, _ in entries])
    logger.info("Decoded Omniglot %s in %.1fs.", SPLIT_DIRS[split], time.perf_counter() - t0)
    return {"images": out, "labels": labels}, {"class_names": names}


def _tfds_convert(batch):
    ink = 1.0 - batch["image"][..., 0].astype(np.float32) / 255.0
    return binarize_ink(ink), batch["label"]


def load(split: str, data_dir=None, tfds_data_dir=None) -> common.RawSplit:
    """Loads an Omniglot split ("train" = background, "test" = evaluation) as a :class:`RawSplit`.

    Images uint8 [M, 32, 32, 1] in {0, 1} (ink = 1; area resize of ``1 - png/255`` to 32x32, ``> 0.5``),
    labels int32 [M] (one class per character). Raises :class:`DatasetNotFoundError` if absent.
    """
    if split not in SPLIT_DIRS:
        raise ValueError(f"Omniglot split must be one of {sorted(SPLIT_DIRS)}, got {split!r}")
    searched = common.candidate_dirs(data_dir)
    for root in searched:
        src = find_local(root, split)
        if src is None:
            continue
        stats = common.file_stats([src]) if src.is_file() else common.tree_stats(src, ".png")
        key = {"v": PREPROCESSING_VERSION, "split": split, "files": stats}
        arrays, meta, _ = cache_lib.cached(f"omniglot-{split}", key, lambda: _decode_local(src, split))
        return _make(arrays, meta, split, os.fspath(src))

    def build(tfds_root):
        logger.info("Reading Omniglot %s from TFDS in %s: first run, cached afterwards.", split, tfds_root)
        images, labels = common.tfds_to_numpy(TFDS_NAME, split, tfds_root, _tfds_convert, desc=f"Omniglot TFDS {split}")
        ids, names = common.contiguous_labels(labels)
        return {"images": images, "labels": ids}, {"class_names": [str(n) for n in names]}

    found = common.tfds_cached(
        TFDS_NAME, f"omniglot-tfds-{split}", split, PREPROCESSING_VERSION, data_dir, tfds_data_dir, build
    )
    if found is not None:
        arrays, meta, origin = found
        return _make(arrays, meta, split, origin)
    raise common.DatasetNotFoundError(
        common.missing_message(
            "Omniglot", split, searched, LAYOUT, TFDS_NAME, common.tfds_dirs(data_dir, tfds_data_dir)
        )
    )


def _make(arrays, meta, split, origin) -> common.RawSplit:
    images, labels = arrays["images"], arrays["labels"].astype(np.int32)
    return common.RawSplit.build(
        images,
        labels,
        scale=1.0,
        source="omniglot",
        split=split,
        origin=origin,
        num_classes=int(labels.max()) + 1 if len(labels) else 0,
        standin=False,
        class_names=meta.get("class_names"),
        description="Omniglot " + SPLIT_DIRS[split] + " set, 32x32 area-resized, binarized at 0.5, ink = 1",
        preprocessing=PREPROCESSING_VERSION,
    )
