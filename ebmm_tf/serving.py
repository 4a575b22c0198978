"""Serving signatures of a trained memory: the ``tf.Module`` that ``ebmm_tf.export`` saves.

An ``EnergyMemory`` gets every signature below. A learned baseline (any ``ebmm_tf.contract.AssociativeMemory``
without an energy) gets the same ones without ``energy`` and without the ``energy`` / ``energies`` outputs; its
``<state>`` is its written state (slots, recurrent state, Hebbian trace), whose shapes come from tracing its
``write`` (a dimension that grows with N, e.g. Memory Networks' slots, is checked as ``>= 1``). A memory whose
written state is empty (the denoising autoencoder) gets only ``write_and_recall`` and
``write_and_recall_clamped``.

Every batch dimension is dynamic; ``P`` is the pattern shape (``[128]``, ``[32, 32, 1]``); ``<state>`` is one
float32 tensor per writable weight, keyed by ``state_key(memory name)``: ``memory/kernel`` -> ``memory__kernel``
(TensorFlow renames a ``/`` in an input name to ``_`` but keeps it in an output key). Signatures,
``inputs -> outputs``:

* ``write``: ``patterns [N, *P]`` -> ``<state>``;
* ``recall``: ``<state>``, ``queries [M, *P]`` -> ``retrieved [M, *P]``, ``energy [M]``, ``iterates [K, M, *P]``,
  ``energies [K, M]``;
* ``recall_clamped``: as ``recall``, plus the input ``mask [M, *P]``;
* ``write_and_recall``: ``patterns [N, *P]``, ``queries [M, *P]`` -> ``retrieved [M, *P]``, ``energy [M]``;
* ``write_and_recall_clamped``: as ``write_and_recall``, plus the input ``mask [M, *P]``;
* ``energy``: ``<state>``, ``patterns [B, *P]`` -> ``energy [B]``.

``serving_default`` is ``write_and_recall``: it needs no state carried between requests, and every input
and output has the batch as its first dimension, so TF Serving's row ("instances") format works when N = M.
``mask`` marks known dimensions (1) that stay clamped to the query; an all-zero mask clamps nothing and gives
exactly the unclamped result. ``energy`` is the energy of ``retrieved`` under the written memory; ``energies``
are the energies of all K read iterates.

Every input is checked inside the graph (``tf.debugging.Assert``; TensorFlow Serving itself does not check
shapes against the signature): shape, finiteness, the data range (with a tolerance),
mask values in {0, 1} and a mask shape equal to the queries' shape. A failed check raises
``InvalidArgumentError`` whose message names the signature and the input, e.g. ``recall, input queries:
expected shape [M, 6] with M >= 1, got [3, 7]``. The computation reads a valid stand-in for a wrongly shaped
input, so no other op can fail first with a less helpful message.
"""

from __future__ import annotations

import contextlib
import re

import keras
import tensorflow as tf

from ebmm_tf import contract
from ebmm_tf.contract import MemoryState
from ebmm_tf.memory import EnergyMemory

__all__ = [
    "SIGNATURES",
    "SERVING_DEFAULT",
    "ServingModule",
    "state_key",
    "memory_name_of",
    "describe",
]

SIGNATURES = ("write", "recall", "recall_clamped", "write_and_recall", "write_and_recall_clamped", "energy")
STATELESS_SIGNATURES = ("write_and_recall", "write_and_recall_clamped")
SERVING_DEFAULT = "write_and_recall"
_RESERVED_KEYS = {"patterns", "queries", "mask", "retrieved", "energy", "iterates", "energies"}
# TensorFlow's rule for op (placeholder) names, which the TF1 loader derives from the input keys.
_VALID_KEY = re.compile(r"[A-Za-z0-9.][A-Za-z0-9_.\-]*")


def state_key(memory_name: str) -> str:
    """SignatureDef key of a writable tensor: ``memory/kernel`` -> ``memory__kernel``."""
    return memory_name.replace("/", "__")


def memory_name_of(key: str) -> str:
    """Inverse of ``state_key``."""
    return key.replace("__", "/")


def _tf_variable(v):
    """The ``tf.Variable`` behind a Keras variable (or ``v`` itself)."""
    if isinstance(v, tf.Variable):
        return v
    inner = getattr(v, "value", None)
    if isinstance(inner, tf.Variable):
        return inner
    raise TypeError(f"cannot find the tf.Variable behind {v!r} (is the Keras backend TensorFlow?)")


