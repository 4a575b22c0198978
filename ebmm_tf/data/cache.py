"""A small on-disk cache of decoded dataset arrays.

Decoding Omniglot's 32,460 PNGs and resizing them takes several seconds; the decoded uint8 arrays are
stored as an uncompressed ``.npz`` in ``$EBMM_CACHE_DIR`` (default ``~/.cache/ebmm_tf``) so that later
runs start in well under a second. The file name holds a hash of the key, which includes the source
path(s), their size and mtime, and the loader's preprocessing version: changing any of them (a new copy
of the data, a change of resize method...) makes a new entry. Files are written atomically
(temporary file in the same directory + ``os.replace``), so concurrent runs never read a partial file.
Set ``EBMM_CACHE_DIR=off`` to disable the cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

logger = logging.getLogger("ebmm_tf.data")

ENV_CACHE_DIR = "EBMM_CACHE_DIR"
_META = "__meta__"


def cache_dir() -> Path | None:
    """The cache directory (``$EBMM_CACHE_DIR`` or ``~/.cache/ebmm_tf``); None if disabled."""
    env = os.environ.get(ENV_CACHE_DIR)
    if env and env.lower() in ("off", "none", "0", "false"):
        return None
    return Path(env).expanduser() if env else Path("~/.cache/ebmm_tf").expanduser()


def cache_path(name: str, key: Any) -> Path | None:
    """Path of the cache entry of ``name`` for ``key`` (any JSON-serialisable value)."""
    d = cache_dir()
    if d is None:
        return None
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]
    return d / f"{name}-{digest}.npz"


def _read(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k != _META}
        meta = json.loads(str(z[_META])) if _META in z.files else {}
    return arrays, meta


def _write_atomic(path: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays, **{_META: np.array(json.dumps(meta, default=str))})
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def cached(
    name: str, key: Any, build: Callable[[], tuple[dict[str, np.ndarray], dict[str, Any]]]
) -> tuple[dict[str, np.ndarray], dict[str, Any], bool]:
    """Returns ``build()``'s ``(arrays, meta)`` from the cache if present, else builds and stores it.

    Returns ``(arrays, meta, hit)``; ``hit`` tells whether the cache answered. A corrupt or unreadable
    entry is rebuilt; an unwritable cache directory only logs a warning.
    """
    path = cache_path(name, key)
    if path is not None and path.exists():
        try:
            t0 = time.perf_counter()
            arrays, meta = _read(path)
            logger.info("Loaded %s from cache %s in %.2fs", name, path, time.perf_counter() - t0)
            return arrays, meta, True
        except Exception as e:  # pylint: disable=broad-except
            logger.warning("Ignoring unreadable cache entry %s (%s); rebuilding.", path, e)
    arrays, meta = build()
    if path is not None:
        try:
            _write_atomic(path, arrays, meta)
            logger.info("Cached %s in %s", name, path)
        except OSError as e:
            logger.warning("Could not write the cache entry %s: %s", path, e)
    return arrays, meta, False
