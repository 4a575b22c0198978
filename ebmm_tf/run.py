"""A run's task and configuration, read once from the ``Experiment.*`` gin bindings for every job.

Training (``ebmm_tf.trainer``), evaluation (``ebmm_tf.evaluate``), export and the benchmarks all build what they
need from the same bindings through this module:

* ``Task``: what is stored and recalled (source, N, distortion, sampler, classes) and its episode stream;
* ``RunConfig``: the task plus the run's seeds, validation split and data directory;
* ``config_from_gin()``: the ``RunConfig`` of the parsed gin configuration, with ``Experiment``'s defaults
  for what a file leaves unbound (the defaults live here, ``DEFAULTS``, and ``Experiment`` takes them from
  here);
* ``build_memory(task, ...)``: the memory of ``Experiment.energy`` / ``Experiment.model``;
* ``parse_gin`` and ``make_strategy``.

The workdir layout and model files belong to ``ebmm_tf.rundir``; the error metrics to ``ebmm_tf.metrics``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os

import gin
from ebmm_tf import data as data_lib
from ebmm_tf import metrics

__all__ = [
    "DEFAULTS",
    "RunConfig",
    "Task",
    "build_memory",
    "config_from_gin",
    "make_strategy",
    "memory_from_gin",
    "parse_gin",
]

# Experiment's defaults for the bindings that every job reads (Experiment's signature uses these values).
DEFAULTS = {
    "sampler": "uniform",
    "num_classes": 2,
    "seed": 0,
    "validation_split": "validation",
    "validation_seed": 10_007,
    "data_dir": None,
}


@dataclasses.dataclass(frozen=True)
class Task:
    """What a run stores and recalls.

    Attributes:
      source: a data source of ``ebmm_tf.data.SOURCES``.
      num_patterns: N, the patterns written per episode.
      distortion: ``(patterns, seed) -> Distorted`` (``ebmm_tf.distortions``), or None (queries = patterns).
      sampler, num_classes: how episodes draw their patterns (``uniform`` or ``correlated`` over
        ``num_classes`` classes, Appendix A.7).
    """

    source: str
    num_patterns: int
    distortion: object = None
    sampler: str = DEFAULTS["sampler"]
    num_classes: int = DEFAULTS["num_classes"]

    def __post_init__(self):
        if self.source not in data_lib.SOURCES:
            raise ValueError(f"Unknown source {self.source!r}; expected one of {data_lib.SOURCES}")
        if int(self.num_patterns) < 1:
            raise ValueError(f"num_patterns must be >= 1, got {self.num_patterns}")

    @property
    def clamps(self) -> bool:
        """Whether the distortion gives a clamp mask that the read keeps fixed (binary-string protocol)."""
        return bool(getattr(self.distortion, "clamps", False))

    @property
    def metric(self) -> str:
        return metrics.error_metric(self.source)

    @property
    def pattern_shape(self) -> tuple:
        return tuple(data_lib.pattern_shape(self.source))

    @property
    def data_range(self) -> tuple:
        return tuple(data_lib.data_range(self.source))

    def with_num_patterns(self, num_patterns) -> Task:
        return dataclasses.replace(self, num_patterns=int(num_patterns))

    def episodes(self, split, seed, data_dir=None, start=0, with_indices=False):
        """The episode stream of ``split`` (``ebmm_tf.data.make_episodes``): episode ``i`` is a pure function of
        ``(seed, i)``; ``start`` skips the first episodes."""
        return data_lib.make_episodes(
            self.source,
            split,
            int(self.num_patterns),
            distortion=self.distortion,
            seed=seed,
            data_dir=data_dir,
            sampler=self.sampler,
            num_classes=self.num_classes,
            start=start,
            with_indices=with_indices,
        )


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """A run's task with the seeds and split that chose its checkpoint (evaluation keeps clear of them)."""

    task: Task
    seed: int = DEFAULTS["seed"]
    validation_split: str = DEFAULTS["validation_split"]
    validation_seed: int = DEFAULTS["validation_seed"]
    data_dir: str | None = DEFAULTS["data_dir"]


_UNBOUND = object()


def _evaluate_reference(value):
    """A gin ``@name()`` reference -> the object it builds; ``@name`` -> the callable; anything else unchanged."""
    if isinstance(value, gin.config.ConfigurableReference):
        return value.scoped_configurable_fn() if value.evaluate else value.scoped_configurable_fn
    return value


def bound(name, default=_UNBOUND):
    """The value bound to ``Experiment.<name>`` in the parsed configuration (references evaluated), else
    ``default`` (``DEFAULTS`` when not given)."""
    try:
        value = gin.query_parameter(f"Experiment.{name}")
    except ValueError:  # not bound
        if default is _UNBOUND:
            if name not in DEFAULTS:
                raise ValueError(f"the configuration binds no Experiment.{name}") from None
            return DEFAULTS[name]
        return default
    return _evaluate_reference(value)  # errors of the referenced constructor propagate


