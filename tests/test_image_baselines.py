"""The image baselines of Table 2: the variational autoencoder (ELBO, energy and attractor read against hand
computations, training through the meta-training loop, the read-rate grid search) and Deep Image Prior (mask
handling, reset between images, shapes, the evaluation record)."""

import json
import os
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

import gin
from ebmm_tf import contract, trainer
from ebmm_tf import run as run_lib
from ebmm_tf.baselines.deep_image_prior import DeepImagePrior, Hourglass, evaluate_dip
from ebmm_tf.baselines.kanerva import DynamicKanervaMachine, posterior_update, ridge_addresses
from ebmm_tf.baselines.networks import ConvAutoEncoder
from ebmm_tf.baselines.vae import VariationalAutoEncoder, tune_read_rate, with_read_rate
from ebmm_tf.meta import MetaLearner, meta_loss

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _vae(likelihood="bernoulli", shape=(8, 8, 1), dtype="float64", **kw):
    tf.keras.utils.set_random_seed(3)
    net = ConvAutoEncoder(shape, channels=2, encoding_size=6, dtype=dtype)
    return VariationalAutoEncoder(net, likelihood=likelihood, dtype=dtype, **kw)


def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_negative_elbo_matches_a_hand_computation(likelihood):
    model = _vae(likelihood, shape=(8, 8, 1) if likelihood == "bernoulli" else (8, 8, 3))
    rng = np.random.default_rng(0)
    shape = (4,) + model.pattern_shape
    x = (rng.random(shape) < 0.3).astype(np.float64) if likelihood == "bernoulli" else rng.random(shape)
    eps = rng.normal(size=(4, 6))
    if likelihood == "gaussian":
        model.log_scale.assign(-0.7)
    nll, kl = (t.numpy() for t in model.negative_elbo(tf.constant(x), tf.constant(eps)))
    mu, log_var = (t.numpy() for t in model.posterior(tf.constant(x)))
    z = mu + np.exp(0.5 * log_var) * eps
    logits = model.network.decode(tf.constant(z)).numpy().reshape(4, -1)
    flat = x.reshape(4, -1)
    if likelihood == "bernoulli":
        p = _sigmoid(logits)
        want_nll = -np.sum(flat * np.log(p) + (1 - flat) * np.log(1 - p), axis=1)
    else:
        mean, s = _sigmoid(logits), np.exp(-0.7)
        want_nll = np.sum(0.5 * ((flat - mean) / s) ** 2 + np.log(s) + 0.5 * np.log(2 * np.pi), axis=1)
    want_kl = 0.5 * np.sum(mu**2 + np.exp(log_var) - 1 - log_var, axis=1)
    np.testing.assert_allclose(nll, want_nll, rtol=1e-10)
    np.testing.assert_allclose(kl, want_kl, rtol=1e-10)
    # the energy of A.3: -log N(z | 0, I) - log p(x | z)
    energy = model.energy_xz(tf.constant(x), tf.constant(z)).numpy()
    np.testing.assert_allclose(energy, want_nll + 0.5 * np.sum(z**2, 1) + 3 * np.log(2 * np.pi), rtol=1e-10)


def test_attractor_read_takes_the_energy_gradient_in_z_and_the_exact_x_minimiser():
    model = _vae("bernoulli", read_steps=2, read_rate=0.05)
    rng = np.random.default_rng(1)
    q = (rng.random((3, 8, 8, 1)) < 0.4).astype(np.float64)
    # by hand: z_0 = mu(q); z_1 = z_0 - gamma dE/dz (central differences); x_1 = 1[logits(z_1) > 0]; twice
    z = model.posterior(tf.constant(q))[0].numpy()
    x = q
    for steps in (1, 2):
        grad = np.zeros_like(z)
        for j in range(z.shape[1]):
            dz = np.zeros_like(z)
            dz[:, j] = 1e-6
            up = model.energy_xz(tf.constant(x), tf.constant(z + dz)).numpy()
            down = model.energy_xz(tf.constant(x), tf.constant(z - dz)).numpy()
            grad[:, j] = (up - down) / 2e-6
        z = z - 0.05 * grad
        x = (model.network.decode(tf.constant(z)).numpy() > 0).astype(np.float64)
        reader = with_read_rate(model, 0.05)
        reader.read_steps = steps
        iterates = reader.read(reader.write(q), q)
        assert len(iterates) == 1
        np.testing.assert_array_equal(iterates[0].numpy(), x)
        compiled = tf.function(lambda q: reader.read(None, q)[0], autograph=False)
        np.testing.assert_array_equal(compiled(tf.constant(q)).numpy(), x)
    # the Gaussian minimiser is the decoder's mean, inside the data range
    g = _vae("gaussian", shape=(8, 8, 3), read_steps=1, data_range=(-1.0, 1.0))
    y = rng.uniform(-1, 1, size=(2, 8, 8, 3))
    out = g.recall(g.write(y), y).numpy()
    assert out.min() >= -1 and out.max() <= 1 and len(np.unique(out)) > 10


