"""The layout of a training run's directory and the one implementation of reading and writing it.

A workdir written by ``ebmm_tf.train`` holds:

* ``operative_config.gin``: every gin binding the run used;
* ``best/memory.keras`` + ``best/metrics.json``: the model with the best validation figure so far;
* ``latest/memory.keras``: the model at the last checkpoint;
* ``checkpoints/``: the full training state (``tf.train.Checkpoint``), from which a run resumes;
* ``metrics.jsonl``, ``tb/``: training and validation figures.

An export (``ebmm_tf.export``) keeps ``memory.keras`` and the run's records in its ``assets.extra/``.
Everything here writes atomically (temporary file, then ``os.replace``), so an interrupted run never leaves a
half-written file behind.
"""

from __future__ import annotations

import os
import tempfile

__all__ = ["MODEL_FILE", "atomic_write_text", "atomic_save_keras", "find_saved_model", "load_saved_model"]

MODEL_FILE = "memory.keras"


def atomic_write_text(path, text) -> None:
    """Writes ``text`` to ``path`` through a temporary file in the same folder."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp_")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def atomic_save_keras(model, path) -> None:
    """``model.save`` to ``path`` through a temporary ``.keras`` file in the same folder."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, ".tmp_" + os.path.basename(path))
    model.save(tmp)
    os.replace(tmp, path)


def find_saved_model(workdir, which="auto"):
    """``(path, kind)`` of a run's saved model: ``best/memory.keras``, else ``latest/memory.keras``; an export's
    ``assets.extra/`` folder gives its ``memory.keras`` (kind ``"export"``). ``which``: ``auto``, ``best`` or
    ``latest``. Raises ``FileNotFoundError`` naming every path it looked for."""
    kinds = {"auto": ("best", "latest"), "best": ("best",), "latest": ("latest",)}
    if which not in kinds:
        raise ValueError(f"checkpoint must be auto, best or latest; got {which!r}")
    workdir = str(workdir)
    if which == "auto" and os.path.basename(os.path.normpath(workdir)) == "assets.extra":
        path = os.path.join(workdir, MODEL_FILE)
        if os.path.exists(path):
            return path, "export"
    candidates = [(os.path.join(workdir, kind, MODEL_FILE), kind) for kind in kinds[which]]
    for path, kind in candidates:
        if os.path.exists(path):
            return path, kind
    names = {"best": "best validated model", "latest": "latest"}
    tried = ", ".join(f"{path} ({names[kind]})" for path, kind in candidates)
    raise FileNotFoundError(
        f"No saved model in {workdir} (looked for {tried}). Train first: "
        f"python -m ebmm_tf.train --gin_file=... --workdir={workdir}"
    )


def register_model_classes() -> None:
    """Imports every module whose Keras classes a saved model may contain (EBMM and the learned baselines)."""
    import ebmm_tf  # noqa: F401  (energies, EnergyMemory)
    from ebmm_tf.baselines import autoencoder, memnet, recurrent  # noqa: F401


def load_saved_model(path):
    """Loads a saved ``memory.keras`` (an ``EnergyMemory`` or a learned baseline)."""
    import keras

    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist")
    register_model_classes()
    return keras.saving.load_model(path, compile=False)
