"""Dynamic Kanerva Machine baseline (Wu et al. 2018, "Learning attractor dynamics for generative memory"; paper
Appendix A.4, Figures 7 and 8): a generative memory whose write is an exact Bayesian update.

Our reading, on the shared encoder / decoder (``ebmm_tf.baselines.networks``, code size ``C =
network.encoding_size``) with ``K = num_slots`` memory rows:

* **Memory prior** ``p(M) = MN(R_0, U_0, I_C)``: a matrix normal over ``M [K, C]`` with learned mean ``R_0`` and
  learned diagonal row covariance ``U_0 = diag(exp(u_0))``; columns independent.
* **Addressing**: a code ``e [C]`` is explained as ``e = w^T M + xi`` with ``w ~ N(0, I_K)`` and
  ``xi ~ N(0, s^2 I_C)`` (``s^2`` learned); the address is the MAP (ridge least-squares) solution under the
  memory's mean ``R``: ``w(e, R) = (R R^T + s^2 I_K)^{-1} R e``.
* **Write** of a batch ``X [T, ...]``: codes ``E = encode(X) [T, C]``, addresses ``W = w(E, R_0) [T, K]``,
  then the posterior of the linear-Gaussian model ``E = W M + noise`` (Bayesian linear regression, the Kalman
  update of the Kanerva Machine), in closed form:

      ``S_z = W U_0 W^T + s^2 I_T``,  ``S_c = W U_0``,
      ``R = R_0 + S_c^T S_z^{-1} (E - W R_0)``,  ``U = U_0 - S_c^T S_z^{-1} S_c``.

  The written state is ``(R [K, C], U [K, K])``; memory size ``K C + K^2`` floats.
* **Read** (the attractor dynamics of DKM): ``x_0 = x~``; ``read_steps`` times ``e = encode(x_t)``,
  ``w = w(e, R)``, ``z = w^T R``, ``x_{t+1}`` = the decoder's mode (Bernoulli) or mean (Gaussian) at ``z``.
* **Training** (``training_loss``, ``ebmm_tf.contract.OwnObjective``): the negative ELBO of the episode's clean
  patterns under the written memory, with reparameterised samples ``M ~ MN(R, U, I)`` (one per episode) and
  ``w_t ~ N(w(e_t, R), sigma_w^2 I)`` (``sigma_w`` learned). With ``latent = "encoder"`` (DKM's own ELBO, the
  default) the pattern is reconstructed from the encoder's latent ``z_t ~ q(z_t | x_t) = N(e_t, sigma_z^2 I)``
  and the memory enters through the latent's prior ``p(z_t | w_t, M) = N(w_t^T M, s^2 I)``:

      ``mean_t [-log p(x_t | z_t) + KL(q(z_t | x_t) || p(z_t | w_t, M)) + KL(q(w_t) || N(0, I))]``
      ``+ KL(MN(R, U, I) || MN(R_0, U_0, I)) / T``,
      ``KL(q(z) || p(z | w, M)) = sum_c [(sigma_z^2 + (e - w^T M)_c^2) / s^2 - 1 + log(s^2 / sigma_z^2)] / 2``,
      ``KL(MN) = (C tr(U_0^{-1} U) + tr((R - R_0)^T U_0^{-1} (R - R_0)) - C K + C log det U_0 - C log det U) / 2``.

  With ``latent = "memory"`` (our first reading, kept for the runs made with it) there is no ``q(z | x)``: the
  pattern is reconstructed from ``z_t = w_t^T M`` itself and the KL of ``z`` drops out. Our explanation of why
  that model did not use its memory (measured gains -0.005, 0.00 and 0.09 bits, runs K32, K64, K32L in
  docs/results.md; not tested further): with ``K < C`` the decoder only ever sees codes inside the memory's
  ``K``-dimensional row space, which stays close to the prior's whatever was written, so any batch's memory
  reads as well (at ``K = C`` the projection keeps every code anyway). The intended mechanism of the encoder's
  latent: the decoder learns codes of full dimension ``C``; the written codes lie, up to ``s^2``, in the
  posterior mean's row space, so the read keeps them, while a code's component outside that space is lost.
  Like the original it is trained only to explain the data (no distortion is seen).

  ``per_term`` is ``[nll, KL_z, KL_w, KL_M / T]`` for both latents (``KL_z = 0`` for ``"memory"``); runs made
  before ``latent`` existed logged ``[nll, KL_w, KL_M / T]``.

Simplifications against the original: scalar learned variances ``s^2``, ``sigma_w^2``, ``sigma_z^2``; one sample
of ``M`` per episode.

Paper: Figure 7 (Omniglot, batches of 16, 15% salt and pepper): DKM's error against memory size beside EBMM
conv, curves only; Figure 8 (a 12K memory): retrievals under salt and pepper and under 16x16 block noise, where
Section 4.1 says DKM "failed to train on sequences longer than 4 images" under the strong noise.
"""

