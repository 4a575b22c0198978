"""Variational autoencoder baseline (paper Appendix A.3, Table 2): a non-memory model with an energy over (x, z).

Model (Kingma & Welling 2013), on the encoder / decoder shared by every baseline (``ebmm_tf.baselines.networks``,
paper C.2), latent size ``L = network.encoding_size`` (paper: 256 Gaussian latents):

* encoder ``q(z | x) = N(mu(x), diag(sigma(x)^2))``: ``h = encode(x) [B, L]``, ``mu = Linear(L, L)(h)``,
  ``log sigma^2 = Linear(L, L)(h)``;
* prior ``p(z) = N(0, I)``; decoder ``decode(z) -> logits [B, *pattern_shape]``;
* likelihood ``p(x | z)``: ``"bernoulli"`` (binary images, Omniglot: ``-log p(x | z) = sum_d BCE(x_d, logits_d)``
  on ``x`` rescaled to [0, 1]) or ``"gaussian"`` (CIFAR-10, ImageNet: mean ``lo + (hi - lo) sigmoid(logits)``,
  one learned scale ``sigma_x`` for every dimension: ``-log p(x | z) = sum_d (x_d - m_d)^2 / (2 sigma_x^2) +
  log sigma_x + log(2 pi) / 2``).

Training maximises the ELBO of the clean patterns of each episode (``training_loss``; the meta-training loop
calls it instead of B.4's read loss, ``ebmm_tf.contract.OwnObjective``): per pattern
``-ELBO = -log p(x | z) + KL(q(z | x) || N(0, I))`` with one reparameterised sample ``z = mu + sigma * eps``,
``KL = sum_l (mu_l^2 + sigma_l^2 - 1 - log sigma_l^2) / 2``; the loss is its mean over the patterns. Like the
paper's VAE it never sees the distortion.

Reading is A.3's attractor dynamics on the energy ``E(x, z) = -log N(z | 0, I) - log p(x | z)``: from
``x_0 = x~`` (the projected query) and ``z_0 = mu(x~)``, ``read_steps`` times

    ``z_{t+1} = z_t - gamma * grad_z E(x_t, z_t)``,  ``x_{t+1} = argmin_x E(x, z_{t+1})``,

where the minimiser is analytic: the Bernoulli mode (``hi`` where ``logits > 0``, else ``lo``) or the Gaussian
mean. ``gamma`` is ``read_rate``; the paper used 50 / 100 / 200 iterations for Omniglot / CIFAR / ImageNet with a
grid search over ``gamma``: ``python -m ebmm_tf.baselines.tune_vae --workdir=DIR --rates=...`` makes it on the run's
validation split and stores the chosen rate in the run's saved model (``tune_read_rate``). ``read`` returns the
last iterate ``x_T`` only (a symbolic loop). ``write`` stores nothing (memory size 0).

Paper numbers (Table 2): 25% block noise 109.08 (Omniglot, Hamming) / 544.72 (CIFAR-10) / 1889.79 (ImageNet 64x64,
squared error); 15% salt and pepper 84.08 / 430.33 / 1385.29.
"""

from __future__ import annotations

import math
import os
import time

import keras
import tensorflow as tf

import gin
from ebmm_tf.baselines import networks  # noqa: F401  (registers @ConvAutoEncoder / @DenseAutoEncoder with gin)
from ebmm_tf.baselines.base import BaselineMemory, PixelLikelihood
from ebmm_tf.contract import MemoryState, sample_normal
from ebmm_tf.layers import Linear

__all__ = ["VariationalAutoEncoder", "variational_autoencoder", "tune_read_rate"]


