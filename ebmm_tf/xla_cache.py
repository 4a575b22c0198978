"""A persistent cache of XLA-compiled programs, so that a machine compiles each meta-step once.

TensorFlow keeps the executables that ``jit_compile=True`` functions compile in memory only, unless
``TF_XLA_FLAGS`` holds ``--tf_xla_persistent_cache_directory=DIR``: then each compiled program is also written to
``DIR`` and read back by later processes that compile the same program. The flag is read when TensorFlow first
compiles with XLA, so it must be set before that (the training CLI does it before importing TensorFlow).

Compiled CPU code targets the instruction set of the machine that compiled it, so the default directory is keyed
by the machine: ``~/.cache/ebmm_tf/xla/<key>`` (``$XDG_CACHE_HOME`` if set), with ``key`` a hash of the
TensorFlow version, the architecture and the CPU's feature flags. A cache directory shared by different machines
therefore never hands one machine another's code. Measured effect: docs/performance.md, "First step".
"""

from __future__ import annotations

import hashlib
import os
import platform

__all__ = ["FLAG", "configure", "default_directory", "directory_from_argv", "machine_key"]

FLAG = "--tf_xla_persistent_cache_directory"


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return " ".join(sorted(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return platform.processor()


def machine_key(tf_version=None) -> str:
    """16 hex digits naming this machine's compiled code: TensorFlow version, architecture, CPU features."""
    if tf_version is None:
        from importlib import metadata

        try:
            tf_version = metadata.version("tensorflow")
        except metadata.PackageNotFoundError:
            tf_version = "unknown"
    text = "|".join([str(tf_version), platform.machine(), platform.system(), _cpu_flags()])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def default_directory() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ebmm_tf", "xla", machine_key())


def configure(directory="auto", environ=None) -> str | None:
    """Adds the cache flag to ``TF_XLA_FLAGS`` (in ``environ``, default ``os.environ``); returns the directory.

    ``directory``: ``"auto"`` (``default_directory()``), a path, or ``""`` / ``None`` (no cache). A cache directory
    already given in ``TF_XLA_FLAGS`` wins and is returned. Call it before TensorFlow compiles anything with XLA.
    """
    env = os.environ if environ is None else environ
    flags = env.get("TF_XLA_FLAGS", "")
    for token in flags.split():
        if token.startswith(FLAG + "="):
            return token.split("=", 1)[1] or None
    if not directory:
        return None
    path = default_directory() if directory == "auto" else os.path.abspath(os.path.expanduser(directory))
    os.makedirs(path, exist_ok=True)
    env["TF_XLA_FLAGS"] = f"{flags} {FLAG}={path}".strip()
    return path


def directory_from_argv(argv, name="xla_cache_dir", default="auto"):
    """The value of ``--<name>=V`` / ``--<name> V`` in ``argv`` (the last one wins), else ``default``."""
    value = default
    for i, arg in enumerate(argv):
        if arg.startswith(f"--{name}="):
            value = arg.split("=", 1)[1]
        elif arg == f"--{name}" and i + 1 < len(argv):
            value = argv[i + 1]
    return value