def test_vae_arguments_are_checked():
    with pytest.raises(ValueError, match="likelihood"):
        _vae("poisson")
    with pytest.raises(ValueError, match="read_rate"):
        _vae(read_rate=0.0)
    with pytest.raises(ValueError, match="read_steps"):
        _vae(read_steps=0)
    with pytest.raises(ValueError, match="shape"):
        _vae().read(None, np.zeros((2, 4, 4, 1)))


def test_meta_training_loop_optimises_the_elbo():
    model = _vae("bernoulli", dtype="float32")
    assert isinstance(model, contract.OwnObjective) and model.memory_size() == 0
    rng = np.random.default_rng(2)
    x = (rng.random((6, 8, 8, 1)) < 0.3).astype(np.float32)
    ep = {"patterns": tf.constant(x), "queries": tf.constant(x)}
    loss, aux = meta_loss(model, ep)
    assert aux["per_step"].shape == (2,)  # -log p(x | z), KL
    np.testing.assert_allclose(float(loss), float(np.sum(aux["per_step"])), rtol=1e-6)
    learner = MetaLearner(model, learning_rate=3e-3, clip_norm=None)
    tf.random.set_seed(0)
    first = [float(learner.train_step(ep)["loss"]) for _ in range(3)]
    for _ in range(60):
        learner.train_step(ep)
    last = [float(learner.train_step(ep)["loss"]) for _ in range(3)]
    assert np.mean(last) < 0.8 * np.mean(first), (first, last)


def _vae_experiment(workdir, steps=4):
    """The VAE gin file at toy size; resumes from ``workdir``'s checkpoints if there are any."""
    gin.clear_config()
    run_lib.parse_gin(
        [os.path.join(ROOT, "gin", "baselines", "omniglot_vae_cpu.gin")],
        [
            "Experiment.source = 'sklearn_digits'",
            "Experiment.num_patterns = 4",
            "ConvAutoEncoder.channels = 2",
            "ConvAutoEncoder.encoding_size = 8",
            "VariationalAutoEncoder.read_steps = 3",
            f"Experiment.num_steps = {steps}",
            "Experiment.validation_every = 2",
            "Experiment.validation_episodes = 2",
            "Experiment.checkpoint_every = 2",
            "Experiment.image_every = 0",
            "Experiment.log_every = 2",
        ],
    )
    return trainer.Experiment(workdir=workdir)


def _vae_run(tmp_path, steps=4):
    workdir = str(tmp_path / "vae")
    _vae_experiment(workdir, steps).run()
    gin.clear_config()
    return workdir


def _check_validation_loss_is_the_seeded_negative_elbo(workdir):
    # the VAE gin file selects best/ by the validation negative ELBO (select_by = "loss"); the probe's read loss
    # (B.4's objective, which the VAE also provides) must not take its place
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        logged = [json.loads(line)["validation"] for line in f if '"validation"' in line][-1]
    exp = _vae_experiment(workdir)  # resumes at the last step: the model that was validated
    assert exp.select_by == "loss" and exp.restored_step == logged["step"] == 4
    elbo = exp.validation_loss()
    assert elbo == pytest.approx(logged["loss"], rel=1e-5)
    reads = []
    exp._probe.run(
        exp.validation_data,
        lambda ep, own: reads.append(float(exp.memory.reconstruction_loss(ep["patterns"], own["iterates"])[0])),
    )
    assert abs(float(np.mean(reads)) - elbo) > 1e-3 * abs(elbo)
    gin.clear_config()