@keras.saving.register_keras_serializable(package="ebmm_tf")
class VariationalAutoEncoder(PixelLikelihood, BaselineMemory):
    """VAE over the shared encoder/decoder; reads by attractor dynamics on ``E(x, z)`` (module docstring).

    Args:
      network: the shared encoder/decoder (``ConvAutoEncoder`` for images); its ``encoding_size`` is the latent
        size.
      likelihood: ``"bernoulli"`` (binary data) or ``"gaussian"`` (continuous data).
      read_steps: iterations of the attractor dynamics (paper: 50 Omniglot, 100 CIFAR-10, 200 ImageNet).
      read_rate: the step size ``gamma`` of the ``z`` update (> 0).
      data_range: ``(lo, hi)`` of the patterns.
    """

    def __init__(self, network, likelihood="bernoulli", read_steps=50, read_rate=0.1, data_range=(0.0, 1.0), **kwargs):
        kwargs.setdefault("name", "variational_autoencoder")
        super().__init__(network, data_range, **kwargs)
        if int(read_steps) < 1:
            raise ValueError(f"read_steps must be >= 1, got {read_steps}")
        if not (math.isfinite(float(read_rate)) and float(read_rate) > 0):
            raise ValueError(f"read_rate must be a positive number, got {read_rate}")
        self.read_steps, self.read_rate = int(read_steps), float(read_rate)
        latent = int(network.encoding_size)
        self.latent_size = latent
        dt = self.dtype_policy
        self.mean_head = Linear(latent, latent, name="posterior_mean", dtype=dt)
        self.log_var_head = Linear(latent, latent, name="posterior_log_var", dtype=dt)
        self._init_likelihood(likelihood)
        self.built = True

    def memory_size(self) -> int:
        """0: nothing is written (A.3, "non-memory baselines")."""
        return 0

    # --------------------------------------------------------------- model
    def posterior(self, x):
        """``x [B, *pattern_shape] -> (mu [B, L], log sigma^2 [B, L])`` of ``q(z | x)``."""
        h = self.network.encode(x)
        # log sigma^2 clipped to [-12, 8]: exp() stays finite whatever the head outputs early in training
        return self.mean_head(h), tf.clip_by_value(self.log_var_head(h), -12.0, 8.0)

    def neg_log_likelihood(self, x, z):
        """``-log p(x | z)`` per pattern ``[B]`` (x in the data range)."""
        return self.pixel_nll(x, self.network.decode(z))

    def energy_xz(self, x, z):
        """A.3's ``E(x, z) = -log N(z | 0, I) - log p(x | z)`` per pattern ``[B]``."""
        prior = 0.5 * tf.reduce_sum(tf.square(z), axis=-1) + 0.5 * self.latent_size * math.log(2.0 * math.pi)
        return prior + self.neg_log_likelihood(x, z)

    def decode_mode(self, z):
        """``argmin_x E(x, z)``: the Bernoulli mode or the Gaussian mean, in the data range."""
        return self.pixel_mode(self.network.decode(z))

    def training_loss(self, episode, seed=None):
        """Negative ELBO of ``episode["patterns"]`` (mean over the patterns, one sample of z each).

        Returns ``(loss, per_term [2])`` with ``per_term = [mean -log p(x | z), mean KL]``. ``seed``: an integer
        fixes the sample of z (``contract.sample_normal``); ``None`` draws a fresh one.
        """
        x = self.project(self._cast(episode["patterns"], "patterns"))
        eps = sample_normal([tf.shape(x)[0], self.latent_size], x.dtype, seed)
        nll, kl = self.negative_elbo(x, eps)
        nll, kl = tf.reduce_mean(nll), tf.reduce_mean(kl)
        return nll + kl, tf.stack([nll, kl])

    def negative_elbo(self, x, eps):
        """The two terms of ``-ELBO`` per pattern, ``(-log p(x | z) [B], KL [B])``, at ``z = mu + sigma * eps``."""
        mu, log_var = self.posterior(x)
        z = mu + tf.exp(0.5 * log_var) * eps
        kl = 0.5 * tf.reduce_sum(tf.square(mu) + tf.exp(log_var) - 1.0 - log_var, axis=-1)
        return self.neg_log_likelihood(x, z), kl

    # --------------------------------------------------------------- memory interface
    def write(self, patterns, first_order=None) -> MemoryState:
        """Stores nothing; returns the empty ``MemoryState`` (shape check only)."""
        del first_order
        self._cast(patterns, "patterns")
        return MemoryState({})

    def read(self, state: MemoryState, queries, mask=None):
        """Attractor dynamics from ``(x~, mu(x~))``; returns ``[x_T]``, the last of the ``read_steps`` iterates
        (the loop is symbolic, so the intermediate iterates are not kept)."""
        del state
        x = self.project(self._cast(queries, "queries"))
        clamp = self._clamp_fn(x, mask)
        z, _ = self.posterior(x)
        rate = tf.cast(self.read_rate, z.dtype)

        def step(x, z):
            with tf.GradientTape() as tape:
                tape.watch(z)
                energy = tf.reduce_sum(self.energy_xz(x, z))
            z = z - rate * tape.gradient(energy, z)
            return clamp(self.decode_mode(z)), z

        # a symbolic loop: 50-200 unrolled decoder gradients make a graph that takes minutes to trace
        x, z = step(x, z)
        if self.read_steps > 1:
            x, z = tf.while_loop(
                lambda i, x, z: i < self.read_steps - 1,
                lambda i, x, z: (i + 1, *step(x, z)),
                (tf.constant(0), x, z),
                maximum_iterations=self.read_steps - 1,
            )[1:]
        return [x]

    def get_config(self):
        config = super().get_config()
        config.update(likelihood=self.likelihood, read_steps=self.read_steps, read_rate=self.read_rate)
        return config