def _shape_str(x):
    """Runtime shape of ``x`` as a string ``"2, 6"``.

    ``tf.raw_ops.Shape`` rather than ``tf.shape``: the latter folds a fully known *static* shape into a
    constant at trace time, which would turn the check of a fed tensor into a no-op.
    """
    return tf.strings.reduce_join(tf.strings.as_string(tf.raw_ops.Shape(input=x)), separator=", ")


class _Untracked:
    """Holds objects without making them dependencies of a ``tf.Module`` (not a list, dict or Trackable)."""

    __slots__ = ("value", "write_core", "read_core", "energy_core")

    def __init__(self, value):
        self.value = value


def _fmt(v):
    return f"{v:g}"


def state_spec(memory) -> dict:
    """``{name: shape}`` of ``memory``'s written state; ``None`` marks a dimension that depends on N.

    ``EnergyMemory``: its writable weights (``energy_net.memory_spec()``). Other memories: the shapes of
    ``write``'s outputs traced for a batch of unknown size.
    """
    if isinstance(memory, EnergyMemory):
        spec = memory.energy_net.memory_spec()
        return {n: tuple(spec[n][0]) for n in memory.memory_names}
    batch = tf.TensorSpec([None, *memory.pattern_shape], memory.compute_dtype)
    traced = tf.function(lambda p: memory.write(p).weights, autograph=False).get_concrete_function(batch)
    return {n: tuple(t.shape.as_list()) for n, t in traced.structured_outputs.items()}


def signature_names(memory, spec=None) -> tuple:
    """The signatures exported for ``memory`` (module docstring); ``spec``: its ``state_spec`` if known."""
    if contract.has_energy(memory):
        return SIGNATURES
    if not (state_spec(memory) if spec is None else spec):
        return STATELESS_SIGNATURES
    return tuple(n for n in SIGNATURES if n != "energy")


