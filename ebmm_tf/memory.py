"""EnergyMemory: the meta-learned write rule (eq. 3-4) and read rule (eq. 1, Appendix B) of EBMM.

A written memory is a ``MemoryState``: the writable weights of the energy network for one batch of
patterns ("episode"). ``write`` produces it from the meta-learned initialisation ``theta_bar`` with T
truncated gradient steps; ``read`` retrieves patterns from queries with K steps of projected gradient
descent with Nesterov momentum on the energy. Both are pure functions of their tensor arguments (nothing
is assigned inside the loops), so they can be differentiated end to end for meta-training (eq. 5).
"""

from __future__ import annotations

import contextlib

import keras
import numpy as np
import tensorflow as tf

from ebmm_tf.contract import MemoryState, RecallMixin
from ebmm_tf.energies import EnergyNetwork
from ebmm_tf.layers import inverse_softplus, logit

__all__ = ["EnergyMemory", "MemoryState", "RecallMixin", "inverse_softplus", "logit"]


_WRITE_TERMS = ("energy", "gradient", "prior")


def _recomputed(step):
    """Gradient checkpointing of ``step(*tensors) -> tensor or list of tensors`` that may use gradient tapes.

    ``tf.recompute_grad`` runs its function with recording stopped on every tape, which silently turns the
    write/read steps' own inner gradients into None; here the forward pass records normally (inner tapes work)
    and only the custom gradient decides what the outer tapes keep: the inputs. The backward pass runs ``step``
    again under a fresh tape and backpropagates through it; variables read inside ``step`` (the energy's static
    weights) get their gradients through ``variables``. The recomputation takes a data dependency on the
    incoming gradient so that it is neither scheduled early nor merged with the forward pass by common
    subexpression elimination (docs/design.md, numerical facts).
    """

    @tf.custom_gradient
    def checkpointed(*args):
        result = step(*args)
        single = not isinstance(result, (list, tuple))
        outputs = [result] if single else list(result)

        def grad(*dresult, variables=None):
            dresult = [tf.zeros_like(o) if d is None else d for d, o in zip(dresult, outputs)]
            first = tf.reshape(dresult[0], [-1])[:1]
            dep = tf.where(tf.reduce_all(tf.math.is_finite(first)), 0.0, float("nan"))
            variables = list(variables or [])
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                inputs = [tf.identity(a) + tf.cast(dep, a.dtype) if a.dtype.is_floating else a for a in args]
                tape.watch([a for a in inputs if a.dtype.is_floating])
                tape.watch(variables)
                again = step(*inputs)
                again = [again] if single else list(again)
            grads = tape.gradient(
                again, inputs + variables, output_gradients=dresult, unconnected_gradients=tf.UnconnectedGradients.ZERO
            )
            return grads[: len(inputs)], grads[len(inputs) :]

        return (result if single else outputs), grad

    return checkpointed


