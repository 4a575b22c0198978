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

__all__ = [
    "MODEL_FILE",
    "RunDir",
    "atomic_save_keras",
    "atomic_write_json",
    "atomic_write_text",
    "checkpoint_step",
    "find_saved_model",
    "load_saved_model",
    "resolve_run_dir",
]

MODEL_FILE = "memory.keras"
CONFIG_FILE = "operative_config.gin"


class RunDir:
    """The paths of one training run's directory (see the module docstring for what each holds)."""

    def __init__(self, workdir):
        self.path = os.path.abspath(str(workdir))

    def __repr__(self):
        return f"RunDir({self.path!r})"

    @property
    def config(self) -> str:
        return os.path.join(self.path, CONFIG_FILE)

    @property
    def checkpoints(self) -> str:
        return os.path.join(self.path, "checkpoints")

    def scratch(self, task_id) -> str:
        """Where a non-chief worker of a multi-worker run writes its (discarded) checkpoints."""
        return os.path.join(self.path, "scratch", f"worker_{task_id}")

    @property
    def best_model(self) -> str:
        return os.path.join(self.path, "best", MODEL_FILE)

    @property
    def best_metrics(self) -> str:
        return os.path.join(self.path, "best", "metrics.json")

    @property
    def latest_model(self) -> str:
        return os.path.join(self.path, "latest", MODEL_FILE)

    @property
    def metrics_log(self) -> str:
        return os.path.join(self.path, "metrics.jsonl")

    def summaries(self, name) -> str:
        """TensorBoard folder ``tb/<name>`` (``train``, ``validation``)."""
        return os.path.join(self.path, "tb", name)

    def find_model(self, which="auto"):
        return find_saved_model(self.path, which)


def resolve_run_dir(workdir):
    """The directory holding a run's ``operative_config.gin``: ``workdir`` itself, or for a SavedModel export
    made from a workdir (``python -m ebmm_tf.export --workdir=...``), its ``assets.extra/`` folder."""
    extra = os.path.join(workdir, "assets.extra")
    if not os.path.exists(os.path.join(workdir, CONFIG_FILE)) and os.path.exists(os.path.join(extra, CONFIG_FILE)):
        return extra
    return workdir


def checkpoint_step(workdir, kind):
    """Training step of a run's saved model of ``kind`` (``find_saved_model``): ``best/metrics.json``'s
    ``step`` (an export's ``train_metrics.json``), else the number of the last checkpoint; None if unknown."""
    import json

    if kind in ("best", "export"):
        path = RunDir(workdir).best_metrics if kind == "best" else os.path.join(workdir, "train_metrics.json")
        if os.path.exists(path):
            with open(path) as f:
                return int(json.load(f)["step"])
    import tensorflow as tf

    latest = tf.train.latest_checkpoint(RunDir(workdir).checkpoints)
    if latest and latest.rsplit("-", 1)[-1].isdigit():
        return int(latest.rsplit("-", 1)[-1])
    return None


def atomic_write_text(path, text) -> None:
    """Writes ``text`` to ``path`` through a temporary file in the same folder."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp_")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _json_default(o):
    """JSON for numpy scalars and arrays (anything else: its ``str``)."""
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def atomic_write_json(path, obj) -> None:
    """``obj`` as indented JSON (numpy values converted) to ``path``, atomically."""
    import json

    atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default))


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
    import gin

    # the modules also register gin configurables, which gin refuses while a finished run keeps the config locked
    with gin.unlock_config():
        import ebmm_tf  # noqa: F401  (energies, EnergyMemory)
        from ebmm_tf.baselines import autoencoder, kanerva, memnet, recurrent, vae  # noqa: F401


def load_saved_model(path):
    """Loads a saved ``memory.keras`` (an ``EnergyMemory`` or a learned baseline)."""
    import keras

    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist")
    register_model_classes()
    return keras.saving.load_model(path, compile=False)
