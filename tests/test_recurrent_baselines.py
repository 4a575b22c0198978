"""Table 1's recurrent baselines (ebmm_tf.baselines.recurrent): each update rule against an independent numpy
computation on a tiny case, memory sizes, clamping, meta-training on a small case, `.keras` round trips and the
gin files."""

import glob
import os

import keras
import numpy as np
import pytest

from ebmm_tf import run as run_lib
from ebmm_tf import trainer
from ebmm_tf.baselines.recurrent import MANN, DifferentiablePlasticity, LSTMMemory
from ebmm_tf.meta import MetaLearner, meta_loss

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIN = sorted(
    p
    for p in glob.glob(os.path.join(ROOT, "gin", "baselines", "*.gin"))
    if any(k in os.path.basename(p) for k in ("lstm", "mann", "plasticity"))
)


def _sig(z):
    return 1.0 / (1.0 + np.exp(-z))


def _bits(n, d, seed=0):
    return np.where(np.random.default_rng(seed).random((n, d)) < 0.5, -1.0, 1.0).astype(np.float32)


def _np_lstm(cell, x, h, c):
    z = np.concatenate([x, h], -1) @ cell.kernel.numpy() + cell.bias.numpy()
    i, f, g, o = np.split(z, 4, axis=-1)
    c = _sig(f) * c + _sig(i) * np.tanh(g)
    return _sig(o) * np.tanh(c), c


# ====================================================================== update rules vs numpy
def test_lstm_write_and_read_match_a_numpy_lstm():
    keras.utils.set_random_seed(0)
    m = LSTMMemory((6,), hidden_size=5, read_steps=2)
    x, q = _bits(3, 6, 0), _bits(2, 6, 1)
    h, c = np.zeros((1, 5)), np.zeros((1, 5))
    for t in range(3):
        h, c = _np_lstm(m.cell, x[t : t + 1], h, c)
    state = m.write(x)
    np.testing.assert_allclose(state.weights["h"].numpy(), h, atol=1e-5)
    np.testing.assert_allclose(state.weights["c"].numpy(), c, atol=1e-5)
    hq, cq, xq = np.repeat(h, 2, 0), np.repeat(c, 2, 0), q
    expected = []
    for _ in range(2):
        hq, cq = _np_lstm(m.cell, xq, hq, cq)
        xq = -1.0 + 2.0 * _sig(hq @ m.out.kernel.numpy() + m.out.bias.numpy())
        expected.append(xq)
    got = m.read(state, q)
    assert len(got) == 2
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g.numpy(), e, atol=1e-5)
    assert m.memory_size() == 10


def test_mann_least_recently_used_writes_match_the_equations():
    keras.utils.set_random_seed(1)
    m = MANN((6,), num_slots=3, word_size=4, controller_size=5)
    x = _bits(4, 6, 2)
    gamma = float(_sig(m.usage_decay_logit.numpy()))
    mem, usage, w_r, r = np.zeros((3, 4)), np.zeros(3), np.zeros(3), np.zeros(4)
    h, c = np.zeros((1, 5)), np.zeros((1, 5))
    slots_cleared = []
    for t in range(4):
        h, c = _np_lstm(m.controller, np.concatenate([x[t], r])[None], h, c)
        heads = h[0] @ m.heads.kernel.numpy() + m.heads.bias.numpy()
        key, beta, gate = np.tanh(heads[:4]), 1.0 + np.log1p(np.exp(heads[4])), _sig(heads[5])
        sim = mem @ key / (np.linalg.norm(key) * np.linalg.norm(mem, axis=-1) + 1e-6)
        new_r = np.exp(beta * sim) / np.exp(beta * sim).sum()
        lu = np.eye(3)[np.argmin(usage)]  # first least-used slot
        slots_cleared.append(int(np.argmin(usage)))
        w_w = gate * w_r + (1.0 - gate) * lu
        mem = mem * (1.0 - lu)[:, None] + np.outer(w_w, key)
        usage = gamma * usage + new_r + w_w
        w_r = new_r
        r = w_r @ mem
    state = m.write(x).weights
    np.testing.assert_allclose(state["memory"].numpy(), mem, atol=1e-5)
    np.testing.assert_allclose(state["usage"].numpy(), usage, atol=1e-5)
    np.testing.assert_allclose(state["read"].numpy(), r, atol=1e-5)
    assert slots_cleared[0] == 0 and len(set(slots_cleared[:3])) == 3  # empty slots are filled before reuse
    assert m.memory_size() == 12


def test_mann_first_write_goes_to_the_least_used_slot():
    """Hand-computed: from an empty memory (usage 0, no previous read) the first write weight is
    ``(1 - sigma) e_0``, so row 0 of the memory becomes ``(1 - sigma) k`` and the others stay 0."""
    keras.utils.set_random_seed(2)
    m = MANN((6,), num_slots=3, word_size=4, controller_size=5)
    x = _bits(1, 6, 3)
    h, _ = _np_lstm(m.controller, np.concatenate([x[0], np.zeros(4)])[None], np.zeros((1, 5)), np.zeros((1, 5)))
    heads = h[0] @ m.heads.kernel.numpy() + m.heads.bias.numpy()
    key, gate = np.tanh(heads[:4]), _sig(heads[5])
    memory = m.write(x).weights["memory"].numpy()
    np.testing.assert_allclose(memory[0], (1.0 - gate) * key, atol=1e-6)
    np.testing.assert_array_equal(memory[1:], 0.0)