from __future__ import annotations

import keras
import tensorflow as tf

import gin
from ebmm_tf.baselines import networks  # noqa: F401  (registers @ConvAutoEncoder / @DenseAutoEncoder with gin)
from ebmm_tf.baselines.base import BaselineMemory, PixelLikelihood
from ebmm_tf.contract import MemoryState, sample_normal

__all__ = ["DynamicKanervaMachine", "dynamic_kanerva_machine", "posterior_update", "ridge_addresses"]


def ridge_addresses(codes, mean, noise_var):
    """``w(e, R) = (R R^T + s^2 I)^{-1} R e`` for ``codes [T, C]``, ``mean R [K, C]``: ``[T, K]``."""
    k = tf.shape(mean)[0]
    gram = tf.matmul(mean, mean, transpose_b=True) + noise_var * tf.eye(k, dtype=mean.dtype)
    rhs = tf.matmul(mean, codes, transpose_b=True)  # [K, T]
    return tf.transpose(tf.linalg.cholesky_solve(tf.linalg.cholesky(gram), rhs))


def posterior_update(prior_mean, prior_row_cov, addresses, codes, noise_var):
    """The Bayesian update of ``MN(R_0, U_0, I)`` by ``codes = addresses @ M + N(0, s^2)`` (module docstring).

    ``prior_mean [K, C]``, ``prior_row_cov [K, K]``, ``addresses [T, K]``, ``codes [T, C]``; returns
    ``(R [K, C], U [K, K])``.
    """
    t = tf.shape(addresses)[0]
    s_c = tf.matmul(addresses, prior_row_cov)  # [T, K]
    s_z = tf.matmul(s_c, addresses, transpose_b=True) + noise_var * tf.eye(t, dtype=codes.dtype)
    chol = tf.linalg.cholesky(s_z)  # S_z >= s^2 I: positive definite
    delta = codes - tf.matmul(addresses, prior_mean)
    mean = prior_mean + tf.matmul(s_c, tf.linalg.cholesky_solve(chol, delta), transpose_a=True)
    row_cov = prior_row_cov - tf.matmul(s_c, tf.linalg.cholesky_solve(chol, s_c), transpose_a=True)
    return mean, 0.5 * (row_cov + tf.transpose(row_cov))