@keras.saving.register_keras_serializable(package="ebmm_tf")
class EnergyMemory(RecallMixin, keras.Model):
    """Associative memory over an energy network ``E(x; theta)`` whose writable weights are the memory.

    Write (eq. 3-4): ``theta_0 = theta_bar``;
    ``theta_{t+1} = theta_t - sum_terms eta[t, layer, term] * grad_theta term`` for ``t < T`` with the terms of
    the writing loss ``W = mean_i E(x_i) + alpha * mean_i ||grad_x E(x_i)||^2 + beta * ||theta - theta_bar||^2``.
    ``eta = softplus(.)`` is one learned rate per write step, writable layer and loss term (Appendix D,
    initialised at ``write_rate_init``, 1e-4 in the paper); ``alpha``, ``beta`` are learned (softplus).

    Read (eq. 1, B.1-B.3): ``x_0 = proj(query)``, ``v_0 = 0``, for ``k = 1..K``:
    ``x_hat = proj(x_{k-1} + psi_k v_{k-1})``, ``v_k = psi_k v_{k-1} - gamma_k grad_x E(x_hat)``,
    ``x_k = proj(x_{k-1} + v_k)``. B.2 prints ``x_k = project(v_k)``; we read it as the standard Nesterov
    update above. ``proj`` clips to ``data_range``. Step sizes are non-increasing:
    ``gamma_1 = softplus(.)``, ``gamma_k = gamma_{k-1} sigmoid(eta_k)``; momenta alike with
    ``psi_1 = sigmoid(.)``. With a clamp ``mask`` (1 = known dimension), clamped dimensions keep the query's
    value at every iterate (binary-string protocol, A.2).

    Meta-loss (B.4): ``sum_k mean_i ||x_i - x_i^(k)||^2``, see ``reconstruction_loss``.

    Args:
      energy: an ``EnergyNetwork``.
      write_steps, read_steps: T and K (5 and 5 in the paper).
      data_range: ``(lo, hi)`` of the patterns; the read projection clips to it.
      write_rate_init: initial value of every write rate (paper: 1e-4).
      per_step_write_rates: one rate per write step (eq. 4's ``eta^(t)``) or one shared by all steps.
      alpha_init, beta_init: initial weights of the gradient and prior terms of the writing loss.
      read_step_init: initial ``gamma_1``; read_step_decay_init: initial ``sigmoid(eta_k)``, k > 1.
      momentum_init: initial ``psi_1``; momentum_decay_init: initial ``sigmoid`` of the momentum logits.
      first_order: stop gradients through the write steps' inner gradients (cheaper meta-gradient; the
        learned rates and theta_bar still get gradients through the update's linear path).
      recompute: gradient checkpointing of the unroll: every write and read step keeps only its inputs for the
        meta-gradient and recomputes its forward pass (inner gradients included) during backpropagation, which
        bounds the memory of a meta-step by one step's intermediates instead of T + K steps' at the price of
        one more forward pass of each step. The meta-gradient is the same (up to float rounding). Saves memory
        inside ``tf.function`` (as in ``MetaLearner``); eagerly, the outer tape still holds every step.
      learn_theta_bar: meta-train the starting memory ``theta_bar`` (the paper's choice). ``False`` keeps it at its
        initial value (e.g. starting slots drawn from data, ``set_starting_memory``); only the static weights and
        the write and read parameters are then meta-trained.
    """

    def __init__(
        self,
        energy: EnergyNetwork,
        write_steps=5,
        read_steps=5,
        data_range=(0.0, 1.0),
        write_rate_init=1e-4,
        per_step_write_rates=True,
        alpha_init=1.0,
        beta_init=1.0,
        read_step_init=1.0,
        read_step_decay_init=0.9,
        momentum_init=0.5,
        momentum_decay_init=0.9,
        first_order=False,
        recompute=False,
        learn_theta_bar=True,
        **kwargs,
    ):
        kwargs.setdefault("name", "energy_memory")
        super().__init__(**kwargs)
        if not isinstance(energy, EnergyNetwork):
            raise TypeError(f"energy must be an ebmm_tf EnergyNetwork, got {type(energy).__name__}")
        if write_steps < 1 or read_steps < 1:
            raise ValueError(f"need write_steps >= 1 and read_steps >= 1, got {write_steps}, {read_steps}")
        lo, hi = (float(v) for v in data_range)
        if not lo < hi:
            raise ValueError(f"data_range must be (lo, hi) with lo < hi, got {data_range}")
        self.energy_net = energy
        self.learn_theta_bar = bool(learn_theta_bar)
        self.write_steps, self.read_steps = int(write_steps), int(read_steps)
        self.data_range = (lo, hi)
        self.first_order = bool(first_order)
        self.recompute = bool(recompute)
        self._init = dict(
            write_rate_init=write_rate_init,
            per_step_write_rates=bool(per_step_write_rates),
            alpha_init=alpha_init,
            beta_init=beta_init,
            read_step_init=read_step_init,
            read_step_decay_init=read_step_decay_init,
            momentum_init=momentum_init,
            momentum_decay_init=momentum_decay_init,
        )

        spec = energy.memory_spec()
        if not spec:
            raise ValueError(f"{energy.name} has no writable layers")
        self.memory_names = list(spec)
        layers = energy.writable_layers()
        layer_index = {n: i for i, layer in enumerate(layers) for n in layer.memory_names}
        self._layer_of = [layer_index[n] for n in self.memory_names]
        self.theta_bar = []
        for name, (shape, fan_in) in spec.items():
            init = layers[layer_index[name]].memory_initializer(name)
            if init is None:
                init = keras.initializers.HeNormal() if len(shape) > 1 else keras.initializers.Zeros()
            self.theta_bar.append(
                self.add_weight(
                    name="theta_bar_" + name.replace("/", "_"),
                    shape=shape,
                    initializer=init,
                    trainable=self.learn_theta_bar,
                )
            )

        if len({v.name for v in self.theta_bar}) != len(self.theta_bar):  # they name its checkpoint entries
            raise ValueError(f"memory names {self.memory_names} give clashing theta_bar names")

        const = keras.initializers.Constant
        rate_rows = self.write_steps if per_step_write_rates else 1
        self.write_rates_raw = self.add_weight(
            name="write_rates",
            shape=(max(rate_rows, 1), len(layers), len(_WRITE_TERMS)),
            initializer=const(inverse_softplus(write_rate_init)),
        )
        self.alpha_raw = self.add_weight(name="alpha", shape=(), initializer=const(inverse_softplus(alpha_init)))
        self.beta_raw = self.add_weight(name="beta", shape=(), initializer=const(inverse_softplus(beta_init)))
        self.read_step_raw = self.add_weight(
            name="read_step", shape=(), initializer=const(inverse_softplus(read_step_init))
        )
        self.read_step_logits = self.add_weight(
            name="read_step_logits", shape=(self.read_steps - 1,), initializer=const(logit(read_step_decay_init))
        )
        self.momentum_raw = self.add_weight(name="momentum", shape=(), initializer=const(logit(momentum_init)))
        self.momentum_logits = self.add_weight(
            name="momentum_logits", shape=(self.read_steps - 1,), initializer=const(logit(momentum_decay_init))
        )
        self.built = True

    # ------------------------------------------------------------------ learned schedules
    def write_rates(self):
        """``[T (or 1), num_writable_layers, 3]`` rates for the (energy, gradient, prior) terms."""
        return tf.nn.softplus(self.write_rates_raw)

    def alpha(self):
        return tf.nn.softplus(self.alpha_raw)

    def beta(self):
        return tf.nn.softplus(self.beta_raw)

    def read_steps_schedule(self):
        """``gamma [K]``, non-increasing: ``gamma_k = gamma_{k-1} * sigmoid(eta_k)``."""
        first = tf.nn.softplus(self.read_step_raw)[None]
        return first * tf.math.cumprod(tf.concat([tf.ones_like(first), tf.sigmoid(self.read_step_logits)], 0))

    def momentum_schedule(self):
        """``psi [K]``, non-increasing, in (0, 1)."""
        first = tf.sigmoid(self.momentum_raw)[None]
        return first * tf.math.cumprod(tf.concat([tf.ones_like(first), tf.sigmoid(self.momentum_logits)], 0))

    def rate_variables(self) -> list:
        """The learned step sizes of write and read: write rates, alpha, beta, read steps and momenta."""
        return [
            self.write_rates_raw,
            self.alpha_raw,
            self.beta_raw,
            self.read_step_raw,
            self.read_step_logits,
            self.momentum_raw,
            self.momentum_logits,
        ]

    def scale_write_rates(self, factors) -> None:
        """Multiplies the write rates of each term in ``factors`` (``{"energy": 2.0, ...}``) by its factor.

        A single number scales the two per-pattern terms (``"energy"`` and ``"gradient"``, each a mean over the
        written patterns) and keeps the prior term's rate.
        """
        if isinstance(factors, (int, float, np.integer, np.floating)) and not isinstance(factors, bool):
            factors = {"energy": float(factors), "gradient": float(factors)}
        if not isinstance(factors, dict):
            raise TypeError(
                f"write-rate factors must be a number or a dict of term -> factor (terms {_WRITE_TERMS}), "
                f"got {type(factors).__name__}: {factors!r}"
            )
        unknown = set(factors) - set(_WRITE_TERMS)
        if unknown:
            raise ValueError(f"unknown write terms {sorted(unknown)}; expected some of {_WRITE_TERMS}")
        rates = self.write_rates().numpy().astype(np.float64)
        for term, factor in factors.items():
            if not factor > 0:
                raise ValueError(f"write-rate factor of {term!r} must be positive, got {factor}")
            rates[..., _WRITE_TERMS.index(term)] *= float(factor)
        self._set_write_rates(rates)

    def _set_write_rates(self, rates) -> None:
        raw = np.vectorize(inverse_softplus)(np.maximum(np.asarray(rates, np.float64), 1e-30))
        self.write_rates_raw.assign(raw.astype(self.write_rates_raw.dtype))

    def balance_write_rates(self, patterns, energy_fraction=0.03, gradient_fraction=0.01):
        """Sets the write rates from one batch so that the terms of the first write step are balanced.

        For each writable layer ``l``, the energy-term rate becomes ``energy_fraction * ||theta_bar_l|| /
        ||grad_l mean_i E||`` and the gradient-norm rate ``gradient_fraction * ||theta_bar_l|| / (alpha *
        ||grad_l mean_i ||grad_x E||^2||)``, both measured at ``theta_bar`` on ``patterns``: the first write step
        of each term then moves each layer by that fraction of its norm, whatever the scale of the two
        gradients (for convolutional energies the gradient-norm term's gradient can be three orders of
        magnitude larger than the energy's). The prior term's rate (zero gradient at ``theta_bar``) is kept.
        Every write step gets the same rates. Returns the ``[layers, 2]`` (energy, gradient) rates set.
        """
        if not (energy_fraction > 0 and gradient_fraction > 0):
            raise ValueError(f"fractions must be positive, got {energy_fraction}, {gradient_fraction}")
        x = self._cast(patterns, "patterns")
        theta = [tf.convert_to_tensor(v) for v in self.theta_bar]
        n = tf.cast(tf.shape(x)[0], x.dtype)
        grad_energy, grad_gradnorm = self._write_gradients(x, theta, n)
        num_layers = self.write_rates_raw.shape[1]

        def layer_norms(tensors):
            sq = np.zeros(num_layers)
            for j, t in enumerate(tensors):
                sq[self._layer_of[j]] += float(tf.reduce_sum(tf.square(t)))
            return np.sqrt(sq)

        bar, g_e, g_g = layer_norms(theta), layer_norms(grad_energy), layer_norms(grad_gradnorm)
        alpha = float(self.alpha())
        rates = self.write_rates().numpy().astype(np.float64)
        chosen = np.zeros((num_layers, 2))
        tiny = 1e-30
        chosen[:, 0] = energy_fraction * bar / np.maximum(g_e, tiny)
        chosen[:, 1] = gradient_fraction * bar / np.maximum(alpha * g_g, tiny)
        if not np.all(np.isfinite(chosen)) or np.any(bar == 0):
            raise ValueError(f"cannot balance write rates: layer norms {bar}, gradient norms {g_e}, {g_g}")
        rates[..., 0] = chosen[None, :, 0]
        rates[..., 1] = chosen[None, :, 1]
        self._set_write_rates(rates)
        return chosen

    def memory_size(self) -> int:
        """Writable floats per memory (the paper's memory size)."""
        return self.energy_net.memory_size()

    # ------------------------------------------------------------------ energy
    @property
    def pattern_shape(self) -> tuple[int, ...]:
        """The shape of one pattern (the energy network's)."""
        return tuple(self.energy_net.pattern_shape)

    def energy(self, state: MemoryState, x):
        """``E(x; state) [batch]`` for patterns ``x [batch, *pattern_shape]``."""
        return self.energy_net(self._cast(x, "x"), memory=state.weights)

    def _energy_grad_x(self, weights, x):
        """``(E [B], grad_x sum_i E_i [B, ...])`` with a fresh watched copy of ``x``."""
        with tf.GradientTape() as tape:
            x = tf.identity(x)  # a fresh tensor per call: a watched input reused across tapes leaks gradient paths
            tape.watch(x)
            e = self.energy_net(x, memory=weights)
            total = tf.reduce_sum(e)
        return e, tape.gradient(total, x)

    # ------------------------------------------------------------------ write (eq. 3-4)
    def initial_state(self) -> MemoryState:
        """The empty memory ``theta_bar``."""
        return MemoryState({n: tf.identity(v) for n, v in zip(self.memory_names, self.theta_bar)})

    def write(self, patterns, first_order=None) -> MemoryState:
        """Writes ``patterns [N, *pattern_shape]`` with T steps of eq. (4); returns the ``MemoryState``."""
        first_order = self.first_order if first_order is None else first_order
        x = self._cast(patterns, "patterns")
        theta_bar = [tf.convert_to_tensor(v) for v in self.theta_bar]
        theta = list(theta_bar)
        rates = self.write_rates()
        alpha, beta = self.alpha(), self.beta()
        write_step = self._step_function(("write", bool(first_order)), lambda: self._make_write_step(first_order))
        for t in range(self.write_steps):
            r = rates[min(t, rates.shape[0] - 1)]
            theta = list(write_step(x, r, alpha, beta, *theta, *theta_bar))
        return MemoryState(dict(zip(self.memory_names, theta)))

    def _make_write_step(self, first_order):
        """``write_step(x, rates_row, alpha, beta, *theta, *theta_bar) -> new theta``: one step of eq. (4)."""
        m = len(self.memory_names)

        def write_step(x, r, alpha, beta, *thetas):
            theta, theta_bar = thetas[:m], thetas[m:]
            n = tf.cast(tf.shape(x)[0], x.dtype)
            grad_energy, grad_gradnorm = self._write_gradients(x, list(theta), n)
            if first_order:
                grad_energy = [tf.stop_gradient(g) for g in grad_energy]
                grad_gradnorm = [tf.stop_gradient(g) for g in grad_gradnorm]
            new_theta = []
            for j, (th, th0, g_e, g_g) in enumerate(zip(theta, theta_bar, grad_energy, grad_gradnorm)):
                layer = self._layer_of[j]
                # grad_theta of beta ||theta - theta_bar||^2 is 2 beta (theta - theta_bar): exact, no tape needed
                step = r[layer, 0] * g_e + (r[layer, 1] * alpha) * g_g + (r[layer, 2] * 2.0 * beta) * (th - th0)
                new_theta.append(th - step)
            return new_theta

        return write_step

    def _step_function(self, key, make):
        """The write/read step function for ``key``, built once per memory (and checkpointed if ``recompute``).

        Inside ``nested_step_functions()`` each step is a nested ``tf.function``: see there.
        """
        cache = self.__dict__.setdefault("_ebmm_step_functions", {})  # plain dict: not tracked by Keras
        nested = self.__dict__.get("_ebmm_nested_steps", False)  # False, "inline" or "call"
        key = key + (self.recompute, nested)
        if key not in cache:
            fn = make()
            if nested:
                # "call" (_noinline): the step body is optimised once by grappler and called T (K) times, which
                # halves the first call of the compiled meta-step, but such function calls give results that vary
                # in the last float digits from call to call (measured on TF 2.21, one thread); "inline" lets
                # grappler inline the step into the caller: bitwise reproducible, a slower first step.
                attributes = {"_noinline": nested == "call"}
                fn = tf.function(fn, autograph=False, experimental_attributes=attributes)
            if self.recompute:
                fn = _recomputed(fn)
            cache[key] = fn
        return cache[key]

    @contextlib.contextmanager
    def nested_step_functions(self, enabled=True, inline=False):
        """Within this context, write and read steps are traced as nested ``tf.function`` s.

        ``inline``: let the graph optimiser inline the traced steps into the caller's graph (results are bitwise
        reproducible from run to run) instead of calling them as functions (``inline=False``: the caller's first
        call is faster, but the last float digits of the results vary from call to call, even on one thread).

        The T write steps (and the K - 1 read steps after the first) then share one traced graph and one
        traced meta-gradient graph instead of T unrolled copies: tracing a meta-step and optimising its graph
        take about half as long, and the step runs as fast (docs/performance.md). Same maths; ``MetaLearner``
        uses it for its compiled meta-step. Outside the context (the default) everything is unrolled in the
        caller's graph. Not for XLA: nested functions inside a ``jit_compile`` function make its step about
        100x slower (measured on TF 2.21), so ``MetaLearner`` unrolls when compiling with XLA.
        """
        previous = self.__dict__.get("_ebmm_nested_steps", False)
        self.__dict__["_ebmm_nested_steps"] = ("inline" if inline else "call") if enabled else False
        try:
            yield self
        finally:
            self.__dict__["_ebmm_nested_steps"] = previous

    def _write_gradients(self, x, theta, n):
        """Gradients w.r.t. ``theta`` of ``mean_i E(x_i)`` and ``mean_i ||grad_x E(x_i)||^2``.

        One backward pass of the energy gives both ``grad_x E`` and ``grad_theta E``; a second backward pass
        through ``grad_x E`` gives the gradient-norm term.
        """
        with tf.GradientTape() as outer:
            outer.watch(theta)
            with tf.GradientTape() as inner:
                xw = tf.identity(x)  # fresh per write step: reused watched inputs leak gradient paths
                inner.watch(xw)
                inner.watch(theta)
                e = self.energy_net(xw, memory=dict(zip(self.memory_names, theta)))
                total = tf.reduce_sum(e)
            grads = inner.gradient(total, [xw] + theta)
            gx, grad_energy = grads[0], grads[1:]
            gradnorm = tf.reduce_sum(tf.square(gx)) / n
        grad_gradnorm = outer.gradient(gradnorm, theta)
        grad_energy = [g / n for g in grad_energy]
        grad_gradnorm = [tf.zeros_like(th) if g is None else g for g, th in zip(grad_gradnorm, theta)]
        return grad_energy, grad_gradnorm

    def writing_loss(self, state: MemoryState, patterns):
        """``W`` of eq. (3) for ``patterns`` under ``state`` (mean over patterns), with the learned alpha, beta."""
        x = self._cast(patterns, "patterns")
        e, gx = self._energy_grad_x(state.weights, x)
        gradnorm = tf.reduce_mean(tf.reduce_sum(tf.reshape(tf.square(gx), [tf.shape(gx)[0], -1]), -1))
        prior = tf.add_n(
            [tf.reduce_sum(tf.square(state.weights[n] - v)) for n, v in zip(self.memory_names, self.theta_bar)]
        )
        return tf.reduce_mean(e) + self.alpha() * gradnorm + self.beta() * prior

    # ------------------------------------------------------------------ read (eq. 1, Appendix B)
    def read(self, state: MemoryState, queries, mask=None):
        """Retrieves patterns from ``queries [M, *pattern_shape]``; returns the K iterates ``[x_1 .. x_K]``.

        ``mask`` (same shape as ``queries``, 1 = known) marks dimensions clamped to the query.
        """
        q = self.project(self._cast(queries, "queries"))
        clamped = mask is not None
        if clamped:
            mask = self._cast(mask, "mask")
            q_known = q * mask
            keep = 1.0 - mask
        names = tuple(state.weights)
        read_step = self._step_function(("read", names, clamped), lambda: self._make_read_step(names, clamped))
        first_read_step = self._step_function(
            ("first_read", names, clamped), lambda: self._make_read_step(names, clamped, first=True)
        )
        extra = [state.weights[n] for n in names] + ([keep, q_known] if clamped else [])
        gammas, psis = self.read_steps_schedule(), self.momentum_schedule()
        x, v = first_read_step(q, tf.zeros_like(q), psis[0], gammas[0], *extra)
        iterates = [x]
        for k in range(1, self.read_steps):
            x, v = read_step(x, v, psis[k], gammas[k], *extra)
            iterates.append(x)
        return iterates

    def _make_read_step(self, names, clamped, first=False):
        """``read_step(x, v, psi, gamma, *memory, [keep, q_known]) -> (x, v)``: one Nesterov step (B.2).

        ``first``: ``k = 1`` with ``v_0 = 0``, so ``x_hat = x_0`` (no projection) and ``v_1 = -gamma_1 grad E``.
        """
        m = len(names)

        def read_step(x, v, psi, gamma, *rest):
            weights = dict(zip(names, rest[:m]))

            def clamp(y):
                return y * rest[m] + rest[m + 1] if clamped else y

            x_hat = x if first else clamp(self.project(x + psi * v))
            _, g = self._energy_grad_x(weights, x_hat)
            v = psi * v - gamma * g  # v_0 = 0 at the first step: psi_1 keeps a (zero) gradient when K = 1
            return clamp(self.project(x + v)), v

        return read_step

    # ------------------------------------------------------------------ serialization
    def _trackable_children(self, save_type="checkpoint", **kwargs):
        """Adds ``theta_bar`` to what ``tf.train.Checkpoint`` saves, one child per variable under its own name
        (``theta_bar_<memory name>`` with ``/`` as ``_``; memory names, which also key every ``MemoryState``, come
        from the writable layers' names, so give those layers fixed names). ``self.theta_bar`` is a Keras-tracked
        list, which Keras's own saving sees but TensorFlow's object graph does not: without this a trainable
        ``theta_bar`` would reach a checkpoint only through the optimizer's references to the variables it
        trains, and a fixed one not at all."""
        children = super()._trackable_children(save_type, **kwargs)
        if save_type == "checkpoint":
            for var in self.theta_bar:
                if children.get(var.name, var) is not var:
                    raise ValueError(f"{var.name} names both theta_bar and another part of {self.name}")
                children[var.name] = var
        return children

    def with_energy(self, energy: EnergyNetwork) -> "EnergyMemory":
        """A new ``EnergyMemory`` over ``energy`` with this one's settings, ``theta_bar`` and learned write and
        read rates (e.g. ``memory.with_energy(memory.energy_net.widened(512))``). ``energy`` must have the same
        memory spec (names and shapes) and the same writable layers."""
        if energy.memory_spec() != self.energy_net.memory_spec():
            raise ValueError(
                f"with_energy: memory spec {energy.memory_spec()} differs from this memory's "
                f"{self.energy_net.memory_spec()}"
            )
        config = {k: v for k, v in self.get_config().items() if k != "energy"}
        new = type(self)(energy, **config)
        for target, source in zip(new.theta_bar + new.rate_variables(), self.theta_bar + self.rate_variables()):
            target.assign(source)
        return new

    def set_starting_memory(self, values):
        """Assigns ``theta_bar`` from ``{memory name: array}`` (a subset of ``memory_names``; shapes must match)."""
        index = {n: i for i, n in enumerate(self.memory_names)}
        unknown = sorted(set(values) - set(index))
        if unknown:
            raise KeyError(f"unknown memory names {unknown}; this memory has {self.memory_names}")
        for name, value in values.items():
            var = self.theta_bar[index[name]]
            value = tf.cast(tf.convert_to_tensor(value), var.dtype)
            if tuple(value.shape) != tuple(var.shape):
                raise ValueError(f"{name}: got shape {tuple(value.shape)}, theta_bar has {tuple(var.shape)}")
            var.assign(value)

    def get_config(self):
        config = super().get_config()
        config.update(
            energy=keras.saving.serialize_keras_object(self.energy_net),
            write_steps=self.write_steps,
            read_steps=self.read_steps,
            data_range=list(self.data_range),
            first_order=self.first_order,
            recompute=self.recompute,
            learn_theta_bar=self.learn_theta_bar,
            **self._init,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["energy"] = keras.saving.deserialize_keras_object(config["energy"])
        return cls(**config)