def test_plasticity_hebbian_trace_and_read_match_the_closed_form():
    keras.utils.set_random_seed(3)
    m = DifferentiablePlasticity((5,), read_steps=2, eta_init=0.3)
    x, q = _bits(2, 5, 4), _bits(3, 5, 5)
    eta = float(_sig(m.eta_logit.numpy()))
    hebb = eta * (1.0 - eta) * np.outer(x[0], x[0]) + eta * np.outer(x[1], x[1])
    state = m.write(x)
    np.testing.assert_allclose(state.weights["hebb"].numpy(), hebb, atol=1e-6)
    w = m.w.numpy() + m.alpha.numpy() * hebb
    xq, got = q, m.read(state, q)
    for g in got:
        xq = np.tanh(xq @ w + m.b.numpy())  # squash(2a) on (-1, 1) is tanh(a)
        np.testing.assert_allclose(g.numpy(), xq, atol=1e-5)
    assert m.memory_size() == 15
    assert DifferentiablePlasticity((128,)).memory_size() == 8256  # Table 1's Hopfield budget


# ====================================================================== interface
def _models(d=8):
    return [
        LSTMMemory((d,), hidden_size=6, read_steps=2),
        MANN((d,), num_slots=4, word_size=5, controller_size=6, read_steps=2),
        DifferentiablePlasticity((d,), read_steps=2),
    ]


def test_clamped_dimensions_keep_the_query_and_iterates_stay_in_range():
    keras.utils.set_random_seed(0)
    x, q = _bits(4, 8, 0), _bits(3, 8, 1)
    mask = (np.random.default_rng(2).random((3, 8)) < 0.5).astype(np.float32)
    for m in _models():
        state = m.write(x)
        for it in m.read(state, q, mask):
            out = it.numpy()
            assert out.shape == (3, 8)
            np.testing.assert_array_equal(out[mask > 0], q[mask > 0])
            assert np.all(np.abs(out) <= 1.0)


def test_memory_depends_on_what_was_written():
    keras.utils.set_random_seed(0)
    q = _bits(3, 8, 1)
    for m in _models():
        a = m.recall(m.write(_bits(4, 8, 5)), q).numpy()
        b = m.recall(m.write(_bits(4, 8, 6)), q).numpy()
        assert np.abs(a - b).max() > 1e-4, type(m).__name__


@pytest.mark.parametrize("index", [0, 1, 2], ids=["lstm", "mann", "plasticity"])
def test_meta_training_learns_a_small_case(index):
    """Every variable gets a meta-gradient (MetaLearner raises otherwise) and 60 steps on one fixed episode of
    4 strings of 8 bits (half of them clamped) cut the loss below half."""
    keras.utils.set_random_seed(0)
    model = _models()[index]
    rng = np.random.default_rng(0)
    x = _bits(4, 8, 7)
    mask = (rng.random((4, 8)) < 0.5).astype(np.float32)
    q = np.where(mask > 0, x, _bits(4, 8, 8))
    ep = {"patterns": x, "queries": q, "clamp": mask}
    learner = MetaLearner(model, learning_rate=1e-2, clip_norm=10.0)
    before = float(meta_loss(model, ep)[0])
    for _ in range(60):
        learner.train_step(ep)
    after = float(meta_loss(model, ep)[0])
    assert after < 0.5 * before, (before, after)


def test_keras_round_trip_recalls_identically(tmp_path):
    keras.utils.set_random_seed(0)
    x, q = _bits(4, 8, 0), _bits(3, 8, 1)
    for m in _models():
        path = str(tmp_path / f"{m.name}.keras")
        m.save(path)
        loaded = keras.saving.load_model(path, compile=False)
        assert type(loaded) is type(m) and loaded.memory_size() == m.memory_size()
        assert loaded.read_steps == m.read_steps
        np.testing.assert_allclose(
            loaded.recall(loaded.write(x), q).numpy(), m.recall(m.write(x), q).numpy(), atol=1e-6
        )


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="hidden_size"):
        LSTMMemory((8,), hidden_size=0)
    with pytest.raises(ValueError, match="usage_decay_init"):
        MANN((8,), usage_decay_init=1.0)
    with pytest.raises(ValueError, match="eta_init"):
        DifferentiablePlasticity((8,), eta_init=0.0)
    with pytest.raises(ValueError, match="read_steps"):
        DifferentiablePlasticity((8,), read_steps=0)
    with pytest.raises(ValueError, match="shape"):
        LSTMMemory((8,)).write(np.zeros((2, 7), np.float32))


# ====================================================================== gin files
def test_the_gin_files_exist():
    names = {os.path.basename(p) for p in GIN}
    for kind in ("lstm", "mann", "plasticity"):
        assert f"binary_strings_{kind}_cpu.gin" in names, names


@pytest.mark.parametrize("path", GIN, ids=[os.path.basename(p) for p in GIN])
def test_gin_files_build_the_model_within_the_table1_budget(path, tmp_path):
    run_lib.parse_gin([path], ["Experiment.num_steps = 0", "Experiment.validation_every = 0"])
    exp = trainer.Experiment(workdir=str(tmp_path))
    assert exp.memory.memory_size() <= 8256, exp.memory.memory_size()
    assert exp.memory.pattern_shape == (128,)