def test_vae_gin_file_trains_and_the_read_rate_grid_uses_validation(tmp_path):
    workdir = _vae_run(tmp_path)
    _check_validation_loss_is_the_seeded_negative_elbo(workdir)
    record = tune_read_rate(workdir, [0.01, 0.5], num_batches=2, progress=False)
    assert record["split"] == "validation" and record["seed"] == run_lib.DEFAULTS["validation_seed"]
    assert [g["read_rate"] for g in record["grid"]] == [0.01, 0.5]
    best = min(record["grid"], key=lambda g: g["mean"])["read_rate"]
    assert record["chosen_read_rate"] == best
    saved = json.load(open(os.path.join(workdir, "read_rate_grid.json")))
    assert saved["chosen_read_rate"] == best
    from ebmm_tf import rundir

    loaded = rundir.load_saved_model(record["checkpoint"])
    assert isinstance(loaded, VariationalAutoEncoder) and loaded.read_rate == best
    copy = with_read_rate(loaded, 0.2)
    assert copy.read_rate == 0.2 and all(np.array_equal(a, b) for a, b in zip(copy.get_weights(), loaded.get_weights()))
    with pytest.raises(ValueError, match="positive"):
        tune_read_rate(workdir, [-1.0])


# ====================================================================== Deep Image Prior
def _dip(**kw):
    args = dict(pattern_shape=(8, 8, 1), channels=4, levels=2, skip_channels=2, noise_channels=3, steps=5)
    args.update(kw)
    return DeepImagePrior(**args)


def test_dip_fits_only_the_known_pixels_and_keeps_them():
    dip = _dip()
    rng = np.random.default_rng(0)
    x = rng.random((8, 8, 1)).astype(np.float32)
    corrupted = np.zeros_like(x)
    corrupted[2:6, 1:5] = 1
    q1, q2 = x.copy(), x.copy()
    q1[corrupted == 1] = rng.random(16)
    q2[corrupted == 1] = 1.0 - q1[corrupted == 1]
    r1, loss1 = dip.restore(q1, corrupted)
    r2, loss2 = dip.restore(q2, corrupted)
    # the fit never looks inside the block: same result whatever the block holds (and a fresh start each time)
    np.testing.assert_array_equal(r1, r2)
    assert loss1 == loss2
    np.testing.assert_array_equal(r1[corrupted == 0], x[corrupted == 0])  # known pixels are the query's
    assert not np.allclose(r1[corrupted == 1], q1[corrupted == 1])
    # more updates fit the known pixels better
    short = _dip(steps=2, reg_noise_std=0.0).restore(q1, corrupted)[1]
    long = _dip(steps=60, reg_noise_std=0.0).restore(q1, corrupted)[1]
    assert long < short


def test_dip_shapes_and_errors():
    dip = _dip(pattern_shape=(8, 8))
    out, _ = dip.restore(np.zeros((8, 8), np.float32), np.ones((8, 8), np.float32))
    assert out.shape == (8, 8) and np.all((out >= 0) & (out <= 1))
    with pytest.raises(ValueError, match="shape"):
        dip.restore(np.zeros((8, 7)), np.zeros((8, 7)))
    with pytest.raises(ValueError, match="NaN"):
        dip.restore(np.full((8, 8), np.nan), np.zeros((8, 8)))
    with pytest.raises(ValueError, match="levels"):
        Hourglass((8, 8, 1), levels=4)
    with pytest.raises(ValueError, match="steps"):
        _dip(steps=0)
    ranged = _dip(data_range=(-1.0, 1.0), steps=1)
    out, _ = ranged.restore(np.zeros((8, 8, 1), np.float32), np.ones((8, 8, 1), np.float32))
    assert out.min() >= -1 and out.max() <= 1 and out.min() < 0


