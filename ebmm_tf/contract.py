"""The memory contract: what every associative memory of ebmm_tf provides, EBMM and the learned baselines alike.

The training loop (``ebmm_tf.trainer``, ``ebmm_tf.meta``), the evaluation (``ebmm_tf.evaluate``) and the
memory-use diagnostics (``ebmm_tf.diagnostics``) talk to a memory only through this contract:

* ``write(patterns [N, *pattern_shape], first_order=None) -> MemoryState``: the written memory of one episode
  (``first_order`` is for memories whose write has inner gradients; others accept and ignore it);
* ``read(state, queries [M, *pattern_shape], mask=None) -> [x_1, ..., x_K]``: the read iterates; with a clamp
  ``mask`` (1 = known) the known dimensions keep the query's value;
* ``recall(state, queries, mask=None) -> x_K``;
* ``reconstruction_loss(patterns, iterates) -> (loss, per_step [K])``: the step-wise meta-loss
  ``sum_k mean_i ||x_i - x_i^(k)||^2`` (one iterate: the paper's loss (2));
* ``memory_size() -> int``: floats of the written state (the paper's memory size);
* ``pattern_shape`` (tuple) and ``data_range`` (``(lo, hi)``).

Optional capabilities, each a protocol of its own, checked with ``isinstance``:

* ``EnergyModel``: ``energy(state, x) -> [B]`` (EBMM): the energy AUC and energy figures need it;
* ``LearnedRates``: ``rate_variables()``, the step sizes that ``MetaLearner.rate_learning_rate`` trains apart;
* ``NestedSteps``: ``nested_step_functions(enabled, inline)``, a context that compiles the write/read steps as
  nested functions (``MetaLearner.nested_steps``);
* ``OwnObjective``: ``training_loss(episode, seed=None) -> (loss, per_term)``, a memory meta-trained on its own
  objective (the VAE's negative ELBO) instead of the read loss.

``RecallMixin`` implements ``recall``, ``reconstruction_loss``, ``project`` and ``call`` (and the input check
``_cast``) once for every memory from ``write``, ``read``, ``pattern_shape`` and ``data_range``.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Protocol, runtime_checkable

import numpy as np
import tensorflow as tf

__all__ = [
    "AssociativeMemory",
    "EnergyModel",
    "LearnedRates",
    "MemoryState",
    "NestedSteps",
    "OwnObjective",
    "RecallMixin",
    "sample_normal",
    "check_memory",
    "has_energy",
]


class MemoryState(NamedTuple):
    """The written state of one episode.

    Attributes:
      weights: ``{name: tensor}``. For EBMM, the writable weights of the energy network with the shapes of
        ``energy.memory_spec()`` (no batch axis: one memory holds one episode of N patterns), which is also what
        the exported ``write`` signature returns and what ``recall`` / ``energy`` take. For a baseline, its
        written state (slots, recurrent state, Hebbian trace).
    """

    weights: dict

    def memory_size(self) -> int:
        return int(sum(math.prod(w.shape) for w in self.weights.values()))


@runtime_checkable
class AssociativeMemory(Protocol):
    """The contract every memory implements (see the module docstring)."""

    pattern_shape: tuple
    data_range: tuple

    def write(self, patterns, first_order=None) -> MemoryState: ...

    def read(self, state: MemoryState, queries, mask=None) -> list: ...

    def recall(self, state: MemoryState, queries, mask=None): ...

    def reconstruction_loss(self, patterns, iterates): ...

    def memory_size(self) -> int: ...


@runtime_checkable
class EnergyModel(Protocol):
    """A memory with an energy: ``energy(state, x [B, *pattern_shape]) -> [B]``."""

    def energy(self, state: MemoryState, x): ...


@runtime_checkable
class LearnedRates(Protocol):
    """A memory whose step sizes are variables of their own: ``rate_variables() -> list``."""

    def rate_variables(self) -> list: ...


@runtime_checkable
class NestedSteps(Protocol):
    """A memory that can compile its write/read steps as nested functions."""

    def nested_step_functions(self, enabled=True, inline=False): ...


@runtime_checkable
class OwnObjective(Protocol):
    """A memory meta-trained on its own objective instead of B.4's read loss (e.g. a VAE's negative ELBO):
    ``training_loss(episode, seed=None) -> (loss, per_term [k])``; ``ebmm_tf.meta.meta_loss`` calls it. A stochastic
    objective draws its noise with ``sample_normal``: fresh noise when ``seed`` is ``None`` (training), the same
    noise for the same integer ``seed`` (validation, so that checkpoints are compared on equal terms)."""

    def training_loss(self, episode, seed=None): ...


def sample_normal(shape, dtype, seed=None, stream=0):
    """Standard normal noise of ``shape``: stateful (fresh every call) if ``seed`` is ``None``, else the stateless
    draw of ``(seed, stream)``, the same on every call (``stream`` tells apart the draws of one objective)."""
    if seed is None:
        return tf.random.normal(shape, dtype=dtype)
    key = tf.stack([tf.cast(seed, tf.int64), tf.constant(stream, tf.int64)])
    return tf.random.stateless_normal(shape, key, dtype=dtype)


_REQUIRED = ("write", "read", "recall", "reconstruction_loss", "memory_size", "pattern_shape", "data_range")


def check_memory(model) -> None:
    """Raises ``TypeError`` naming what ``model`` lacks of ``AssociativeMemory``."""
    missing = [name for name in _REQUIRED if not hasattr(model, name)]
    if missing:
        raise TypeError(
            f"{type(model).__name__} is not an associative memory of ebmm_tf: it lacks {', '.join(missing)} "
            "(ebmm_tf.contract.AssociativeMemory)"
        )


def has_energy(model) -> bool:
    """Whether ``model`` has an energy (``EnergyModel``)."""
    return isinstance(model, EnergyModel) and callable(model.energy)


class RecallMixin:
    """``project``, ``recall``, ``reconstruction_loss`` and ``call``, shared by every memory (``EnergyMemory``
    and the learned baselines), and the input check ``_cast``: all of them need ``write``, ``read``,
    ``pattern_shape`` and ``data_range``."""

    def _cast(self, x, name):
        """``x`` as a floating tensor of the compute dtype with shape ``[batch, *pattern_shape]`` (when known).

        Called eagerly (the public API used from Python), it also rejects NaN and Inf values with the
        ``InvalidArgumentError`` that the exported signatures raise. Inside a ``tf.function`` (the compiled
        meta-training step, the signatures) nothing is added to the graph: the meta-training loop checks its loss
        and gradients instead, and the signatures check their inputs themselves.
        """
        x = tf.convert_to_tensor(x)
        if not x.dtype.is_floating:
            raise TypeError(f"{name} must be a floating tensor, got {x.dtype.name}")
        expected = tuple(self.pattern_shape)
        if x.shape.rank is not None and tuple(x.shape[1:]) != expected:
            raise ValueError(f"{name} must have shape [batch, {', '.join(map(str, expected))}], got {list(x.shape)}")
        if tf.executing_eagerly():
            values = x.numpy()
            if not np.all(np.isfinite(values)):
                n_nan, n_inf = int(np.isnan(values).sum()), int(np.isinf(values).sum())
                raise tf.errors.InvalidArgumentError(
                    None,
                    None,
                    f"{type(self).__name__}, input {name}: expected finite values, got {n_nan} NaN and {n_inf} Inf "
                    "values",
                )
        return tf.cast(x, self.compute_dtype)

    def project(self, x):
        """Clips ``x`` into the data range."""
        return tf.clip_by_value(x, *self.data_range)

    def recall(self, state, queries, mask=None):
        """The last read iterate ``x_K``."""
        return self.read(state, queries, mask)[-1]

    def reconstruction_loss(self, patterns, iterates):
        """B.4 / eq. (2): ``sum_k mean_i ||x_i - x_i^(k)||^2``; also returns the per-step terms ``[K]``."""
        x = self._cast(patterns, "patterns")
        per_step = tf.stack(
            [tf.reduce_mean(tf.reduce_sum(tf.reshape(tf.square(x - it), [tf.shape(x)[0], -1]), -1)) for it in iterates]
        )
        return tf.reduce_sum(per_step), per_step

    def call(self, patterns, queries=None, mask=None):
        """Keras entry point: writes ``patterns`` and recalls ``queries`` (default: the patterns)."""
        state = self.write(patterns)
        return self.recall(state, patterns if queries is None else queries, mask)
