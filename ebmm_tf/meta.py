"""Meta-training (eq. 5): backpropagate the read reconstruction loss through write and read.

``MetaLearner`` owns the optimiser (AdamW, Appendix A) and two compiled functions:

* ``compute_gradients(episodes)``: under ``tf.distribute``, each replica writes and reads *its own*
  episode (a whole batch of N patterns: an episode is never split across replicas), differentiates the
  step-wise reconstruction loss (B.4) into theta_bar, the static weights and every learned rate, and the
  gradients are averaged across replicas;
* ``apply_gradients(grads)``: clips the *reduced* gradients by global norm, then applies AdamW.

Clipping happens after the cross-replica reduction, never per replica (Keras' ``global_clipnorm`` inside
``strategy.run`` would clip each replica's gradient before the sum). The two halves are separate
so that the caller can refuse non-finite gradients before anything is applied.
"""

from __future__ import annotations

import collections
import contextlib

import keras
import numpy as np
import tensorflow as tf

import gin
from ebmm_tf import contract
from ebmm_tf.memory import EnergyMemory

__all__ = ["MetaLearner", "meta_loss"]


def meta_loss(memory: EnergyMemory, episode, first_order=None, seed=None):
    """Writes ``episode["patterns"]``, reads ``episode["queries"]`` (clamping ``episode["clamp"]`` if given).

    Returns ``(loss, aux)``: ``loss`` is B.4's ``sum_k mean_i ||x_i - x_i^(k)||^2``; ``aux`` holds
    ``per_step [K]``, the ``iterates`` and the written ``state``. A memory with its own objective
    (``ebmm_tf.contract.OwnObjective``, e.g. the VAE baseline) returns that objective instead, with its terms as
    ``per_step``; ``seed`` fixes the noise of such an objective (``None``: fresh noise; B.4's loss has none).
    """
    if isinstance(memory, contract.OwnObjective):
        loss, per_term = memory.training_loss(episode, seed=seed)
        return loss, {"per_step": per_term}
    state = memory.write(episode["patterns"], first_order=first_order)
    iterates = memory.read(state, episode["queries"], episode.get("clamp"))
    loss, per_step = memory.reconstruction_loss(episode["patterns"], iterates)
    return loss, {"per_step": per_step, "iterates": iterates, "state": state}


_MIN_NORMS = 20  # skip_spikes: norms recorded before the guard acts (and the smallest spike_window)