def test_dip_layers_start_from_different_weights_and_the_all_pixels_mode_fits_everything():
    dip = _dip(levels=2)
    kernels = [v.numpy() for v in dip.generator.trainable_variables if v.ndim == 4]
    by_shape = {}
    for k in kernels:
        by_shape.setdefault(k.shape, []).append(k)
    assert any(len(ks) > 1 for ks in by_shape.values())  # layers of equal shape exist ...
    for ks in by_shape.values():  # ... and none starts where another does
        for i in range(len(ks)):
            for j in range(i):
                assert not np.array_equal(ks[i], ks[j])
    x = np.random.default_rng(3).random((8, 8, 1)).astype(np.float32)
    corrupted = np.zeros_like(x)
    corrupted[:4] = 1
    everything = _dip(known_pixels="all", steps=3)
    assert np.all(everything.known_mask(corrupted) == 1)
    out, _ = everything.restore(x, corrupted)
    assert not np.allclose(out[corrupted == 0], x[corrupted == 0])  # g(u) everywhere, nothing copied
    with pytest.raises(ValueError, match="known_pixels"):
        _dip(known_pixels="block")


def test_dip_evaluation_record_replays_image_by_image():
    gin.clear_config()
    run_lib.parse_gin(
        [os.path.join(ROOT, "gin", "baselines", "imagenet64_dip_cpu.gin")],
        [
            "Experiment.source = 'sklearn_digits'",
            "BlockNoise.size = 16",
            "DeepImagePrior.steps = 3",
            "DeepImagePrior.channels = 4",
            "DeepImagePrior.levels = 2",
        ],
    )
    record = evaluate_dip(num_images=2, progress=False)
    # the same images, distortions and fits by hand: the test split's first episode of the evaluation stream
    from ebmm_tf import evaluate as evaluate_lib
    from ebmm_tf import metrics as metrics_lib

    task = run_lib.config_from_gin().task.with_num_patterns(2)
    ep = next(iter(task.episodes("test", evaluate_lib.EVAL_SEED)))
    dip = DeepImagePrior(pattern_shape=task.pattern_shape, data_range=task.data_range)
    gin.clear_config()
    assert record["num_images"] == 2 and record["steps"] == 3 and record["split"] == "test"
    for i in range(2):
        restored, _ = dip.restore(ep["queries"][i].numpy(), ep["corrupted"][i].numpy(), index=i)
        outside = ep["corrupted"][i].numpy() == 0
        np.testing.assert_array_equal(restored[outside], ep["patterns"][i].numpy()[outside])  # known = original
        want = metrics_lib.per_pattern_error(task.source, ep["patterns"][i : i + 1], restored[None])
        np.testing.assert_allclose(record["errors"][i], float(np.asarray(want)[0]), rtol=1e-6)
        q = metrics_lib.per_pattern_error(task.source, ep["patterns"][i : i + 1], ep["queries"][i : i + 1])
        np.testing.assert_allclose(record["query_errors"][i], float(np.asarray(q)[0]), rtol=1e-6)


@pytest.mark.parametrize(
    "name, source, shape, fill",
    [
        ("imagenet64_dip_cpu.gin", "imagenet64", (64, 64, 3), "uniform"),
        ("cifar10_dip_cpu.gin", "cifar10", (32, 32, 3), "uniform"),
        ("omniglot_dip_cpu.gin", "omniglot", (32, 32, 1), "random"),
    ],
)
def test_every_dip_gin_file_parses_strictly_into_its_protocol(name, source, shape, fill):
    gin.clear_config()
    run_lib.parse_gin([os.path.join(ROOT, "gin", "baselines", name)], [])
    task = run_lib.config_from_gin().task
    dip = DeepImagePrior(pattern_shape=task.pattern_shape, data_range=task.data_range)
    gin.clear_config()
    assert task.source == source and tuple(task.pattern_shape) == shape
    assert task.distortion.fill == fill and dip.steps == 2000 and dip.generator.levels == 4


