"""EnergyMemory: the write rule against a closed form, the meta-gradient against finite differences,
write/read behaviour, first-order mode, and .keras round trips."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from _tiny import OneLayerEnergy, episode, tiny_conv, tiny_fc, tiny_lower, tiny_rnn

import ebmm_tf
from ebmm_tf.memory import inverse_softplus


# ---------------------------------------------------------------------------------------------------- write rule
def _numpy_write(x, m0, b0, v, rates, alpha, beta):
    """Eq. (4) for E(x) = v . tanh(x M + b), with every gradient derived by hand."""
    m, b = m0.copy(), b0.copy()
    n = len(x)
    for r in rates:  # r = (energy, gradient, prior) rates of the single layer
        a = np.tanh(x @ m + b)  # [N, h]
        u = v * (1 - a**2)  # dE/ds
        ge_m, ge_b = x.T @ u / n, u.mean(0)
        gx = u @ m.T  # grad_x E  [N, d]
        du = v * (-2 * a * (1 - a**2))  # d u / d s
        w = 2 * (gx @ m) * du
        gg_m = (2 * gx.T @ u + x.T @ w) / n
        gg_b = w.mean(0)
        m, b = (
            m - r[0] * ge_m - r[1] * alpha * gg_m - r[2] * 2 * beta * (m - m0),
            b - r[0] * ge_b - r[1] * alpha * gg_b - r[2] * 2 * beta * (b - b0),
        )
    return m, b


@pytest.mark.parametrize("steps", [1, 2, 3])
def test_write_steps_equal_hand_computed_updates(steps):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    mem = ebmm_tf.EnergyMemory(
        OneLayerEnergy(dim=5, hidden=4, dtype="float64"), write_steps=steps, read_steps=1, dtype="float64"
    )
    rates = rng.uniform(0.05, 0.3, size=(steps, 1, 3))
    mem.write_rates_raw.assign(np.vectorize(inverse_softplus)(rates))
    mem.alpha_raw.assign(inverse_softplus(0.7))
    mem.beta_raw.assign(inverse_softplus(1.3))
    mem.theta_bar[1].assign(rng.normal(size=4) * 0.1)
    x = rng.normal(size=(6, 5))
    state = mem.write(x)
    m, b = _numpy_write(
        x,
        mem.theta_bar[0].numpy(),
        mem.theta_bar[1].numpy(),
        mem.energy_net.out.kernel.numpy()[:, 0],
        rates[:, 0],
        0.7,
        1.3,
    )
    np.testing.assert_allclose(state.weights["memory/kernel"].numpy(), m, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(state.weights["memory/bias"].numpy(), b, rtol=1e-10, atol=1e-12)


def test_writing_lowers_the_writing_loss_of_written_patterns():
    keras.utils.set_random_seed(1)
    mem = ebmm_tf.EnergyMemory(tiny_conv(), write_steps=3, read_steps=1, write_rate_init=1e-2, dtype="float64")
    ep = episode((8, 8, 1), 4, seed=1)
    before = mem.writing_loss(mem.initial_state(), ep["patterns"]).numpy()
    after = mem.writing_loss(mem.write(ep["patterns"]), ep["patterns"]).numpy()
    assert after < before - 1e-3 * abs(before)


# ---------------------------------------------------------------------------------------------------- meta-gradient
def _loss_fn(mem, ep):
    return lambda: ebmm_tf.meta_loss(mem, ep)[0]


def _directional_check(mem, ep, direction_groups, seed=0, eps=1e-7):
    """Relative error between grad . u and the central difference along u, for u on each variable group.

    The tiny networks normalise very small feature maps, so the loss is strongly curved: a step of 1e-5
    leaves O(1e-2) truncation error on the conv model, 1e-7 converges (float64 keeps rounding near 1e-8).
    """
    variables = mem.trainable_variables
    loss = _loss_fn(mem, ep)
    with tf.GradientTape() as tape:
        value = loss()
    grads = tape.gradient(value, variables)
    assert all(g is not None for g in grads)
    rng = np.random.default_rng(seed)
    base = [v.numpy() for v in variables]
    errors = {}
    for group, select in direction_groups.items():
        u = [rng.normal(size=v.shape) if select(v) else np.zeros(v.shape) for v in variables]
        analytic = sum(float(np.sum(g.numpy() * d)) for g, d in zip(grads, u))
        values = []
        for sign in (1, -1):
            for v, b0, d in zip(variables, base, u):
                v.assign(b0 + sign * eps * d)
            values.append(float(loss()))
        for v, b0 in zip(variables, base):
            v.assign(b0)
        fd = (values[0] - values[1]) / (2 * eps)
        errors[group] = abs(analytic - fd) / max(abs(fd), 1e-12)
    return errors


def _groups(mem):
    theta_bar = {id(v) for v in mem.theta_bar}
    rates = {
        id(v)
        for v in (
            mem.write_rates_raw,
            mem.alpha_raw,
            mem.beta_raw,
            mem.read_step_raw,
            mem.read_step_logits,
            mem.momentum_raw,
            mem.momentum_logits,
        )
    }
    return {
        "all": lambda v: True,
        "theta_bar": lambda v: id(v) in theta_bar,
        "learned_rates": lambda v: id(v) in rates,
        "static_weights": lambda v: id(v) not in theta_bar and id(v) not in rates,
    }


@pytest.mark.parametrize(
    "make_energy,shape,data_range,clamp",
    [
        (tiny_rnn, (6,), (-1.0, 1.0), True),  # dense writable layer, clamped read
        (tiny_conv, (8, 8, 1), (0.0, 1.0), False),  # convolutional writable layers
    ],
    ids=["dense", "conv"],
)
def test_meta_gradient_matches_central_finite_differences(make_energy, shape, data_range, clamp):
    keras.utils.set_random_seed(2)
    mem = ebmm_tf.EnergyMemory(
        make_energy(),
        write_steps=2,
        read_steps=2,
        data_range=data_range,
        write_rate_init=0.05,
        read_step_init=0.05,
        dtype="float64",
    )
    ep = episode(shape, 3, data_range, seed=3, clamp=clamp)
    errors = _directional_check(mem, ep, _groups(mem))
    assert max(errors.values()) < 1e-4, errors


# ---------------------------------------------------------------------------------------------------- gradients
@pytest.mark.parametrize(
    "make_energy,shape",
    [
        (tiny_rnn, (6,)),
        pytest.param(tiny_fc, (8, 8, 1), marks=pytest.mark.slow),  # ~25 s: the default suite has the other three
        (tiny_conv, (8, 8, 1)),
        (tiny_lower, (8, 8, 1)),
    ],
    ids=["rnn", "fc", "conv", "lower_conv"],
)
def test_every_trainable_variable_gets_a_meta_gradient(make_energy, shape):
    keras.utils.set_random_seed(3)
    mem = ebmm_tf.EnergyMemory(make_energy(dtype="float32"), write_steps=2, read_steps=2, write_rate_init=1e-2)
    ep = episode(shape, 2, seed=4, dtype=np.float32)
    with tf.GradientTape() as tape:
        loss = ebmm_tf.meta_loss(mem, ep)[0]
    grads = tape.gradient(loss, mem.trainable_variables)
    missing = [v.path for v, g in zip(mem.trainable_variables, grads) if g is None]
    zero = [v.path for v, g in zip(mem.trainable_variables, grads) if g is not None and not np.any(g.numpy())]
    assert not missing and not zero, (missing, zero)


def _gradients_and_graph_size(mem, ep, first_order):
    variables = mem.trainable_variables

    @tf.function
    def grads_fn(ep):
        with tf.GradientTape() as tape:
            loss = ebmm_tf.meta_loss(mem, ep, first_order=first_order)[0]
        return tape.gradient(loss, variables)

    concrete = grads_fn.get_concrete_function(ep)
    return [g.numpy() for g in concrete(ep)], len(concrete.graph.get_operations())


def test_first_order_changes_the_meta_gradient_and_is_cheaper():
    keras.utils.set_random_seed(4)
    mem = ebmm_tf.EnergyMemory(tiny_rnn(), write_steps=2, read_steps=2, write_rate_init=0.05, dtype="float64")
    ep = {k: tf.constant(v) for k, v in episode((6,), 3, (-1.0, 1.0), seed=5).items()}
    full, full_ops = _gradients_and_graph_size(mem, ep, first_order=False)
    first, first_ops = _gradients_and_graph_size(mem, ep, first_order=True)
    diff = np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(full, first)))
    norm = np.sqrt(sum(np.sum(a**2) for a in full))
    assert diff > 1e-3 * norm
    assert first_ops < 0.8 * full_ops, (first_ops, full_ops)  # fewer ops in the compiled meta-gradient


# ---------------------------------------------------------------------------------------------------- read
def test_read_schedules_are_non_increasing_and_clamped_dimensions_stay():
    keras.utils.set_random_seed(5)
    mem = ebmm_tf.EnergyMemory(
        tiny_rnn(), write_steps=1, read_steps=4, data_range=(-1.0, 1.0), read_step_init=0.5, dtype="float64"
    )
    mem.read_step_logits.assign([3.0, -1.0, 0.5])
    gammas, psis = mem.read_steps_schedule().numpy(), mem.momentum_schedule().numpy()
    assert np.all(np.diff(gammas) <= 0) and np.all(np.diff(psis) <= 0) and gammas[0] == pytest.approx(0.5)
    ep = episode((6,), 5, (-1.0, 1.0), seed=6, clamp=True)
    iterates = mem.read(mem.write(ep["patterns"]), ep["queries"], ep["clamp"])
    assert len(iterates) == 4
    for it in iterates:
        it = it.numpy()
        np.testing.assert_array_equal(it[ep["clamp"] == 1], ep["queries"][ep["clamp"] == 1])
        assert it.min() >= -1.0 and it.max() <= 1.0


def test_reading_a_trained_memory_moves_distorted_queries_towards_the_originals():
    """Meta-train a tiny binary-string memory for a few steps, then check retrieval on fresh episodes."""
    keras.utils.set_random_seed(6)
    dim, n = 16, 4
    mem = ebmm_tf.EnergyMemory(
        ebmm_tf.GatedRNNEnergy(input_size=dim, hidden_size=32, hops=2, dynamic_size=8),
        write_steps=2,
        read_steps=3,
        data_range=(-1.0, 1.0),
        write_rate_init=0.1,
        read_step_init=0.5,
    )
    learner = ebmm_tf.MetaLearner(mem, learning_rate=1e-2, clip_norm=1.0)
    rng = np.random.default_rng(0)

    def sample():
        x = rng.choice([-1.0, 1.0], size=(n, dim)).astype(np.float32)
        known = np.zeros((n, dim), np.float32)
        for row in known:
            row[rng.choice(dim, dim // 2, replace=False)] = 1
        q = np.where(known == 1, x, rng.choice([-1.0, 1.0], size=(n, dim))).astype(np.float32)
        return {"patterns": tf.constant(x), "queries": tf.constant(q), "clamp": tf.constant(known)}

    for _ in range(250):
        learner.train_step(sample())
    err_query, err_read, e_query, e_read = [], [], [], []
    for _ in range(20):
        ep = sample()
        state = mem.write(ep["patterns"])
        out = mem.recall(state, ep["queries"], ep["clamp"])
        err_query.append(np.mean(np.sum((ep["queries"] - ep["patterns"]).numpy() ** 2, -1)))
        err_read.append(np.mean(np.sum((out - ep["patterns"]).numpy() ** 2, -1)))
        e_query.append(np.mean(mem.energy(state, ep["queries"])))
        e_read.append(np.mean(mem.energy(state, out)))
    # untrained: about 0.85 of the query's error; after 250 steps about 0.5 (seed 6)
    assert np.mean(err_read) < 0.75 * np.mean(err_query), (np.mean(err_read), np.mean(err_query))
    assert np.mean(e_read) < np.mean(e_query), (np.mean(e_read), np.mean(e_query))


# ---------------------------------------------------------------------------------------------------- validation
def test_bad_inputs_give_clear_errors():
    mem = ebmm_tf.EnergyMemory(tiny_rnn(dtype="float32"), write_steps=1, read_steps=1)
    with pytest.raises(ValueError, match=r"shape \[batch, 6\]"):
        mem.write(np.zeros((2, 7), np.float32))
    with pytest.raises(TypeError, match="floating"):
        mem.write(np.zeros((2, 6), np.int32))
    with pytest.raises(ValueError, match="write_steps"):
        ebmm_tf.EnergyMemory(tiny_rnn(), write_steps=0)
    with pytest.raises(ValueError, match="data_range"):
        ebmm_tf.EnergyMemory(tiny_rnn(), data_range=(1.0, 0.0))


# ---------------------------------------------------------------------------------------------------- saving
@pytest.mark.parametrize("make_energy,shape", [(tiny_rnn, (6,)), (tiny_conv, (8, 8, 1))], ids=["rnn", "conv"])
def test_keras_file_round_trip_reproduces_energies_exactly(tmp_path, make_energy, shape):
    keras.utils.set_random_seed(7)
    mem = ebmm_tf.EnergyMemory(make_energy(dtype="float32"), write_steps=2, read_steps=2, write_rate_init=0.02)
    rng = np.random.default_rng(0)
    for v in mem.trainable_variables:  # move every variable away from its initial value
        v.assign(v.numpy() + rng.normal(size=v.shape).astype(np.float32) * 0.01)
    ep = episode(shape, 3, seed=8, dtype=np.float32)
    path = tmp_path / "memory.keras"
    mem.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, ebmm_tf.EnergyMemory)
    assert loaded.memory_size() == mem.memory_size()
    for a, b in zip(mem.weights, loaded.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    s1, s2 = mem.write(ep["patterns"]), loaded.write(ep["patterns"])
    np.testing.assert_array_equal(mem.energy(s1, ep["queries"]).numpy(), loaded.energy(s2, ep["queries"]).numpy())
    np.testing.assert_array_equal(mem.recall(s1, ep["queries"]).numpy(), loaded.recall(s2, ep["queries"]).numpy())


@pytest.mark.parametrize("learn_theta_bar", [True, False], ids=["trained", "fixed"])
def test_tf_checkpoint_of_the_memory_alone_holds_theta_bar(tmp_path, learn_theta_bar):
    # no optimizer in the checkpoint: theta_bar must be saved through the memory itself, under readable names
    mem, fresh = (ebmm_tf.EnergyMemory(tiny_rnn(), learn_theta_bar=learn_theta_bar) for _ in range(2))
    for v in mem.theta_bar:
        v.assign(v + 3.0)
    path = tf.train.Checkpoint(model=mem).save(str(tmp_path / "ckpt"))
    names = {n for n, _ in tf.train.list_variables(path)}
    assert {f"model/theta_bar_{m.replace('/', '_')}/.ATTRIBUTES/VARIABLE_VALUE" for m in mem.memory_names} <= names
    tf.train.Checkpoint(model=fresh).restore(path).assert_existing_objects_matched()
    for a, b in zip(mem.weights, fresh.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_widened_gated_rnn_memory_writes_and_reads_exactly_as_the_narrow_one(tmp_path):
    keras.utils.set_random_seed(11)
    narrow = ebmm_tf.EnergyMemory(tiny_rnn(), write_steps=2, read_steps=2, write_rate_init=0.05)
    rng = np.random.default_rng(1)
    for v in narrow.weights:  # trained-looking values everywhere (zero biases would hide a wrong copy)
        v.assign(v.numpy() + rng.normal(size=v.shape) * 0.1)
    wide = narrow.with_energy(narrow.energy_net.widened(13, seed=3))
    assert wide.energy_net.hidden_size == 13 and wide.memory_size() == narrow.memory_size()
    copied = {id(v) for v in narrow.theta_bar + narrow.rate_variables()}
    assert {id(v) for v in narrow.weights} - {id(v) for v in narrow.energy_net.weights} == copied
    ep = episode((6,), 4, seed=2)
    s_narrow, s_wide = narrow.write(ep["patterns"]), wide.write(ep["patterns"])
    for name in narrow.memory_names:
        np.testing.assert_allclose(s_wide.weights[name], s_narrow.weights[name], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(
        wide.energy(s_wide, ep["queries"]), narrow.energy(s_narrow, ep["queries"]), rtol=1e-12, atol=1e-14
    )
    for a, b in zip(wide.read(s_wide, ep["queries"]), narrow.read(s_narrow, ep["queries"])):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    # the new units are live: their (zero) output weights get a meta-gradient, their states are not zero
    with tf.GradientTape() as tape:
        loss, _ = ebmm_tf.meta_loss(wide, ep)
    g = tape.gradient(loss, wide.energy_net.out.kernel).numpy()
    assert np.all(wide.energy_net.out.kernel.numpy()[8:] == 0) and np.linalg.norm(g[8:]) > 0
    wide.save(tmp_path / "wide.keras")  # a start for Experiment.init_from
    assert keras.saving.load_model(tmp_path / "wide.keras").energy_net.hidden_size == 13
    with pytest.raises(ValueError, match="must exceed"):
        narrow.energy_net.widened(8)
    with pytest.raises(ValueError, match="memory spec"):
        narrow.with_energy(ebmm_tf.GatedRNNEnergy(input_size=6, hidden_size=10, dynamic_size=2, dtype="float64"))


def test_gated_rnn_energy_on_images_flattens_the_pixels(tmp_path):
    keras.utils.set_random_seed(3)
    net = ebmm_tf.GatedRNNEnergy(input_size=None, pattern_shape=(4, 4, 1), hidden_size=8, hops=2, dynamic_size=3)
    assert net.input_size == 16 and net.pattern_shape == (4, 4, 1) and net.memory_size() == 16 * 3 + 3
    mem = ebmm_tf.EnergyMemory(net, write_steps=1, read_steps=1)
    x = np.random.default_rng(0).uniform(size=(5, 4, 4, 1)).astype("float32")
    state = mem.write(x)
    flat = ebmm_tf.GatedRNNEnergy(input_size=16, hidden_size=8, hops=2, dynamic_size=3)
    for a, b in zip(flat.weights, net.weights):
        a.assign(b)
    np.testing.assert_allclose(
        net(x, memory=state.weights).numpy(), flat(x.reshape(5, 16), memory=state.weights).numpy(), rtol=1e-6
    )
    mem.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(again.recall(again.write(x), x).numpy(), mem.recall(state, x).numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="does not match input_size"):
        ebmm_tf.GatedRNNEnergy(input_size=15, pattern_shape=(4, 4, 1), hidden_size=8)


def test_gated_rnn_energy_input_center_shifts_the_input_and_the_write(tmp_path):
    keras.utils.set_random_seed(4)
    kw = dict(input_size=None, pattern_shape=(4, 4, 1), hidden_size=8, hops=2, dynamic_size=3)
    centered = ebmm_tf.GatedRNNEnergy(input_center=0.25, **kw)
    plain = ebmm_tf.GatedRNNEnergy(**kw)
    for a, b in zip(plain.weights, centered.weights):
        a.assign(b)
    x = (np.random.default_rng(1).uniform(size=(5, 4, 4, 1)) < 0.3).astype("float32")
    memory = {k: tf.random.normal(shape) for k, (shape, _) in centered.memory_spec().items()}
    np.testing.assert_allclose(centered(x, memory=memory).numpy(), plain(x - 0.25, memory=memory).numpy(), rtol=1e-6)
    # the energy's gradient in the memory kernel is the outer product of the (centred) input with the error at
    # the memory units: without centring the rows of background pixels (x_d = 0) get none of the energy term
    background = x[0].reshape(-1) == 0

    def kernel_gradient(net):
        kernel = tf.Variable(memory["memory/kernel"])
        with tf.GradientTape() as tape:
            e = net(x[:1], memory={**memory, "memory/kernel": kernel})
        return np.abs(tape.gradient(e, kernel).numpy()).sum(-1)

    np.testing.assert_array_equal(kernel_gradient(plain)[background], 0.0)
    assert np.all(kernel_gradient(centered)[background] > 0)
    again = ebmm_tf.GatedRNNEnergy.from_config(centered.get_config())
    assert again.input_center == 0.25
    with pytest.raises(ValueError, match="finite"):
        ebmm_tf.GatedRNNEnergy(input_center=float("nan"), **kw)


def test_gated_rnn_energy_smoothness_prior_adds_the_neighbour_differences(tmp_path):
    keras.utils.set_random_seed(5)
    kw = dict(input_size=None, pattern_shape=(3, 4, 2), hidden_size=8, hops=2, dynamic_size=3)
    smooth = ebmm_tf.GatedRNNEnergy(smoothness_init=0.7, **kw)
    plain = ebmm_tf.GatedRNNEnergy(**kw)
    for a in plain.weights:  # every weight of the plain network has its twin in the smooth one
        a.assign(next(b for b in smooth.weights if b.path.split("/")[-2:] == a.path.split("/")[-2:]))
    x = np.random.default_rng(2).uniform(size=(4, 3, 4, 2)).astype("float32")
    memory = {k: tf.random.normal(shape) for k, (shape, _) in smooth.memory_spec().items()}
    # hand computation: 0.7 / 2 * sum over vertical and horizontal neighbours of (x_i - x_j)^2, per channel
    prior = np.zeros(4)
    for b in range(4):
        for i in range(3):
            for j in range(4):
                for c in range(2):
                    if i + 1 < 3:
                        prior[b] += (x[b, i, j, c] - x[b, i + 1, j, c]) ** 2
                    if j + 1 < 4:
                        prior[b] += (x[b, i, j, c] - x[b, i, j + 1, c]) ** 2
    np.testing.assert_allclose(
        smooth(x, memory=memory).numpy(), plain(x, memory=memory).numpy() + 0.35 * prior, rtol=1e-5, atol=1e-5
    )
    # the prior's weight is a static (meta-learned) weight, not memory, and it survives a round trip
    assert smooth.memory_spec() == plain.memory_spec()
    assert any(v.path.endswith("smoothness") for v in smooth.trainable_weights)
    assert len(smooth.trainable_weights) == len(plain.trainable_weights) + 1
    again = ebmm_tf.GatedRNNEnergy.from_config(smooth.get_config())
    assert again.smoothness_init == 0.7
    smooth.smoothness_raw.assign(-0.4)  # a learned value, not the starting one: it must be saved and loaded
    mem = ebmm_tf.EnergyMemory(smooth, write_steps=1, read_steps=1)
    state = mem.write(x)
    mem.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert float(loaded.energy_net.smoothness_raw.numpy()) == pytest.approx(-0.4)
    np.testing.assert_allclose(loaded.recall(loaded.write(x), x).numpy(), mem.recall(state, x).numpy(), atol=1e-6)
    with pytest.raises(ValueError, match=r"image patterns \[H, W, C\]"):
        ebmm_tf.GatedRNNEnergy(input_size=16, hidden_size=8, smoothness_init=0.5)
    with pytest.raises(ValueError, match=">= 0"):
        ebmm_tf.GatedRNNEnergy(smoothness_init=-1.0, **kw)


def test_slot_energy_is_a_gaussian_mixture_and_its_read_moves_to_the_matching_slot(tmp_path):
    keras.utils.set_random_seed(6)
    net = ebmm_tf.SlotEnergy(pattern_shape=(2, 3, 1), num_slots=4, input_center=0.5, sharpness_init=2.0)
    assert net.memory_spec() == {"slots/kernel": ((6, 4), 6), "slots/bias": ((4,), 6)}
    assert net.memory_size() == 4 * 7
    rng = np.random.default_rng(3)
    kernel, bias = rng.normal(size=(6, 4)).astype("float32"), rng.normal(size=4).astype("float32")
    x = rng.uniform(size=(5, 2, 3, 1)).astype("float32")
    memory = {"slots/kernel": tf.constant(kernel), "slots/bias": tf.constant(bias)}
    # closed form: E = -log sum_k exp(beta * (b_k - |x - c - m_k|^2 / 2)) / beta
    xc = x.reshape(5, 6).astype("float64") - 0.5
    d2 = ((xc[:, :, None] - kernel[None].astype("float64")) ** 2).sum(1)  # [B, K]
    logits = 2.0 * (bias[None] - d2 / 2)
    top = logits.max(-1, keepdims=True)
    expected = -(np.log(np.exp(logits - top).sum(-1)) + top[:, 0]) / 2.0
    np.testing.assert_allclose(net(x, memory=memory).numpy(), expected, rtol=1e-5, atol=1e-4)
    # grad_x E = x~ - sum_k p_k m_k with p = softmax(beta * s)
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        e = tf.reduce_sum(net(xt, memory=memory))
    p = np.exp(logits - top) / np.exp(logits - top).sum(-1, keepdims=True)
    np.testing.assert_allclose(
        tape.gradient(e, xt).numpy().reshape(5, 6), xc - p @ kernel.T.astype("float64"), rtol=1e-4, atol=1e-4
    )
    # theta_bar's slots start normal with slot_init_std, the log-weights at 0
    wide = ebmm_tf.SlotEnergy(pattern_shape=(16, 16, 3), num_slots=64, slot_init_std=0.2)
    mem = ebmm_tf.EnergyMemory(wide, write_steps=1, read_steps=1)
    slots, logw = (v.numpy() for v in mem.theta_bar)
    assert slots.shape == (768, 64) and abs(slots.std() - 0.2) < 0.01 and np.all(logw == 0)
    norms = np.linalg.norm(slots, axis=0)
    assert norms.std() > 0.05  # random norms ...
    equal = ebmm_tf.SlotEnergy(pattern_shape=(16, 16, 3), num_slots=64, slot_init_std=0.2, equal_norm_slots=True)
    eq_slots = ebmm_tf.EnergyMemory(equal, write_steps=1, read_steps=1).theta_bar[0].numpy()
    # ... or every starting slot at the expected norm 0.2 * sqrt(768), the directions still random
    np.testing.assert_allclose(np.linalg.norm(eq_slots, axis=0), 0.2 * np.sqrt(768), rtol=1e-5)
    assert abs(eq_slots.std() - 0.2) < 0.01 and np.abs(np.corrcoef(eq_slots.T)[np.triu_indices(64, 1)]).max() < 0.2
    assert ebmm_tf.SlotEnergy.from_config(equal.get_config()).equal_norm_slots
    with pytest.raises(ValueError, match="needs memory_init_std"):
        ebmm_tf.layers.WritableDense(4, 0, 2, memory_init_equal_norm=True)
    # with two stored slots, a query with a corrupted part is read back to its own slot in one unit step
    two = ebmm_tf.SlotEnergy(pattern_shape=(2, 3, 1), num_slots=2, sharpness_init=20.0)
    pair = np.stack([np.zeros(6), np.ones(6)]).astype("float32")  # well separated: |a - b|^2 = 6
    stored = {"slots/kernel": tf.constant(pair.T), "slots/bias": tf.zeros([2])}
    for own in (0, 1):
        query = pair[own].copy()
        query[:2] = 1.0 - query[:2]  # 2 of 6 values flipped: still nearer its own slot (2 vs 4)
        q = tf.constant(query.reshape(1, 2, 3, 1))
        with tf.GradientTape() as tape:
            tape.watch(q)
            e = two(q, memory=stored)
        np.testing.assert_allclose((q - tape.gradient(e, q)).numpy().reshape(6), pair[own], atol=1e-6)
    again = ebmm_tf.SlotEnergy.from_config(net.get_config())
    assert (again.num_slots, again.input_center, again.sharpness_init, again.slot_init_std) == (4, 0.5, 2.0, 0.05)
    net.sharpness_raw.assign(0.3)  # a learned value, not the starting one: it must be saved and loaded
    memory_model = ebmm_tf.EnergyMemory(net, write_steps=2, read_steps=2)
    state = memory_model.write(x)
    memory_model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert float(loaded.energy_net.sharpness_raw.numpy()) == pytest.approx(0.3)
    np.testing.assert_allclose(
        loaded.recall(loaded.write(x), x).numpy(), memory_model.recall(state, x).numpy(), atol=1e-6
    )
    bads = (dict(num_slots=0), dict(num_slots=2.7), dict(num_slots=True), dict(sharpness_init=0.0))
    for bad in bads + (dict(slot_init_std=-1.0), dict(input_center=np.nan)):
        with pytest.raises(ValueError):
            ebmm_tf.SlotEnergy(pattern_shape=(2, 3, 1), **bad)


# ---------------------------------------------------------------------------------------------------- step weights
def test_step_weights_differentiate_the_weighted_read_terms_and_log_b4s_loss():
    keras.utils.set_random_seed(3)
    mem = ebmm_tf.EnergyMemory(
        tiny_rnn(), write_steps=2, read_steps=3, data_range=(-1.0, 1.0), write_rate_init=0.1, dtype="float64"
    )
    ep = {k: tf.constant(v) for k, v in episode((6,), 4, data_range=(-1.0, 1.0), seed=1, clamp=True).items()}
    weights = (0.0, 0.5, 2.0)
    grads, metrics = ebmm_tf.MetaLearner(mem, step_weights=weights).compute_gradients(ep)
    with tf.GradientTape() as tape:  # independent: the per-step terms written out by hand
        state = mem.write(ep["patterns"])
        iterates = mem.read(state, ep["queries"], ep["clamp"])
        terms = [tf.reduce_mean(tf.reduce_sum(tf.square(ep["patterns"] - it), -1)) for it in iterates]
        objective = sum(w * t for w, t in zip(weights, terms))
    expected = tape.gradient(objective, mem.trainable_variables)
    for g, e in zip(grads, expected):
        np.testing.assert_allclose(g.numpy(), e.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(float(metrics["loss"]), float(sum(terms)), rtol=1e-12)  # the log keeps B.4's loss
    default, _ = ebmm_tf.MetaLearner(mem).compute_gradients(ep)
    assert not np.allclose(default[0].numpy(), grads[0].numpy())  # the weights change the gradient


@pytest.mark.parametrize(
    "weights, match", [((1.0, 1.0), "needs 3 weights"), ((0.0, -1.0, 1.0), ">= 0"), ((0.0, 0.0, 0.0), "positive sum")]
)
def test_bad_step_weights_are_refused(weights, match):
    mem = ebmm_tf.EnergyMemory(tiny_rnn(), write_steps=1, read_steps=3)
    with pytest.raises(ValueError, match=match):
        ebmm_tf.MetaLearner(mem, step_weights=weights)


def test_skip_spikes_counts_a_spike_step_without_applying_it_and_stops_after_too_many():
    keras.utils.set_random_seed(4)
    mem = ebmm_tf.EnergyMemory(
        tiny_rnn(), write_steps=1, read_steps=2, data_range=(-1.0, 1.0), write_rate_init=0.1, dtype="float64"
    )
    ep = {k: tf.constant(v) for k, v in episode((6,), 4, data_range=(-1.0, 1.0), seed=1, clamp=True).items()}
    learner = ebmm_tf.MetaLearner(mem, learning_rate=1e-3, skip_spikes=10.0, spike_window=20, max_skipped=2)
    real = learner.compute_gradients
    scale = {"factor": 1.0}

    def scaled(episodes):  # the real meta-gradient, optionally blown up: a spike
        grads, metrics = real(episodes)
        metrics = dict(metrics, grad_norm=metrics["grad_norm"] * scale["factor"])
        return [g * scale["factor"] for g in grads], metrics

    learner.compute_gradients = scaled
    for _ in range(20):  # fills the record of norms; every one applied
        assert learner.train_step(ep)["skipped"] is False
    before = [v.numpy().copy() for v in mem.trainable_variables]
    moments = [v.numpy().copy() for v in learner.optimizer.variables]
    step = int(learner.iterations.numpy())
    scale["factor"] = 1e4
    assert learner.train_step(ep)["skipped"] is True
    assert int(learner.iterations.numpy()) == step + 1  # counted (the schedule moves on) ...
    for b, v in zip(before, mem.trainable_variables):  # ... but not applied
        np.testing.assert_array_equal(b, v.numpy())
    after = [v.numpy() for v in learner.optimizer.variables]
    assert len(after) == len(moments)
    for m, a in zip(moments[1:], after[1:]):  # Adam's moments untouched (variables[0] is the step counter)
        np.testing.assert_array_equal(m, a)
    scale["factor"] = 1.0
    assert learner.train_step(ep)["skipped"] is False  # a normal step is applied again
    assert not np.array_equal(before[0], mem.trainable_variables[0].numpy())
    scale["factor"] = 1e4
    learner.train_step(ep)
    learner.train_step(ep)
    with pytest.raises(FloatingPointError, match="3 meta-gradients in a row"):
        learner.train_step(ep)
    assert learner.skipped_steps == 4


@pytest.mark.parametrize("kwargs, match", [({"skip_spikes": 1.0}, "factor > 1"), ({"spike_window": 5}, "spike_window")])
def test_bad_spike_settings_are_refused(kwargs, match):
    mem = ebmm_tf.EnergyMemory(tiny_rnn(), write_steps=1, read_steps=2)
    with pytest.raises(ValueError, match=match):
        ebmm_tf.MetaLearner(mem, **kwargs)