@keras.saving.register_keras_serializable(package="ebmm_tf")
class DynamicKanervaMachine(PixelLikelihood, BaselineMemory):
    """Generative memory with a Bayesian write (module docstring).

    Args:
      network: the shared encoder/decoder; its ``encoding_size`` is the code size ``C``.
      num_slots: memory rows ``K``.
      read_steps: iterations of the attractor read.
      likelihood: ``"bernoulli"`` (binary images) or ``"gaussian"`` (mean of the decoder, squared error).
      data_range: ``(lo, hi)`` of the patterns.
      jitter: added, times ``U``'s mean diagonal, to the diagonal of ``U`` before its Cholesky factor.
      latent: ``"encoder"`` (DKM's ELBO: reconstruct from ``q(z | x)``, the memory as its prior) or ``"memory"``
        (reconstruct from ``w^T M``); see the module docstring. The read is the same for both.
    """

    def __init__(
        self,
        network,
        num_slots=32,
        read_steps=5,
        likelihood="bernoulli",
        data_range=(0.0, 1.0),
        jitter=1e-5,
        latent="encoder",
        **kwargs,
    ):
        kwargs.setdefault("name", "dynamic_kanerva_machine")
        super().__init__(network, data_range, **kwargs)
        if int(num_slots) < 1 or int(read_steps) < 1:
            raise ValueError(f"num_slots and read_steps must be >= 1, got {num_slots}, {read_steps}")
        self.num_slots, self.read_steps = int(num_slots), int(read_steps)
        self.jitter = float(jitter)
        if latent not in ("encoder", "memory"):
            raise ValueError(f'latent must be "encoder" or "memory", got {latent!r}')
        self.latent = latent
        k, c = self.num_slots, int(network.encoding_size)
        self.code_size = c
        self.prior_mean = self.add_weight(
            name="prior_mean", shape=(k, c), initializer=keras.initializers.RandomNormal(stddev=1.0)
        )
        self.prior_log_var = self.add_weight(name="prior_log_var", shape=(k,), initializer="zeros")
        self.log_noise_var = self.add_weight(
            name="log_noise_var", shape=(), initializer=keras.initializers.Constant(-2.0)
        )
        self.log_address_std = self.add_weight(
            name="log_address_std", shape=(), initializer=keras.initializers.Constant(-2.0)
        )
        if latent == "encoder":
            self.log_latent_std = self.add_weight(
                name="log_latent_std", shape=(), initializer=keras.initializers.Constant(-2.0)
            )
        self._init_likelihood(likelihood)
        self.built = True

    def memory_size(self) -> int:
        """``K C + K^2``: the written mean and row covariance."""
        return self.num_slots * self.code_size + self.num_slots**2

    # --------------------------------------------------------------- pieces
    def _noise_var(self, dtype):
        return tf.exp(tf.cast(self.log_noise_var, dtype))

    def prior(self, dtype):
        """``(R_0 [K, C], U_0 [K, K])``."""
        u0 = tf.linalg.diag(tf.exp(tf.cast(self.prior_log_var, dtype)))
        return tf.cast(self.prior_mean, dtype), u0

    def _decode_logits(self, z):
        return self.network.decode(z)

    # --------------------------------------------------------------- memory interface
    def write(self, patterns, first_order=None) -> MemoryState:
        """Encodes ``patterns [T, ...]`` and returns the posterior ``{"mean": R, "row_cov": U}``."""
        del first_order
        x = self.project(self._cast(patterns, "patterns"))
        codes = self.network.encode(x)
        r0, u0 = self.prior(codes.dtype)
        noise = self._noise_var(codes.dtype)
        addresses = ridge_addresses(codes, r0, noise)
        mean, row_cov = posterior_update(r0, u0, addresses, codes, noise)
        return MemoryState({"mean": mean, "row_cov": row_cov})

    def read(self, state: MemoryState, queries, mask=None):
        """``read_steps`` iterates of the attractor read from ``queries``."""
        x = self.project(self._cast(queries, "queries"))
        clamp = self._clamp_fn(x, mask)
        mean = tf.cast(state.weights["mean"], x.dtype)
        noise = self._noise_var(x.dtype)
        iterates = []
        for _ in range(self.read_steps):
            w = ridge_addresses(self.network.encode(x), mean, noise)
            x = clamp(self.pixel_mode(self._decode_logits(tf.matmul(w, mean))))
            iterates.append(x)
        return iterates

    def training_loss(self, episode, seed=None):
        """Negative ELBO of ``episode["patterns"]`` (module docstring); ``per_term = [nll, KL_z, KL_w, KL_M / T]``
        (``KL_z`` is 0 with ``latent = "memory"``). ``seed``: an integer fixes the samples of M, w and z
        (``contract.sample_normal``); ``None`` draws fresh ones."""
        x = self.project(self._cast(episode["patterns"], "patterns"))
        dtype = x.dtype
        codes = self.network.encode(x)
        r0, u0 = self.prior(dtype)
        noise = self._noise_var(dtype)
        mean, row_cov = posterior_update(r0, u0, ridge_addresses(codes, r0, noise), codes, noise)
        k, c = self.num_slots, self.code_size
        chol = self._cholesky(row_cov)
        memory = mean + tf.matmul(chol, sample_normal([k, c], dtype, seed, stream=0))
        w_mean = ridge_addresses(codes, mean, noise)
        w_std = tf.exp(tf.cast(self.log_address_std, dtype))
        w = w_mean + w_std * sample_normal(tf.shape(w_mean), dtype, seed, stream=1)
        recalled = tf.matmul(w, memory)  # [T, C]: the mean of p(z | w, M)
        if self.latent == "encoder":
            z_std = tf.exp(tf.cast(self.log_latent_std, dtype))
            z = codes + z_std * sample_normal(tf.shape(codes), dtype, seed, stream=2)
            kl_z = tf.reduce_mean(
                0.5
                * tf.reduce_sum(
                    (tf.square(z_std) + tf.square(codes - recalled)) / noise - 1.0 + tf.math.log(noise / z_std**2),
                    axis=-1,
                )
            )
        else:
            z, kl_z = recalled, tf.zeros([], dtype)
        nll = tf.reduce_mean(self.pixel_nll(x, self._decode_logits(z)))
        kl_w = tf.reduce_mean(
            0.5 * tf.reduce_sum(tf.square(w_mean) + tf.square(w_std) - 1.0 - 2.0 * tf.math.log(w_std), axis=-1)
        )
        kl_m = self.memory_kl(mean, row_cov, chol)
        t = tf.cast(tf.shape(x)[0], dtype)
        return nll + kl_z + kl_w + kl_m / t, tf.stack([nll, kl_z, kl_w, kl_m / t])

    def _cholesky(self, row_cov):
        """Cholesky factor of ``U`` plus ``jitter`` times its mean diagonal (float32 round-off in the update's
        subtraction can leave ``U`` a hair short of positive definite)."""
        k = self.num_slots
        scale = tf.reduce_mean(tf.linalg.diag_part(row_cov))
        return tf.linalg.cholesky(row_cov + (self.jitter * scale) * tf.eye(k, dtype=row_cov.dtype))

    def memory_kl(self, mean, row_cov, chol=None):
        """``KL(MN(R, U, I_C) || MN(R_0, U_0, I_C))`` (module docstring); ``chol``: ``U``'s factor if known."""
        dtype = mean.dtype
        k, c = self.num_slots, self.code_size
        r0, _ = self.prior(dtype)
        u0_inv = tf.exp(-tf.cast(self.prior_log_var, dtype))  # diagonal of U_0^{-1}
        chol = self._cholesky(row_cov) if chol is None else chol
        log_det_u = 2.0 * tf.reduce_sum(tf.math.log(tf.linalg.diag_part(chol)))
        log_det_u0 = tf.reduce_sum(tf.cast(self.prior_log_var, dtype))
        trace = c * tf.reduce_sum(u0_inv * tf.linalg.diag_part(row_cov))
        quad = tf.reduce_sum(u0_inv[:, None] * tf.square(mean - r0))
        return 0.5 * (trace + quad - c * k + c * (log_det_u0 - log_det_u))

    def get_config(self):
        config = super().get_config()
        config.update(
            num_slots=self.num_slots,
            read_steps=self.read_steps,
            likelihood=self.likelihood,
            jitter=self.jitter,
            latent=self.latent,
        )
        return config

    @classmethod
    def from_config(cls, config):
        # files saved before ``latent`` existed hold the "memory" model (and no ``log_latent_std`` weight)
        return super().from_config({"latent": "memory", **config})


@gin.configurable("DynamicKanervaMachine", module="ebmm_tf.baselines")
def dynamic_kanerva_machine(
    energy=None,
    pattern_shape=gin.REQUIRED,
    data_range=(0.0, 1.0),
    network=gin.REQUIRED,
    num_slots=32,
    read_steps=5,
    likelihood="bernoulli",
    latent="encoder",
):
    """gin factory for ``Experiment.model``; ``network`` is called with ``pattern_shape``; ``energy`` must be None."""
    if energy is not None:
        raise ValueError("DynamicKanervaMachine has no energy network: leave Experiment.energy unbound.")
    return DynamicKanervaMachine(
        network(pattern_shape=pattern_shape),
        num_slots=num_slots,
        read_steps=read_steps,
        likelihood=likelihood,
        data_range=data_range,
        latent=latent,
    )