# ====================================================================== Dynamic Kanerva Machine
def test_dkm_posterior_update_is_the_closed_form_bayesian_least_squares():
    rng = np.random.default_rng(0)
    k, c, t, s2 = 5, 3, 4, 0.3
    r0, e, w = rng.normal(size=(k, c)), rng.normal(size=(t, c)), rng.normal(size=(t, k))
    u0 = np.diag(rng.uniform(0.5, 2.0, size=k))
    mean, cov = (
        a.numpy() for a in posterior_update(tf.constant(r0), tf.constant(u0), tf.constant(w), tf.constant(e), s2)
    )
    # information form: precision U^-1 = U0^-1 + W^T W / s2, mean U (U0^-1 R0 + W^T E / s2)
    precision = np.linalg.inv(u0) + w.T @ w / s2
    want_cov = np.linalg.inv(precision)
    want_mean = want_cov @ (np.linalg.inv(u0) @ r0 + w.T @ e / s2)
    np.testing.assert_allclose(mean, want_mean, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(cov, want_cov, rtol=1e-10, atol=1e-12)
    # noiseless limit with T < K: the written mean reproduces every code (W R = E), the smallest such change of
    # R_0 in U_0's metric (the least-squares solution)
    mean0 = posterior_update(tf.constant(r0), tf.constant(u0), tf.constant(w), tf.constant(e), 1e-10)[0].numpy()
    np.testing.assert_allclose(w @ mean0, e, atol=1e-6)
    want = r0 + u0 @ w.T @ np.linalg.solve(w @ u0 @ w.T, e - w @ r0)
    np.testing.assert_allclose(mean0, want, atol=1e-6)


def test_dkm_addresses_and_memory_kl_match_hand_computations():
    rng = np.random.default_rng(1)
    r, e, s2 = rng.normal(size=(4, 3)), rng.normal(size=(2, 3)), 0.2
    w = ridge_addresses(tf.constant(e), tf.constant(r), s2).numpy()
    for i in range(2):  # argmin_w ||e - w R||^2 + s2 ||w||^2 by the normal equations
        np.testing.assert_allclose(w[i], np.linalg.solve(r @ r.T + s2 * np.eye(4), r @ e[i]), rtol=1e-10)
    model = DynamicKanervaMachine(
        ConvAutoEncoder((8, 8, 1), channels=2, encoding_size=3, dtype="float64"),
        num_slots=4,
        dtype="float64",
        jitter=0.0,
    )
    model.prior_log_var.assign(rng.normal(scale=0.3, size=4))
    r0, u0 = (a.numpy() for a in model.prior(tf.float64))
    a = rng.normal(size=(4, 4))
    u = a @ a.T + 0.5 * np.eye(4)
    m = rng.normal(size=(4, 3))
    got = float(model.memory_kl(tf.constant(m), tf.constant(u)))
    u0i = np.linalg.inv(u0)
    want = 0.5 * (
        3 * np.trace(u0i @ u)
        + np.trace((m - r0).T @ u0i @ (m - r0))
        - 12
        + 3 * (np.linalg.slogdet(u0)[1] - np.linalg.slogdet(u)[1])
    )
    np.testing.assert_allclose(got, want, rtol=1e-10)
    np.testing.assert_allclose(float(model.memory_kl(tf.constant(r0), tf.constant(u0))), 0.0, atol=1e-12)


def test_dkm_write_read_and_training():
    tf.keras.utils.set_random_seed(0)
    model = DynamicKanervaMachine(ConvAutoEncoder((8, 8, 1), channels=2, encoding_size=6), num_slots=8, read_steps=2)
    assert isinstance(model, contract.OwnObjective) and model.memory_size() == 8 * 6 + 64
    x = (np.random.default_rng(2).random((4, 8, 8, 1)) < 0.3).astype(np.float32)
    state = model.write(x)
    assert state.weights["mean"].shape == (8, 6) and state.weights["row_cov"].shape == (8, 8)
    assert np.all(np.linalg.eigvalsh(state.weights["row_cov"].numpy()) > -1e-5)  # a covariance
    iterates = model.read(state, x)
    assert len(iterates) == 2 and set(np.unique(iterates[-1].numpy())) <= {0.0, 1.0}
    ep = {"patterns": tf.constant(x), "queries": tf.constant(x)}
    learner = MetaLearner(model, learning_rate=3e-3, clip_norm=None)
    first = [float(learner.train_step(ep)["loss"]) for _ in range(3)]
    for _ in range(60):
        learner.train_step(ep)
    last = [float(learner.train_step(ep)["loss"]) for _ in range(3)]
    assert np.mean(last) < 0.8 * np.mean(first), (first, last)
    with pytest.raises(ValueError, match="likelihood"):
        DynamicKanervaMachine(ConvAutoEncoder((8, 8, 1), channels=2, encoding_size=6), likelihood="x")


def _dkm_elbo_by_hand(model, x, seed):
    """The DKM's negative ELBO terms [nll, KL_z, KL_w, KL_M / T] rebuilt in numpy from the model's pieces and the
    same stateless draws (stream 0: M, 1: w, 2: z)."""
    t, k, c = x.shape[0], model.num_slots, model.code_size
    e = model.network.encode(tf.constant(x)).numpy()
    r0, u0 = (a.numpy() for a in model.prior(tf.float64))
    s2 = float(np.exp(model.log_noise_var.numpy()))
    mean, cov = (a.numpy() for a in posterior_update(r0, u0, ridge_addresses(e, r0, s2), e, s2))
    draw = lambda shape, stream: contract.sample_normal(shape, tf.float64, seed, stream).numpy()  # noqa: E731
    chol = np.linalg.cholesky(cov + model.jitter * np.mean(np.diag(cov)) * np.eye(k))
    m = mean + chol @ draw([k, c], 0)
    w_mean = ridge_addresses(e, mean, s2).numpy()
    w_std = float(np.exp(model.log_address_std.numpy()))
    w = w_mean + w_std * draw([t, k], 1)
    if model.latent == "encoder":
        z_std = float(np.exp(model.log_latent_std.numpy()))
        z = e + z_std * draw([t, c], 2)
        kl_z = np.mean(0.5 * np.sum((z_std**2 + (e - w @ m) ** 2) / s2 - 1.0 + np.log(s2 / z_std**2), axis=-1))
    else:
        z, kl_z = w @ m, 0.0
    nll = model.pixel_nll(tf.constant(x), model.network.decode(tf.constant(z))).numpy().mean()
    kl_w = np.mean(0.5 * np.sum(w_mean**2 + w_std**2 - 1.0 - 2.0 * np.log(w_std), axis=-1))
    u0_inv = np.linalg.inv(u0)
    kl_m = 0.5 * (
        c * np.trace(u0_inv @ cov)
        + np.trace((mean - r0).T @ u0_inv @ (mean - r0))
        - c * k
        + c * (np.linalg.slogdet(u0)[1] - np.linalg.slogdet(chol @ chol.T)[1])
    )
    return np.array([nll, kl_z, kl_w, kl_m / t])


def test_dkm_elbo_of_both_latents_matches_a_hand_computation_and_old_files_load_with_the_memory_latent(tmp_path):
    """DKM's own ELBO (``latent = "encoder"``): the pattern decoded from the encoder's z ~ N(e, sigma_z^2), the
    memory as z's prior N(w^T M, s^2); the first reading (``"memory"``) decodes w^T M. Every term against numpy,
    with the Gaussian KLs written out; a .keras saved before ``latent`` existed loads as the "memory" model."""
    rng = np.random.default_rng(4)
    x = (rng.random((4, 8, 8, 1)) < 0.3).astype(np.float64)
    for latent in ("encoder", "memory"):
        model = DynamicKanervaMachine(
            ConvAutoEncoder((8, 8, 1), channels=2, encoding_size=5, dtype="float64"),
            num_slots=3,
            dtype="float64",
            latent=latent,
        )
        if latent == "encoder":
            model.log_latent_std.assign(-0.7)  # sigma_z^2 != s^2, so swapped variances would show
        model.log_noise_var.assign(-1.1)
        model.log_address_std.assign(-0.4)
        model.prior_log_var.assign(rng.normal(scale=0.3, size=3))
        loss, terms = (a.numpy() for a in model.training_loss({"patterns": tf.constant(x)}, seed=11))
        np.testing.assert_allclose(terms, _dkm_elbo_by_hand(model, x, 11), rtol=1e-8, atol=1e-12, err_msg=latent)
        np.testing.assert_allclose(loss, terms.sum(), rtol=1e-12)
        assert (terms[1] > 0) == (latent == "encoder")
    # a file of the "memory" model as saved before the option existed: no `latent` in its config
    path = str(tmp_path / "old.keras")
    model.save(path)
    with zipfile.ZipFile(path) as zin:
        files = {name: zin.read(name) for name in zin.namelist()}
    config = json.loads(files["config.json"])
    del config["config"]["latent"]
    files["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(path, "w") as zout:
        for name, data in files.items():
            zout.writestr(name, data)
    old = keras.saving.load_model(path)
    assert old.latent == "memory" and not hasattr(old, "log_latent_std")
    np.testing.assert_allclose(old.training_loss({"patterns": tf.constant(x)}, seed=11)[0].numpy(), loss, rtol=1e-12)
    with pytest.raises(ValueError, match="latent"):
        DynamicKanervaMachine(ConvAutoEncoder((8, 8, 1), channels=2, encoding_size=5), latent="z")


def test_the_two_clis_run_from_a_fresh_process(tmp_path):
    """``python -m ebmm_tf.baselines.run_dip`` (the gin file imports the model module by name) and the VAE grid's
    ``--help``: modules of their own, so gin never sees a configurable twice."""
    import subprocess
    import sys

    out = str(tmp_path / "dip")
    cmd = [
        sys.executable,
        "-m",
        "ebmm_tf.baselines.run_dip",
        f"--gin_file={os.path.join(ROOT, 'gin', 'baselines', 'imagenet64_dip_cpu.gin')}",
        "--gin_param=Experiment.source = 'sklearn_digits'",
        "--gin_param=BlockNoise.size = 16",
        "--gin_param=DeepImagePrior.steps = 2",
        "--gin_param=DeepImagePrior.channels = 4",
        "--gin_param=DeepImagePrior.levels = 2",
        "--num_images=1",
        f"--output={out}",
        "--noprogress",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.load(open(out + ".json"))
    assert record["num_images"] == 1 and os.path.exists(out + ".md")
    # the evaluation CLI takes the same gin file instead of a workdir: the same fit, the same numbers
    via_evaluate = str(tmp_path / "dip_eval")
    cmd = (
        [sys.executable, "-m", "ebmm_tf.evaluate"] + cmd[3:-3] + ["--num_batches=1", f"--output_prefix={via_evaluate}"]
    )
    proc = subprocess.run(cmd + ["--noprogress"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    again = json.load(open(via_evaluate + ".json"))
    assert again["errors"] == record["errors"] and again["query_errors"] == record["query_errors"]
    assert again["command"].startswith("python -m ebmm_tf.evaluate --gin_file=")
    both = subprocess.run(cmd + ["--workdir=/tmp"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert both.returncode != 0 and "exactly one of --workdir" in both.stderr, both.stderr[-2000:]
    proc = subprocess.run(
        [sys.executable, "-m", "ebmm_tf.baselines.tune_vae", "--workdir=/nonexistent", "--intra_op_threads=1"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 2 and "No saved model in /nonexistent" in proc.stderr, proc.stderr[-2000:]


def test_a_seed_fixes_the_noise_of_the_elbos_and_no_seed_draws_fresh_noise():
    """Validation compares checkpoints on the same noise (``Experiment.validation_loss`` passes seed = episode
    index); training draws fresh noise every step."""
    x = (np.random.default_rng(2).random((4, 8, 8, 1)) < 0.3).astype(np.float32)
    ep = {"patterns": tf.constant(x), "queries": tf.constant(x)}
    tf.keras.utils.set_random_seed(0)
    dkm = DynamicKanervaMachine(ConvAutoEncoder((8, 8, 1), channels=2, encoding_size=6), num_slots=8)
    for model in (_vae(dtype="float32"), dkm):
        seeded = [float(meta_loss(model, ep, seed=s)[0]) for s in (5, 5, 6)]
        fresh = [float(meta_loss(model, ep)[0]) for _ in range(2)]
        assert seeded[0] == seeded[1] and seeded[0] != seeded[2], seeded
        assert fresh[0] != fresh[1], fresh
    a = contract.sample_normal([3, 2], tf.float32, seed=1)
    b = contract.sample_normal([3, 2], tf.float32, seed=1, stream=1)
    np.testing.assert_array_equal(a.numpy(), contract.sample_normal([3, 2], tf.float32, seed=1).numpy())
    assert not np.allclose(a.numpy(), b.numpy())
