"""Shared pieces of the dataset loaders: errors, directory resolution, TFDS access.

Every real-data loader in :mod:`ebmm_tf.data` looks for its source in this order:

1. the directory given explicitly (function argument ``data_dir``; gin can bind it and the
   command-line tools pass ``--data_dir``), holding the dataset's *official distribution layout*;
2. the directory named by the environment variable ``EBMM_DATA_DIR`` (same layout);
3. a prepared TFDS copy, read with ``tfds.load(..., download=False)`` so that nothing is ever
   downloaded: first in ``data_dir`` (so ``--data_dir`` may also point at a TFDS data dir), then in
   ``tfds_data_dir`` / ``$TFDS_DATA_DIR`` / ``~/tensorflow_datasets``.

If none of them holds the data a :class:`DatasetNotFoundError` is raised whose message spells out both
ways to provide it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from ebmm_tf.data import cache as cache_lib

logger = logging.getLogger("ebmm_tf.data")

ENV_DATA_DIR = "EBMM_DATA_DIR"
ENV_TFDS_DATA_DIR = "TFDS_DATA_DIR"


class DatasetNotFoundError(FileNotFoundError):
    """Raised when a dataset is neither in the data directory nor in a prepared TFDS data dir."""


@dataclasses.dataclass
class RawSplit:
    """One split of a dataset as stored in memory.

    Attributes:
      images: uint8 array [M, H, W, C]. Multiply by ``scale`` to get float values in the data range
        (``scale = 1`` for the binarized sources Omniglot / MNIST, whose values are already {0, 1};
        ``1/255`` for the RGB sources).
      labels: int32 array [M] (class ids, contiguous from 0) or None.
      scale: see ``images``.
      info: provenance: ``source``, ``split``, ``origin`` (path or ``tfds:<name>``), ``num_examples``,
        ``standin`` (True when the data only stands in for the paper's dataset), ``description``.
    """

    images: np.ndarray
    labels: np.ndarray | None
    scale: float
    info: dict[str, Any]

    @classmethod
    def build(cls, images, labels, scale, *, source, split, origin, num_classes, standin, description, **extra):
        """A split with its ``info`` (``num_examples`` counted from ``images``; ``extra`` keys kept as given)."""
        info = {
            "source": source,
            "split": split,
            "origin": origin,
            "num_examples": int(len(images)),
            "num_classes": int(num_classes),
            "standin": bool(standin),
            "description": description,
            **extra,
        }
        return cls(images=images, labels=labels, scale=scale, info=info)

    def as_float(self) -> np.ndarray:
        """Images as float32 in the data range."""
        out = self.images.astype(np.float32)
        if self.scale != 1.0:
            out *= np.float32(self.scale)
        return out


def candidate_dirs(data_dir: str | os.PathLike | None) -> list[Path]:
    """The local directories to search, in order: explicit ``data_dir``, then ``$EBMM_DATA_DIR``."""
    dirs = []
    if data_dir:
        dirs.append(Path(data_dir).expanduser())
    env = os.environ.get(ENV_DATA_DIR)
    if env:
        p = Path(env).expanduser()
        if p not in dirs:
            dirs.append(p)
    return dirs


def tfds_dirs(data_dir: str | os.PathLike | None, tfds_data_dir: str | os.PathLike | None) -> list[Path]:
    """TFDS data dirs to search: ``data_dir`` then ``tfds_data_dir`` / ``$TFDS_DATA_DIR`` / default."""
    dirs = []
    if data_dir:
        dirs.append(Path(data_dir).expanduser())
    second = tfds_data_dir or os.environ.get(ENV_TFDS_DATA_DIR) or "~/tensorflow_datasets"
    p = Path(second).expanduser()
    if p not in dirs:
        dirs.append(p)
    return dirs


def tfds_is_prepared(name: str, data_dir: Path) -> bool:
    """Whether TFDS dataset ``name`` (e.g. ``"imagenet_resized/64x64"``) is prepared in ``data_dir``.

    Checks the folder on disk before importing TFDS (the import costs seconds); never touches the network.
    """
    base = name.split(":")[0].split("/")[0]
    if not (data_dir / base).is_dir():
        return False
    try:
        import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

        return bool(tfds.builder(name, data_dir=os.fspath(data_dir)).is_prepared())
    except Exception as e:  # pylint: disable=broad-except
        logger.warning("TFDS dataset %s in %s could not be opened: %s", name, data_dir, e)
        return False


def find_tfds(name: str, data_dir, tfds_data_dir) -> Path | None:
    """First TFDS data dir (see :func:`tfds_dirs`) in which ``name`` is prepared, or None."""
    for d in tfds_dirs(data_dir, tfds_data_dir):
        if tfds_is_prepared(name, d):
            return d
    return None


def tfds_fingerprint(name: str, data_dir: Path) -> dict[str, Any]:
    """Cache-key material for a prepared TFDS dataset (its directory and dataset_info.json stats)."""
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    builder = tfds.builder(name, data_dir=os.fspath(data_dir))
    path = Path(os.fspath(builder.data_path))
    info_file = path / "dataset_info.json"
    st = info_file.stat() if info_file.exists() else None
    return {
        "tfds": name,
        "path": os.fspath(path),
        "info_size": st.st_size if st else None,
        "info_mtime": st.st_mtime_ns if st else None,
    }


def tfds_cached(
    name: str,
    cache_name: str,
    split: str,
    version: int,
    data_dir,
    tfds_data_dir,
    build: Callable[[Path], tuple[dict, dict]],
) -> tuple[dict, dict, str] | None:
    """The TFDS fallback of the loaders: ``None`` if no TFDS data dir holds a prepared ``name``; otherwise
    ``(arrays, meta, origin)`` with ``build(tfds_root) -> (arrays, meta)`` run once and cached under
    ``cache_name`` (keyed by ``version``, ``split`` and the TFDS files' fingerprint)."""
    tfds_root = find_tfds(name, data_dir, tfds_data_dir)
    if tfds_root is None:
        return None
    key = {"v": version, "split": split, **tfds_fingerprint(name, tfds_root)}
    arrays, meta, _ = cache_lib.cached(cache_name, key, lambda: build(tfds_root))
    return arrays, meta, f"tfds:{name} in {tfds_root}"


def tfds_images_labels(name: str, split: str, tfds_root: Path, desc: str) -> tuple[dict, dict]:
    """A TFDS split with ``image`` / ``label`` features as ``({"images": uint8, "labels": int32}, {})``."""
    images, labels = tfds_to_numpy(name, split, tfds_root, lambda b: (b["image"], b["label"]), desc=desc)
    return {"images": images.astype(np.uint8), "labels": labels.astype(np.int32)}, {}


def tfds_to_numpy(
    name: str,
    split: str,
    data_dir: Path | str | None,
    convert: Callable[[dict[str, np.ndarray]], tuple[np.ndarray, np.ndarray]],
    batch_size: int = 2048,
    desc: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Reads a whole TFDS split (``download=False``) and applies ``convert`` batch by batch.

    ``convert`` maps a numpy batch dict (TFDS features) to ``(images uint8 [b,H,W,C], labels [b])``.
    """
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top

    ds = tfds.load(
        name,
        split=split,
        data_dir=None if data_dir is None else os.fspath(data_dir),
        download=False,
        shuffle_files=False,
    )
    images, labels = [], []
    for batch in tqdm(
        tfds.as_numpy(ds.batch(batch_size)),
        desc=desc or f"Reading TFDS {name}[{split}]",
        unit="batch",
        mininterval=1.0,
        leave=False,
    ):
        im, lb = convert(batch)
        images.append(im)
        labels.append(np.asarray(lb))
    if not images:
        raise DatasetNotFoundError(f"TFDS dataset {name} split {split} in {data_dir} is empty.")
    return np.concatenate(images), np.concatenate(labels)


def contiguous_labels(labels: Sequence[Any]) -> tuple[np.ndarray, list]:
    """Maps arbitrary class keys to contiguous int32 ids (sorted order); returns (ids, sorted keys)."""
    keys, ids = np.unique(np.asarray(labels), return_inverse=True)
    return ids.astype(np.int32).reshape(-1), keys.tolist()


def missing_message(
    dataset: str,
    split: str,
    searched: Iterable[Path],
    layout: str,
    tfds_name: str,
    tfds_searched: Iterable[Path],
    extra: str = "",
) -> str:
    """The text of a :class:`DatasetNotFoundError`: where we looked and the two ways to provide the data."""
    searched = [os.fspath(p) for p in searched] or ["(none: no data_dir given and $EBMM_DATA_DIR unset)"]
    tfds_searched = [os.fspath(p) for p in tfds_searched]
    lines = [
        f"{dataset} ({split} split) not found.",
        f"Searched the data directories: {', '.join(searched)}; and the TFDS data dirs: {', '.join(tfds_searched)}.",
        "Provide it in one of two ways:",
        f"  (1) put the official distribution under a directory and pass it as --data_dir=DIR "
        f"(or data_dir=DIR, or set {ENV_DATA_DIR}=DIR), with this layout:",
        *["        " + l for l in layout.strip().splitlines()],
        f"  (2) prepare the TFDS dataset '{tfds_name}' on a machine with network access "
        f"(`tfds build {tfds_name.split('/')[0]}"
        + (f" --config={tfds_name.split('/')[1]}" if "/" in tfds_name else "")
        + " --data_dir=TFDS_DIR`, or `tfds.load('"
        + tfds_name
        + "', data_dir=TFDS_DIR)`), copy TFDS_DIR here "
        f"and pass --data_dir=TFDS_DIR (or set {ENV_TFDS_DATA_DIR}=TFDS_DIR); it is read with "
        "tfds.load(..., download=False), never downloaded.",
    ]
    if extra:
        lines.append(extra)
    return "\n".join(lines)


def file_stats(paths: Iterable[Path]) -> list[tuple[str, int, int]]:
    """(absolute path, size, mtime_ns) of each file: cache-key material."""
    out = []
    for p in paths:
        st = Path(p).stat()
        out.append((os.fspath(Path(p).resolve()), st.st_size, st.st_mtime_ns))
    return out


def tree_stats(root: Path, suffix: str) -> list[tuple[str, int, int]]:
    """:func:`file_stats` of every file under ``root`` ending in ``suffix`` (relative paths, sorted)."""
    out = []
    root = Path(root)
    for dirpath, _, files in os.walk(root):
        for f in files:
            if f.endswith(suffix):
                p = Path(dirpath) / f
                st = p.stat()
                out.append((os.fspath(p.relative_to(root)), st.st_size, st.st_mtime_ns))
    out.sort()
    return [(os.fspath(root.resolve()), 0, 0)] + out