@gin.configurable("VariationalAutoEncoder", module="ebmm_tf.baselines")
def variational_autoencoder(
    energy=None,
    pattern_shape=gin.REQUIRED,
    data_range=(0.0, 1.0),
    network=gin.REQUIRED,
    likelihood="bernoulli",
    read_steps=50,
    read_rate=0.1,
):
    """gin factory for ``Experiment.model``: ``model(energy, pattern_shape=..., data_range=...)``.

    ``network`` is a factory called with ``pattern_shape`` (gin: ``@ConvAutoEncoder``). ``energy`` must be None.
    """
    if energy is not None:
        raise ValueError("VariationalAutoEncoder has no energy network: leave Experiment.energy unbound.")
    return VariationalAutoEncoder(
        network(pattern_shape=pattern_shape),
        likelihood=likelihood,
        read_steps=read_steps,
        read_rate=read_rate,
        data_range=data_range,
    )


def with_read_rate(model: VariationalAutoEncoder, rate) -> VariationalAutoEncoder:
    """A copy of ``model`` (same weights) that reads with step size ``rate``."""
    config = model.get_config()
    config["read_rate"] = float(rate)
    copy = type(model).from_config(config)
    copy.set_weights(model.get_weights())
    return copy


def tune_read_rate(workdir, rates, num_batches=20, data_dir=None, progress=True):
    """A.3's grid search over ``gamma`` on the run's **validation** split (its validation episode stream).

    Evaluates the run's saved model (``best``, else ``latest``) with each of ``rates``, picks the rate of the lowest
    validation error, writes ``DIR/read_rate_grid.json`` (every rate's error, memory use and wall time) and saves the
    model with the chosen rate back to the file it came from (weights unchanged), so that ``ebmm_tf.evaluate`` reads
    with it. Returns the grid record.
    """
    from ebmm_tf import evaluate as evaluate_lib
    from ebmm_tf import rundir

    rates = [float(r) for r in rates]
    if not rates or any(not (math.isfinite(r) and r > 0) for r in rates):
        raise ValueError(f"rates must be positive numbers, got {rates}")
    workdir = rundir.resolve_run_dir(os.path.abspath(workdir))
    path, kind = rundir.find_saved_model(workdir, "auto")
    model = rundir.load_saved_model(path)
    if not isinstance(model, VariationalAutoEncoder):
        raise TypeError(f"{path} holds a {type(model).__name__}, not a VariationalAutoEncoder")
    protocol = evaluate_lib.load_protocol(workdir)
    split, seed = protocol.validation_split, protocol.validation_seed
    grid = []
    for rate in rates:
        start = time.time()
        result = evaluate_lib.evaluate_model(
            with_read_rate(model, rate),
            protocol,
            num_batches,
            seed=seed,
            split=split,
            data_dir=data_dir or protocol.data_dir,
            progress=progress,
            memory_use=False,  # nothing is written: the diagnostics would only double the reads
        )
        grid.append(
            {
                "read_rate": rate,
                "mean": result["mean"],
                "p5": result["p5"],
                "p95": result["p95"],
                "query_mean": result["query_mean"],
                "seconds": time.time() - start,
            }
        )
        metric, err, query = result["metric"], result["mean"], result["query_mean"]
        print(f"read_rate {rate:g}: validation {metric} error {err:.3f} (query {query:.3f})", flush=True)
    best = min(grid, key=lambda g: g["mean"])
    record = {
        "checkpoint": path,
        "checkpoint_kind": kind,
        "split": split,
        "seed": seed,
        "num_batches": int(num_batches),
        "read_steps": model.read_steps,
        "previous_read_rate": model.read_rate,
        "chosen_read_rate": best["read_rate"],
        "grid": grid,
    }
    rundir.atomic_save_keras(with_read_rate(model, best["read_rate"]), path)
    rundir.atomic_write_json(os.path.join(workdir, "read_rate_grid.json"), record)
    print(f"chosen read_rate {best['read_rate']:g} (validation {best['mean']:.3f}); saved to {path}")
    return record
