"""Does a memory use what was written into it? Memory-use diagnostics for every reported error.

A meta-trained model can reach a low retrieval error without using its memory at all: it becomes a denoiser
whose output is the same whatever was written. The error alone cannot tell the two apart, so every
validation (``ebmm_tf.trainer``) and every evaluation (``ebmm_tf.evaluate``) also measures, over a sequence of
episodes of one split:

* **memory gain**: the queries of episode ``i`` are also read from the memory written with *another* episode
  (episode ``i - 1``; episode 0 from the last one), and the gain is ``error(other memory) - error(own
  memory)``, averaged over all patterns (``memory_gain``), with the 5th/95th percentiles of its per-episode
  values (``memory_gain_p5``, ``memory_gain_p95``) and the cross-memory error itself (``cross_mean``). A memory
  that does not use its memory has a gain near 0; it is flagged ``uses_memory = False`` unless at least 95% of
  the episodes recall better from their own memory (``memory_gain_p5 > 0``). ``memory_gain_batches`` lists the
  per-episode gains in stream order.
* **energy AUC** (models with an energy): for each written memory, the probability that a stored pattern has a
  lower energy than a pattern of another episode (not stored), ties counting one half; averaged over memories
  (``energy_auc``). 0.5: the energy does not know what was stored; 1.0: every stored pattern is below every
  non-stored one.
* **write specificity** (``EnergyMemory``), per writable layer: the relative write size
  ``||theta_T - theta_bar|| / ||theta_bar||`` and the cosine between the writes ``theta_T - theta_bar`` of two
  different episodes (``write_layers``; ``write_cosine`` / ``write_relative`` average the layers). A cosine
  near 1 means the write is the same offset whatever the batch: a write that stores nothing specific.

``MemoryUseProbe(model, source, clamps).run(episodes, callback)`` computes all of it in one pass (two reads per
episode instead of one); ``callback(episode, own)`` receives each episode's own-memory outputs so that callers
accumulate their error summaries from the same pass.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from ebmm_tf import contract, metrics

__all__ = ["MemoryUseProbe", "MemoryUseSummary", "energy_auc", "describe"]


def energy_auc(stored, other) -> float:
    """P(E(stored) < E(other)) + P(equal) / 2 over all pairs (the Mann-Whitney AUC), for 1-D energy arrays.

    NaN if any energy is not finite. Computed from ranks (ties share their average rank): O(n log n).
    """
    a = np.asarray(stored, np.float64).reshape(-1)
    b = np.asarray(other, np.float64).reshape(-1)
    if a.size == 0 or b.size == 0:
        raise ValueError("energy_auc needs at least one stored and one other energy")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return float("nan")
    both = np.concatenate([a, b])
    order = np.argsort(both, kind="mergesort")
    sorted_vals = both[order]
    ranks = np.empty(both.size)
    starts = np.flatnonzero(np.r_[True, sorted_vals[1:] != sorted_vals[:-1]])
    ends = np.r_[starts[1:], both.size]
    for i, j in zip(starts, ends):  # 1-based average rank of each run of equal values
        ranks[order[i:j]] = 0.5 * (i + j - 1) + 1.0
    u_b = ranks[a.size :].sum() - b.size * (b.size + 1) / 2.0  # pairs where b ranks above a
    return float(u_b / (a.size * b.size))


def _cosine(a, b):
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return float(np.dot(a, b) / (na * nb)) if na > 0 and nb > 0 else float("nan")


class MemoryUseSummary:
    """Accumulates the per-episode figures of ``MemoryUseProbe``; ``result()`` gives the summary dict."""

    def __init__(self, layer_names=()):
        self.layer_names = list(layer_names)
        self.own_sum = self.cross_sum = 0.0
        self.count = 0
        self.gains = []  # per episode: mean(cross) - mean(own)
        self.aucs = []
        self.relative = []  # per episode: [layers]
        self.cosines = []  # per pair of consecutive episodes: [layers]

    def add_pair(self, own_errors, cross_errors):
        own = np.asarray(own_errors, np.float64).reshape(-1)
        cross = np.asarray(cross_errors, np.float64).reshape(-1)
        self.own_sum += float(own.sum())
        self.cross_sum += float(cross.sum())
        self.count += own.size
        self.gains.append(float(cross.mean() - own.mean()))

    def result(self) -> dict:
        nan = float("nan")
        out = {"memory_gain": nan, "memory_gain_p5": nan, "memory_gain_p95": nan, "cross_mean": nan}
        if self.gains:
            p5, p95 = np.percentile(self.gains, [5.0, 95.0])
            # per episode, in stream order: episode 0 (read from the last memory) was paired last
            out["memory_gain_batches"] = [self.gains[-1]] + self.gains[:-1]
            out.update(
                memory_gain=(self.cross_sum - self.own_sum) / self.count,
                memory_gain_p5=float(p5),
                memory_gain_p95=float(p95),
                cross_mean=self.cross_sum / self.count,
            )
        out["uses_memory"] = bool(len(self.gains) >= 2 and out["memory_gain_p5"] > 0)
        out["memory_pairs"] = len(self.gains)
        if self.aucs:
            out["energy_auc"] = float(np.nanmean(self.aucs)) if np.any(np.isfinite(self.aucs)) else nan
        if self.relative:
            rel = np.mean(np.asarray(self.relative), axis=0)
            cos = np.nanmean(np.asarray(self.cosines), axis=0) if self.cosines else [nan] * len(rel)
            out["write_layers"] = {
                name: {"relative_write": float(r), "write_cosine": float(c)}
                for name, r, c in zip(self.layer_names, rel, cos)
            }
            out["write_relative"] = float(np.mean(rel))
            out["write_cosine"] = float(np.nanmean(cos)) if np.any(np.isfinite(cos)) else nan
        return out


class MemoryUseProbe:
    """Own-memory and cross-memory reads of a sequence of episodes (see the module docstring).

    Args:
      model: an ``EnergyMemory`` or a baseline with ``write`` / ``read`` (``energy`` and ``theta_bar`` are used
        when present).
      source: the data source (chooses Hamming or squared error, as ``ebmm_tf.metrics.per_pattern_error``).
      clamps: pass each episode's ``clamp`` mask to ``read`` (binary-string protocol).
    """

    def __init__(self, model, source, clamps=False):
        from ebmm_tf.memory import EnergyMemory

        self.model, self.source, self.clamps = model, source, bool(clamps)
        self.has_energy = contract.has_energy(model)
        self.has_writes = isinstance(model, EnergyMemory)
        self.layer_names = []
        if self.has_writes:
            layers = model.energy_net.writable_layers()
            self.layer_names = [layer.name for layer in layers]
        self._own = tf.function(self._own_impl)
        self._cross = tf.function(self._cross_impl)

    # ------------------------------------------------------------------ compiled halves
    def _errors(self, patterns, x):
        return metrics.per_pattern_error(self.source, patterns, x)

    def _layer_deltas(self, state):
        """Per writable layer: the flattened write ``theta_T - theta_bar`` and ``||theta_bar||``."""
        model = self.model
        deltas = [[] for _ in self.layer_names]
        bars = [[] for _ in self.layer_names]
        for j, (name, bar) in enumerate(zip(model.memory_names, model.theta_bar)):
            layer = model._layer_of[j]
            deltas[layer].append(tf.reshape(state.weights[name] - bar, [-1]))
            bars[layer].append(tf.reshape(tf.convert_to_tensor(bar), [-1]))
        return [tf.concat(d, 0) for d in deltas], [tf.norm(tf.concat(b, 0)) for b in bars]

    def _own_impl(self, patterns, queries, clamp):
        model = self.model
        state = model.write(patterns)
        iterates = model.read(state, queries, clamp if self.clamps else None)
        out = {
            "state": state,
            "iterates": iterates,
            "errors": tf.stack([self._errors(patterns, it) for it in iterates]),
            "query_errors": self._errors(patterns, queries),
        }
        if self.has_energy:
            out["energy_stored"] = model.energy(state, patterns)
            out["energy_distorted"] = model.energy(state, queries)
            out["energy_retrieved"] = model.energy(state, iterates[-1])
        if self.has_writes:
            out["deltas"], out["bar_norms"] = self._layer_deltas(state)
        return out

    def _cross_impl(self, state, patterns, queries, clamp):
        """Reads ``queries`` from ``state`` (another episode's memory); energies of ``patterns`` under it."""
        iterates = self.model.read(state, queries, clamp if self.clamps else None)
        out = {"errors": self._errors(patterns, iterates[-1])}
        if self.has_energy:
            out["energy_other"] = self.model.energy(state, patterns)
        return out

    # ------------------------------------------------------------------ the pass
    def own(self, episode):
        """Own-memory outputs of one episode (``state``, ``iterates``, ``errors [K, N]``, ``query_errors``, ...)."""
        return self._own(episode["patterns"], episode["queries"], episode["clamp"])

    def run(self, episodes, callback=None) -> dict:
        """One pass over ``episodes`` (an iterable of episode dicts with ``patterns``, ``queries``, ``clamp``).

        ``callback(episode, own)`` is called with every episode's own-memory outputs. Returns
        ``MemoryUseSummary.result()``.
        """
        summary = MemoryUseSummary(self.layer_names)
        first = prev = None  # (episode, own outputs)

        def pair(memory_of, reader):
            """``reader``'s queries read from ``memory_of``'s memory."""
            ep_m, own_m = memory_of
            ep_r, own_r = reader
            cross = self._cross(own_m["state"], ep_r["patterns"], ep_r["queries"], ep_r["clamp"])
            summary.add_pair(own_r["errors"][-1].numpy(), cross["errors"].numpy())
            if self.has_energy:
                summary.aucs.append(energy_auc(own_m["energy_stored"].numpy(), cross["energy_other"].numpy()))
            if self.has_writes:
                summary.cosines.append(
                    [_cosine(a.numpy(), b.numpy()) for a, b in zip(own_m["deltas"], own_r["deltas"])]
                )

        for episode in episodes:
            if "clamp" not in episode:
                episode = dict(episode, clamp=tf.zeros_like(episode["patterns"]))
            own = self.own(episode)
            if callback is not None:
                callback(episode, own)
            if self.has_writes:
                summary.relative.append(
                    [
                        float(tf.norm(d)) / float(b) if float(b) > 0 else math.inf
                        for d, b in zip(own["deltas"], own["bar_norms"])
                    ]
                )
            current = (episode, own)
            if prev is not None:
                pair(prev, current)
            else:
                first = current
            prev = current
        if first is not None and prev is not first:
            pair(prev, first)
        return summary.result()


def describe(result: dict, metric="error") -> str:
    """One line: memory gain [p5, p95], cross error, energy AUC, write cosine / size; a warning if unused."""
    if not result.get("memory_pairs"):
        return "memory gain: n/a (needs at least two episodes)"
    parts = [
        f"memory gain {result['memory_gain']:.3f} [p5 {result['memory_gain_p5']:.3f}, "
        f"p95 {result['memory_gain_p95']:.3f}] (other memory's {metric} {result['cross_mean']:.3f})"
    ]
    if "energy_auc" in result:
        parts.append(f"energy AUC {result['energy_auc']:.3f}")
    if "write_cosine" in result:
        parts.append(f"write cosine {result['write_cosine']:.3f}, relative write {result['write_relative']:.3g}")
    line = ", ".join(parts)
    if not result["uses_memory"]:
        line += "; NOT USING ITS MEMORY (recall from another batch's memory is as good)"
    return line