def config_from_gin() -> RunConfig:
    """The ``RunConfig`` of the parsed gin configuration (``Experiment.source`` and ``num_patterns`` required)."""
    source, num_patterns = bound("source", None), bound("num_patterns", None)
    if source is None or num_patterns is None:
        raise ValueError("the configuration binds no Experiment.source / Experiment.num_patterns")
    distortion = bound("distortion", None)
    if isinstance(distortion, type):
        distortion = distortion()
    task = Task(
        source=source,
        num_patterns=int(num_patterns),
        distortion=distortion,
        sampler=bound("sampler"),
        num_classes=int(bound("num_classes")),
    )
    return RunConfig(
        task=task,
        seed=int(bound("seed")),
        validation_split=bound("validation_split"),
        validation_seed=int(bound("validation_seed")),
        data_dir=bound("data_dir"),
    )


def build_memory(task: Task, energy=None, model=None, **memory_kwargs):
    """The memory of a run: ``EnergyMemory(energy(pattern_shape=...))`` (gin-configurable ``EnergyMemory``), or
    ``model(net_or_None, pattern_shape=..., data_range=...)`` for a memory without energy (a baseline).

    Build it inside the strategy's scope. ``memory_kwargs`` go to ``EnergyMemory`` (e.g. ``recompute``).
    """
    from ebmm_tf import configurables, contract
    from ebmm_tf.energies import EnergyNetwork

    if energy is None and model is None:
        raise ValueError("Experiment.energy is required (or Experiment.model for a model without energy)")
    net = None if energy is None else energy(pattern_shape=task.pattern_shape)
    if net is not None and not isinstance(net, EnergyNetwork):
        raise TypeError(f"energy must build an EnergyNetwork, got {type(net).__name__}")
    if model is None:
        memory = configurables.EnergyMemory(net, data_range=task.data_range, **memory_kwargs)
    else:
        memory = model(net, pattern_shape=task.pattern_shape, data_range=task.data_range)
    contract.check_memory(memory)
    return memory


def memory_from_gin(task: Task, **memory_kwargs):
    """``build_memory`` with ``Experiment.energy`` / ``Experiment.model`` of the parsed configuration."""
    return build_memory(task, bound("energy", None), bound("model", None), **memory_kwargs)


# ====================================================================== gin and strategies
_SEARCH_PATHS = set()


class _GinProbeFilter(logging.Filter):
    """gin logs an ERROR for every search-path candidate of an `include` that does not exist; those probes are
    expected (the include then resolves against gin/), so they are dropped."""

    def filter(self, record):
        return not (record.levelno == logging.ERROR and str(record.msg).startswith("Path not found"))


def parse_gin(gin_files, gin_params, skip_unknown=False):
    """Parses gin files and bindings; ``skip_unknown=False`` makes a misspelt binding fail right away."""
    for f in gin_files or []:
        if not os.path.exists(f):
            raise FileNotFoundError(f"gin file not found: {f}")
        # `include 'base/x.gin'` resolves against the nearest ancestor folder that holds base/ (gin/)
        root = os.path.dirname(os.path.abspath(f))
        while not os.path.isdir(os.path.join(root, "base")) and os.path.dirname(root) != root:
            root = os.path.dirname(root)
        if root not in _SEARCH_PATHS:
            gin.add_config_file_search_path(root)
            _SEARCH_PATHS.add(root)
    root_logger = logging.getLogger()
    probe_filter = _GinProbeFilter()
    root_logger.addFilter(probe_filter)
    for handler in root_logger.handlers:
        handler.addFilter(probe_filter)
    try:
        gin.parse_config_files_and_bindings(gin_files, gin_params, skip_unknown=skip_unknown)
    finally:
        root_logger.removeFilter(probe_filter)
        for handler in root_logger.handlers:
            handler.removeFilter(probe_filter)


def make_strategy(kind: str = "auto"):
    """``auto``: MultiWorkerMirrored if ``TF_CONFIG`` names several workers, Mirrored on several GPUs (or
    several logical CPU devices when ``kind == "mirrored"``), else the default strategy."""
    import tensorflow as tf

    cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    workers = len(cluster.get("worker", [])) + len(cluster.get("chief", []))
    if kind == "multi_worker" or (kind == "auto" and workers > 1):
        return tf.distribute.MultiWorkerMirroredStrategy()
    if kind == "mirrored":
        devices = [d.name for d in tf.config.list_logical_devices("GPU")] or [
            d.name for d in tf.config.list_logical_devices("CPU")
        ]
        return tf.distribute.MirroredStrategy(devices)
    if kind == "auto" and len(tf.config.list_logical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    if kind not in ("auto", "default"):
        raise ValueError(f"strategy must be auto, default, mirrored or multi_worker; got {kind!r}")
    return tf.distribute.get_strategy()