class ServingModule(tf.Module):
    """The signatures of one memory (see the module docstring), ready for ``tf.saved_model.save``.

    Args:
      memory: a built ``EnergyMemory`` or learned baseline; its variables are captured (not copied).
      range_tolerance: inputs may exceed the data range ``(lo, hi)`` by ``range_tolerance * (hi - lo)``.
    """

    def __init__(self, memory, range_tolerance: float = 1e-3):
        super().__init__(name="ebmm_serving")
        contract.check_memory(memory)
        if range_tolerance < 0:
            raise ValueError(f"range_tolerance must be >= 0, got {range_tolerance}")
        # Track the tf.Variables themselves, not the Keras model or its Keras variables: with those as the
        # module's children the SavedModel loaded with tf.saved_model.load, but the TF1 session loader
        # (`saved_model_cli run`, TensorFlow Serving) failed on uninitialised variables (measured with TF 2.21).
        seen, variables = set(), []
        for v in memory.variables:
            tv = _tf_variable(v)
            if id(tv) not in seen:
                seen.add(id(tv))
                variables.append(tv)
        self.memory_variables = variables

        spec = state_spec(memory)
        names = list(spec)
        keys = [state_key(n) for n in names]
        bad = [k for k in keys if not _VALID_KEY.fullmatch(k) or k in _RESERVED_KEYS or memory_name_of(k) not in names]
        if bad or len(set(keys)) != len(keys):
            raise ValueError(f"memory names {names} do not map to distinct valid signature keys: {keys}")
        if any(sum(d is None for d in spec[n]) > 1 for n in names):
            raise ValueError(f"a state tensor may have at most one dimension that depends on N, got {spec}")
        self._holder = _Untracked(memory)  # keeps the Keras model out of the saved object graph (see above)
        self._names, self._keys = names, keys
        self._state_shapes = [spec[n] for n in names]
        self._has_energy = contract.has_energy(memory)
        self.signature_names = signature_names(memory, spec)
        self.pattern_shape = tuple(memory.pattern_shape)
        lo, hi = memory.data_range
        self._range = (lo, hi, range_tolerance * (hi - lo))

        p = list(self.pattern_shape)
        # State inputs declare no shape: grappler optimises for the declared shape (a fully static one is folded
        # into a constant, turning the shape check of a wrongly shaped feed into a no-op; a declared rank of 1
        # broke the value checks of a rank-2 feed). The shape is checked in the graph (_checked_state).
        state_specs = [tf.TensorSpec(None, tf.float32, name=k) for k in keys]
        patterns = tf.TensorSpec([None] + p, tf.float32, name="patterns")
        queries = tf.TensorSpec([None] + p, tf.float32, name="queries")
        mask = tf.TensorSpec([None] + p, tf.float32, name="mask")
        n_state = len(keys)

        # The write and read computations are traced once each, as functions that every signature calls
        # (one copy in the SavedModel, one trace at export); the signatures only add the input checks.
        checked_state = [tf.TensorSpec(s, tf.float32) for s in self._state_shapes]
        checked_batch = tf.TensorSpec([None] + p, tf.float32)
        self._holder.write_core = tf.function(
            self._write_core, input_signature=[checked_batch], autograph=False, reduce_retracing=True
        )
        self._holder.read_core = tf.function(
            self._read_core, input_signature=[checked_state, checked_batch, checked_batch], autograph=False
        )
        if self._has_energy:
            self._holder.energy_core = tf.function(
                self._energy_core, input_signature=[checked_state, checked_batch], autograph=False
            )

        def write(patterns):
            return self._write(patterns, "write")

        def recall(*args):
            return self._recall(args[:n_state], args[n_state], None, "recall")

        def recall_clamped(*args):
            return self._recall(args[:n_state], args[n_state], args[n_state + 1], "recall_clamped")

        def write_and_recall(patterns, queries):
            return self._write_and_recall(patterns, queries, None, "write_and_recall")

        def write_and_recall_clamped(patterns, queries, mask):
            return self._write_and_recall(patterns, queries, mask, "write_and_recall_clamped")

        def energy(*args):
            return self._energy(args[:n_state], args[n_state], "energy")

        self.write_and_recall = tf.function(write_and_recall, input_signature=[patterns, queries], autograph=False)
        self.write_and_recall_clamped = tf.function(
            write_and_recall_clamped, input_signature=[patterns, queries, mask], autograph=False
        )
        if "write" in self.signature_names:
            self.write = tf.function(write, input_signature=[patterns], autograph=False)
            self.recall = tf.function(recall, input_signature=state_specs + [queries], autograph=False)
            self.recall_clamped = tf.function(
                recall_clamped, input_signature=state_specs + [queries, mask], autograph=False
            )
        if "energy" in self.signature_names:
            self.energy = tf.function(energy, input_signature=state_specs + [patterns], autograph=False)

    @property
    def memory(self):
        return self._holder.value

    def signatures(self) -> dict:
        """``{signature key: tf.function}`` for ``tf.saved_model.save``, ``serving_default`` included.

        The functions are traced by ``tf.saved_model.save`` itself (tracing them before would be wasted: the
        save traced them again in its own context).
        """
        out = {name: getattr(self, name) for name in self.signature_names}
        out["serving_default"] = out[SERVING_DEFAULT]
        return out

    # ------------------------------------------------------------------ validation (graph ops)
    # The checks do not rely on running first. Grappler rewrites the graph for the shapes it knows (the
    # declared ones, or under tf.saved_model.load the actual ones) and was seen to run ops that depend on a
    # shape check, through control dependencies and tf.cond guards alike, before or without it. So every check
    # is an Assert that always runs (TF2 functions execute all stateful ops), and the computation reads a *safe*
    # stand-in: the input when its shape is right, else a valid constant of the right shape. A bad input then
    # cannot make any other op fail first; the only errors are the Asserts' messages.
    def _check_shape(self, x, name, signature, expected, batch=None):
        """``(ok, assert op)`` for the runtime shape of ``x``: ``expected`` dims after a batch named ``batch``."""
        dims = ", ".join("n" if d is None else str(d) for d in expected)
        if batch is None and None in expected:  # a dimension that grows with N: any size >= 1
            pattern = ", ".join(r"[1-9][0-9]*" if d is None else re.escape(str(d)) for d in expected)
            shown = f"[{dims}] with n >= 1"
        elif batch is None:
            pattern, shown = re.escape(dims), f"[{dims}]"
        else:
            pattern = r"[1-9][0-9]*" + re.escape(", " + dims if dims else "")
            shown = f"[{batch}, {dims}] with {batch} >= 1" if dims else f"[{batch}] with {batch} >= 1"
        got = _shape_str(x)
        ok = tf.strings.regex_full_match(got, pattern)
        msg = tf.strings.join([f"{signature}, input {name}: expected shape {shown}, got [", got, "]"])
        return ok, tf.debugging.Assert(ok, [msg], name=f"check_{name}_shape")

    @staticmethod
    def _safe(x, ok, shape, fill):
        """``x`` reshaped to ``shape`` if ``ok`` (its shape is right), else ``shape`` (batch 1) filled with ``fill``."""
        static = [1 if d is None else d for d in shape]
        return tf.cond(
            ok, lambda: tf.reshape(x, [-1 if d is None else d for d in shape]), lambda: tf.fill(static, fill)
        )

    def _check_values(self, x, name, signature, in_range=True):
        """Asserts that ``x`` (a safe stand-in) is finite and, if ``in_range``, within the data range."""
        flat = tf.reshape(x, [-1])
        finite = tf.math.is_finite(flat)
        n_nan = tf.reduce_sum(tf.cast(tf.math.is_nan(flat), tf.int32))
        n_inf = tf.reduce_sum(tf.cast(tf.math.is_inf(flat), tf.int32))
        msg = tf.strings.join(
            [
                f"{signature}, input {name}: expected finite values, got ",
                tf.strings.as_string(n_nan),
                " NaN and ",
                tf.strings.as_string(n_inf),
                " Inf values",
            ]
        )
        tf.debugging.Assert(tf.reduce_all(finite), [msg], name=f"check_{name}_finite")
        if not in_range:
            return
        lo, hi, tol = self._range
        inside = tf.logical_and(flat >= lo - tol, flat <= hi + tol)
        values = tf.boolean_mask(flat, finite)  # NaN and Inf are reported above, not as out of range
        msg = tf.strings.join(
            [
                f"{signature}, input {name}: expected values in the data range [{_fmt(lo)}, {_fmt(hi)}] "
                f"(tolerance {_fmt(tol)}), got values from ",
                tf.strings.as_string(tf.reduce_min(values)),
                " to ",
                tf.strings.as_string(tf.reduce_max(values)),
            ]
        )
        ok = tf.reduce_all(tf.logical_or(inside, tf.logical_not(finite)))
        tf.debugging.Assert(ok, [msg], name=f"check_{name}_range")

    def _checked_batch(self, x, name, signature, batch):
        """Safe stand-in for patterns or queries ``[batch, *P]``; asserts shape, finiteness and range."""
        ok, _ = self._check_shape(x, name, signature, self.pattern_shape, batch)
        x = self._safe(x, ok, (None,) + self.pattern_shape, self._range[0])
        self._check_values(x, name, signature)
        return x

    def _checked_mask(self, mask, queries, safe_queries, signature):
        """Safe stand-in for ``mask`` (zeros unless its shape is right); asserts its shape and values."""
        ok, _ = self._check_shape(mask, "mask", signature, self.pattern_shape, "M")
        got, want = _shape_str(mask), _shape_str(queries)
        same = tf.equal(got, want)
        msg = tf.strings.join([f"{signature}, input mask: expected the shape of queries [", want, "], got [", got, "]"])
        tf.debugging.Assert(tf.logical_or(tf.logical_not(ok), same), [msg], name="check_mask_matches_queries")
        use = tf.logical_and(ok, tf.equal(got, _shape_str(safe_queries)))  # mask fits the stand-in queries
        mask = tf.cond(use, lambda: tf.reshape(mask, tf.shape(safe_queries)), lambda: tf.zeros_like(safe_queries))
        flat = tf.reshape(mask, [-1])
        binary = tf.logical_or(tf.equal(flat, 0.0), tf.equal(flat, 1.0))
        msg = tf.strings.join(
            [
                f"{signature}, input mask: expected only 0 (free) and 1 (known, clamped to the query), got ",
                tf.strings.as_string(tf.reduce_sum(tf.cast(tf.logical_not(binary), tf.int32))),
                " of ",
                tf.strings.as_string(tf.size(flat)),
                " values that are neither",
            ]
        )
        tf.debugging.Assert(tf.reduce_all(binary), [msg], name="check_mask_values")
        return mask

    def _checked_state(self, tensors, signature):
        out = []
        for key, shape, t in zip(self._keys, self._state_shapes, tensors):
            ok, _ = self._check_shape(t, key, signature, shape)
            t = self._safe(t, ok, shape, 0.0)
            self._check_values(t, key, signature, in_range=False)
            out.append(t)
        return out

    # ------------------------------------------------------------------ computations (checked inputs)
    def _steps(self):
        # Nested step functions: the SavedModel holds one write step (and its gradients) called T times instead
        # of T unrolled copies, several times smaller (a paper-scale conv memory: see export/README.md).
        if isinstance(self.memory, contract.NestedSteps):
            return self.memory.nested_step_functions()
        return contextlib.nullcontext()

    def _write_core(self, patterns):
        with self._steps():
            state = self.memory.write(tf.cast(patterns, self.memory.compute_dtype))
        return [tf.cast(state.weights[n], tf.float32) for n in self._names]

    def _read_core(self, state_tensors, queries, mask):
        """``(retrieved [M, *P], energy [M], iterates [K, M, *P], energies [K, M])``.

        Always clamps with ``mask``: an all-zero mask gives ``x * 1 + q * 0 = x``, exactly the unclamped read.
        """
        dt = self.memory.compute_dtype
        state = MemoryState({n: tf.cast(t, dt) for n, t in zip(self._names, state_tensors)})
        with self._steps():
            iterates = self.memory.read(state, tf.cast(queries, dt), tf.cast(mask, dt))
        stacked = tf.stack(iterates)  # [K, M, *P]
        if not self._has_energy:
            stacked = tf.cast(stacked, tf.float32)
            return stacked[-1], None, stacked, None
        flat = tf.reshape(stacked, [-1, *self.pattern_shape])
        energies = tf.reshape(self.memory.energy(state, flat), [len(iterates), -1])
        stacked, energies = tf.cast(stacked, tf.float32), tf.cast(energies, tf.float32)
        return stacked[-1], energies[-1], stacked, energies

    def _energy_core(self, state_tensors, patterns):
        state = MemoryState(dict(zip(self._names, state_tensors)))
        return tf.cast(self.memory.energy(state, patterns), tf.float32)

    # ------------------------------------------------------------------ signatures
    def _checked_read(self, state_tensors, queries, mask, signature):
        q = self._checked_batch(queries, "queries", signature, "M")
        mask = tf.zeros_like(q) if mask is None else self._checked_mask(mask, queries, q, signature)
        return self._holder.read_core(state_tensors, q, mask)

    def _write(self, patterns, signature):
        x = self._checked_batch(patterns, "patterns", signature, "N")
        return dict(zip(self._keys, self._holder.write_core(x)))

    def _recall(self, state_tensors, queries, mask, signature):
        state = self._checked_state(state_tensors, signature)
        retrieved, energy, iterates, energies = self._checked_read(state, queries, mask, signature)
        if not self._has_energy:
            return {"retrieved": retrieved, "iterates": iterates}
        return {"retrieved": retrieved, "energy": energy, "iterates": iterates, "energies": energies}

    def _write_and_recall(self, patterns, queries, mask, signature):
        x = self._checked_batch(patterns, "patterns", signature, "N")
        state = self._holder.write_core(x)
        retrieved, energy, _, _ = self._checked_read(state, queries, mask, signature)
        if not self._has_energy:
            return {"retrieved": retrieved}
        return {"retrieved": retrieved, "energy": energy}

    def _energy(self, state_tensors, patterns, signature):
        state = self._checked_state(state_tensors, signature)
        x = self._checked_batch(patterns, "patterns", signature, "B")
        return {"energy": self._holder.energy_core(state, x)}


def describe(memory) -> dict:
    """JSON-able description of the exported signatures (written to ``assets.extra/ebmm_tf_export.json``).

    ``state`` shapes hold ``null`` for a dimension that grows with N."""
    spec = state_spec(memory)
    out = {
        "format": "ebmm_tf SavedModel export, version 1",
        "signatures": list(signature_names(memory, spec)),
        "serving_default": SERVING_DEFAULT,
        "pattern_shape": list(memory.pattern_shape),
        "data_range": list(memory.data_range),
        "memory_size": memory.memory_size(),
        "model": type(memory).__name__,
        "state": {state_key(n): {"memory_name": n, "shape": list(shape)} for n, shape in spec.items()},
        "keras_version": keras.__version__,
        "tensorflow_version": tf.__version__,
    }
    if isinstance(memory, EnergyMemory):
        out.update(
            write_steps=memory.write_steps,
            read_steps=memory.read_steps,
            energy_network=type(memory.energy_net).__name__,
        )
    return out