@gin.configurable(module="ebmm_tf.meta")
class MetaLearner:
    """The meta-training step of EBMM for one ``EnergyMemory``.

    Create it (and the memory) inside ``strategy.scope()``.

    Args:
      memory: the ``EnergyMemory`` to meta-train.
      learning_rate, weight_decay: AdamW settings (paper: 5e-5, 1e-6).
      clip_norm: global-norm clipping of the averaged gradient (paper: 0.05); ``None`` disables it.
      strategy: a ``tf.distribute.Strategy``; default: the current one.
      first_order: overrides ``memory.first_order`` for training if not ``None``.
      jit_compile: compile the gradient computation with XLA, as one program. The only setting measured to make
        same-seed runs bitwise reproducible across processes (TensorFlow's graph executor is not; the CPU-scale
        binary-string config turns it on); off by default because compiling takes ~14 s more before the first
        step for the binary-string model and about a minute at paper scale (docs/performance.md).
      inline_steps: with ``nested_steps``, inline the nested steps into the meta-step graph (default): the same
        meta-gradient computed twice gives the same bits. ``False`` keeps them as function calls: a faster first
        step (tracing and graph optimisation), but the meta-gradient's last float digits vary from call to call
        sooner (docs/performance.md, "Reproducibility").
      rate_learning_rate: if set, the learned write and read step sizes (``EnergyMemory.rate_variables``) get
        their own Adam optimiser with this learning rate (no weight decay) instead of the AdamW of the other
        weights: the rates are few, and a CPU-scale run needs them to move faster than the weights. Clipping
        still applies to the global norm of all gradients together.
      decay_steps, decay_to: if ``decay_steps`` is set, both learning rates follow a cosine decay from their
        value to ``decay_to`` times it over ``decay_steps`` optimiser steps (then stay there); default constant.
      step_weights: weights ``w_k`` of the K read steps' reconstruction terms in the objective that is
        differentiated, ``sum_k w_k mean_i ||x_i - x_i^(k)||^2``; ``None`` (default): all 1, B.4's loss. A training
        choice, not a change of the model: e.g. ``(0, 0, 0, 0, 1)`` trains only for the last iterate, the one
        that the evaluation scores (B.4's equal weights let the large early-step errors dominate the gradient).
        The logged ``loss`` stays B.4's, so runs with different weights compare on one scale.
      skip_spikes: if set (a factor > 1), a meta-gradient whose global norm (before clipping) exceeds this factor
        times the median norm of the last ``spike_window`` applied steps is not applied: the step counter (and
        with it the learning-rate schedule) still moves on, the parameters and optimiser moments do not. Clipping
        bounds an update's size, not its direction, and Adam's moments keep a bad step's effect for many steps; a
        one-episode spike (a read that diverged) is then dropped instead of followed. Active once 20 norms are
        recorded (the record is not checkpointed: it refills after a resume). Default ``None``: every step applied.
      spike_window: how many applied steps' norms the median is taken over.
      max_skipped: with ``skip_spikes``, more skipped steps in a row than this raise ``FloatingPointError`` (the
        parameters have left the region where the median was measured; resume from a checkpoint with a lower
        learning rate).
      nested_steps: trace each write and read step once as a nested ``tf.function`` instead of unrolling all
        of them into one graph (``EnergyMemory.nested_step_functions``): same maths, several times less time
        before the first step, same step time (docs/performance.md). Ignored with ``jit_compile``.
    """

    def __init__(
        self,
        memory: EnergyMemory,
        learning_rate=5e-5,
        weight_decay=1e-6,
        clip_norm=0.05,
        strategy=None,
        first_order=None,
        jit_compile=False,
        nested_steps=True,
        inline_steps=True,
        rate_learning_rate=None,
        decay_steps=None,
        decay_to=0.1,
        step_weights=None,
        skip_spikes=None,
        spike_window=200,
        max_skipped=20,
    ):
        if learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive, got {learning_rate}")
        if clip_norm is not None and clip_norm <= 0:
            raise ValueError(f"clip_norm must be positive or None, got {clip_norm}")
        self.memory = memory
        self.strategy = strategy or tf.distribute.get_strategy()
        self.clip_norm = clip_norm
        self.first_order = first_order
        self.nested_steps = bool(nested_steps)
        self.inline_steps = bool(inline_steps)
        self.jit_compile = bool(jit_compile)
        if rate_learning_rate is not None and rate_learning_rate <= 0:
            raise ValueError(f"rate_learning_rate must be positive or None, got {rate_learning_rate}")
        self.variables = list(memory.trainable_variables)
        self.step_weights = None
        if step_weights is not None:
            if isinstance(memory, contract.OwnObjective) or not hasattr(memory, "read_steps"):
                raise ValueError(f"step_weights needs a memory read in steps, got {type(memory).__name__}")
            weights = [float(w) for w in step_weights]
            if len(weights) != memory.read_steps:
                raise ValueError(f"step_weights needs {memory.read_steps} weights (one per read step), got {weights}")
            if min(weights) < 0 or not sum(weights) > 0:
                raise ValueError(f"step_weights must be >= 0 with a positive sum, got {weights}")
            self.step_weights = weights
        if skip_spikes is not None and not skip_spikes > 1:
            raise ValueError(f"skip_spikes must be a factor > 1 or None, got {skip_spikes}")
        if int(spike_window) < _MIN_NORMS or int(max_skipped) < 1:
            raise ValueError(
                f"need spike_window >= {_MIN_NORMS} and max_skipped >= 1, got {spike_window}, {max_skipped}"
            )
        self.skip_spikes = None if skip_spikes is None else float(skip_spikes)
        self.max_skipped = int(max_skipped)
        self._norms = collections.deque(maxlen=int(spike_window))
        self._skipped_in_a_row = 0
        self.skipped_steps = 0
        rate_ids = set()
        if rate_learning_rate is not None:
            if not isinstance(memory, contract.LearnedRates):
                raise ValueError(f"rate_learning_rate needs a model with rate_variables(), got {type(memory).__name__}")
            rate_ids = {id(v) for v in memory.rate_variables()}
        self._is_rate = [id(v) in rate_ids for v in self.variables]
        if decay_steps is not None and (decay_steps < 1 or not 0.0 <= decay_to <= 1.0):
            raise ValueError(f"need decay_steps >= 1 and 0 <= decay_to <= 1, got {decay_steps}, {decay_to}")

        def schedule(lr):
            if decay_steps is None:
                return lr
            return keras.optimizers.schedules.CosineDecay(lr, int(decay_steps), alpha=float(decay_to))

        with self.strategy.scope():
            self.optimizer = keras.optimizers.AdamW(learning_rate=schedule(learning_rate), weight_decay=weight_decay)
            self.optimizer.build([v for v, r in zip(self.variables, self._is_rate) if not r])
            self.rate_optimizer = None
            if rate_ids:
                self.rate_optimizer = keras.optimizers.Adam(
                    learning_rate=schedule(rate_learning_rate), name="rate_adam"
                )
                self.rate_optimizer.build([v for v, r in zip(self.variables, self._is_rate) if r])
        # autograph=False: the meta-step has no tensor-dependent Python control flow (every loop is a fixed
        # unroll), and converting its code adds seconds to every trace of the large meta-gradient graph.
        self._compute = tf.function(self._compute_impl, jit_compile=jit_compile, autograph=False)
        self._apply = tf.function(self._apply_impl)
        self._skip = tf.function(self._skip_impl)

    @property
    def iterations(self):
        return self.optimizer.iterations

    # --------------------------------------------------------------- per replica
    def _replica_gradients(self, episode):
        # XLA: unrolled (nested functions inside a jit_compile function run ~100x slower, docs/performance.md)
        enabled = self.nested_steps and not self.jit_compile
        # baselines (ebmm_tf.baselines) have no write/read step functions to nest
        if isinstance(self.memory, contract.NestedSteps):
            nested = self.memory.nested_step_functions(enabled, self.inline_steps)
        else:
            nested = contextlib.nullcontext()
        with nested, tf.GradientTape() as tape:
            loss, aux = meta_loss(self.memory, episode, self.first_order)
            objective = loss
            if self.step_weights is not None:
                weights = tf.constant(self.step_weights, aux["per_step"].dtype)
                objective = tf.reduce_sum(weights * aux["per_step"])
        grads = tape.gradient(objective, self.variables)
        missing = [v.path for v, g in zip(self.variables, grads) if g is None]
        if missing:
            raise ValueError(f"These trainable variables get no meta-gradient: {missing}")
        return grads, {"loss": loss, "per_step": aux["per_step"]}

    def _compute_impl(self, episodes):
        grads, metrics = self.strategy.run(self._replica_gradients, args=(episodes,))
        mean = tf.distribute.ReduceOp.MEAN
        grads = [self.strategy.reduce(mean, g, axis=None) for g in grads]
        metrics = {k: self.strategy.reduce(mean, v, axis=None) for k, v in metrics.items()}
        metrics["grad_norm"] = tf.linalg.global_norm(grads)
        return grads, metrics

    def _apply_impl(self, grads):
        if self.clip_norm is not None:
            grads, _ = tf.clip_by_global_norm(grads, self.clip_norm)
        pairs = list(zip(grads, self.variables))
        self.optimizer.apply_gradients([p for p, r in zip(pairs, self._is_rate) if not r])
        if self.rate_optimizer is not None:
            self.rate_optimizer.apply_gradients([p for p, r in zip(pairs, self._is_rate) if r])
        return self.optimizer.iterations

    def _skip_impl(self):
        # the step counts (the schedule and the checkpoint numbers follow it); nothing else changes
        self.optimizer.iterations.assign_add(1)
        if self.rate_optimizer is not None:
            self.rate_optimizer.iterations.assign_add(1)
        return self.optimizer.iterations

    def _is_spike(self, grad_norm):
        if self.skip_spikes is None or len(self._norms) < _MIN_NORMS:
            return False
        return grad_norm > self.skip_spikes * float(np.median(self._norms))

    # --------------------------------------------------------------- public
    def compute_gradients(self, episodes):
        """Averaged meta-gradients and metrics (``loss``, ``per_step``, ``grad_norm`` before clipping).

        ``episodes``: one episode dict, or a distributed dataset element (one episode per replica).
        """
        return self._compute(episodes)

    def apply_gradients(self, grads):
        """Clips by global norm and applies AdamW; returns the new step count."""
        return self._apply(grads)

    def train_step(self, episodes):
        """Computes and applies one meta-gradient step; raises ``FloatingPointError`` on NaN/Inf.

        With ``skip_spikes``, a spike's step is counted but not applied; ``metrics["skipped"]`` says which.
        """
        grads, metrics = self.compute_gradients(episodes)
        if not bool(tf.math.is_finite(metrics["loss"])) or not bool(tf.math.is_finite(metrics["grad_norm"])):
            raise FloatingPointError(
                f"Non-finite meta-loss ({float(metrics['loss'])}) or gradient norm "
                f"({float(metrics['grad_norm'])}) at step {int(self.iterations.numpy())}; nothing was applied."
            )
        grad_norm = float(metrics["grad_norm"])
        metrics = dict(metrics)
        if self._is_spike(grad_norm):
            self._skipped_in_a_row += 1
            self.skipped_steps += 1
            if self._skipped_in_a_row > self.max_skipped:
                raise FloatingPointError(
                    f"{self._skipped_in_a_row} meta-gradients in a row above {self.skip_spikes} x the median norm "
                    f"{float(np.median(self._norms)):.4g} (last {grad_norm:.4g}) at step "
                    f"{int(self.iterations.numpy())}: the training has left its stable region; resume from a "
                    "checkpoint with a lower learning rate."
                )
            self._skip()
            metrics["skipped"] = True
            return metrics
        self._skipped_in_a_row = 0
        self._norms.append(grad_norm)
        self.apply_gradients(grads)
        metrics["skipped"] = False
        return metrics
