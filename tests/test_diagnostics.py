"""Memory-use diagnostics (memory gain, energy AUC, write specificity) against independent computations, and
the training features built on them: balanced write rates, curriculum over N, random-image episodes, warm
starts, a separate optimiser for the rates, the validation split held out of the training split."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from _tiny import OneLayerEnergy, tiny_conv

import ebmm_tf
import gin
from ebmm_tf import data, diagnostics, trainer
from ebmm_tf import run as run_lib
from ebmm_tf.memory import EnergyMemory, MemoryState

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(ROOT, "gin", "smoke", "binary_strings.gin")


# ---------------------------------------------------------------------------------------------------- AUC
def test_energy_auc_counts_pairs_and_ties():
    # pairs (s, o): (1,2) (1,4) (2,2) tie (2,4) (3,2) wrong (3,4) -> (1 + 1 + 0.5 + 1 + 0 + 1) / 6
    assert diagnostics.energy_auc([1.0, 2.0, 3.0], [2.0, 4.0]) == pytest.approx(4.5 / 6)
    assert diagnostics.energy_auc([0.0, 0.1], [1.0, 2.0]) == 1.0
    assert diagnostics.energy_auc([5.0], [1.0, 2.0]) == 0.0
    rng = np.random.default_rng(0)
    s, o = rng.normal(size=40), rng.normal(0.5, 1.0, size=30)
    brute = np.mean([(a < b) + 0.5 * (a == b) for a in s for b in o])
    assert diagnostics.energy_auc(s, o) == pytest.approx(brute)
    assert np.isnan(diagnostics.energy_auc([np.nan], [1.0]))
    with pytest.raises(ValueError):
        diagnostics.energy_auc([], [1.0])


# ---------------------------------------------------------------------------------------------------- gain
class _Lookup:
    """A perfect memory: read returns the stored pattern nearest to each query; energy = distance to it."""

    pattern_shape = (12,)

    def write(self, patterns):
        return MemoryState({"stored": tf.convert_to_tensor(patterns, tf.float32)})

    def _nearest(self, state, x):
        stored = state.weights["stored"]
        d = tf.reduce_sum(tf.square(x[:, None, :] - stored[None]), -1)
        return tf.gather(stored, tf.argmin(d, axis=1)), tf.reduce_min(d, axis=1)

    def read(self, state, queries, mask=None):
        return [self._nearest(state, tf.convert_to_tensor(queries, tf.float32))[0]]

    def energy(self, state, x):
        return self._nearest(state, tf.convert_to_tensor(x, tf.float32))[1]


class _Identity:
    """A memory-less 'denoiser' that returns the query, whatever was written."""

    pattern_shape = (12,)

    def write(self, patterns):
        return MemoryState({})

    def read(self, state, queries, mask=None):
        return [tf.convert_to_tensor(queries, tf.float32)]


def _binary_episodes(count, n=5, dim=12, flips=1, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        p = np.sign(rng.normal(size=(n, dim))).astype(np.float32)
        q = p.copy()
        for row in q:
            row[rng.choice(dim, flips, replace=False)] *= -1
        out.append({"patterns": tf.constant(p), "queries": tf.constant(q), "clamp": tf.zeros_like(p)})
    return out


def test_memory_gain_of_a_perfect_memory_and_of_a_memoryless_model():
    eps = _binary_episodes(4)
    hamming = lambda a, b: np.sum(np.sign(a) != np.sign(b), axis=1)

    # independent computation: the queries of episode i read from the memory of episode i - 1 (0 from the last)
    def recalled(stored, q):
        return stored[np.argmin(((q[:, None] - stored[None]) ** 2).sum(-1), axis=1)]

    cross, own = [], []
    for i, ep in enumerate(eps):
        p, q = ep["patterns"].numpy(), ep["queries"].numpy()
        cross.append(hamming(p, recalled(eps[i - 1]["patterns"].numpy(), q)).mean())
        own.append(hamming(p, recalled(p, q)).mean())
    r = diagnostics.MemoryUseProbe(_Lookup(), "binary_strings").run(eps)
    assert r["memory_pairs"] == 4 and r["cross_mean"] == pytest.approx(np.mean(cross))
    assert r["memory_gain"] == pytest.approx(np.mean(cross) - np.mean(own))
    assert r["memory_gain_p5"] == pytest.approx(np.percentile(np.subtract(cross, own), 5))
    assert r["uses_memory"] and r["energy_auc"] == 1.0  # stored patterns are at distance 0
    seen = []
    r0 = diagnostics.MemoryUseProbe(_Identity(), "binary_strings").run(eps, lambda ep, own: seen.append(own))
    assert len(seen) == 4 and r0["memory_gain"] == 0.0 and not r0["uses_memory"]
    assert r0["cross_mean"] == pytest.approx(1.0)  # one flipped bit, whatever was written
    assert "NOT USING ITS MEMORY" in diagnostics.describe(r0)
    assert "energy_auc" not in r0 and "write_layers" not in r0
    single = diagnostics.MemoryUseProbe(_Lookup(), "binary_strings").run(eps[:1])
    assert single["memory_pairs"] == 0 and np.isnan(single["memory_gain"]) and not single["uses_memory"]


def test_write_specificity_equals_its_definition():
    keras.utils.set_random_seed(1)
    mem = ebmm_tf.EnergyMemory(OneLayerEnergy(dim=12, hidden=4), write_steps=2, read_steps=2, write_rate_init=0.3)
    mem.theta_bar[1].assign(np.full(4, 0.1, np.float32))  # bias non-zero: both tensors count
    eps = _binary_episodes(2)
    r = diagnostics.MemoryUseProbe(mem, "binary_strings").run(eps)
    bar = np.concatenate([v.numpy().ravel() for v in mem.theta_bar])
    deltas = []
    for ep in eps:
        st = mem.write(ep["patterns"])
        deltas.append(np.concatenate([st.weights[n].numpy().ravel() for n in mem.memory_names]) - bar)
    rel = np.mean([np.linalg.norm(d) / np.linalg.norm(bar) for d in deltas])
    cos = deltas[0] @ deltas[1] / (np.linalg.norm(deltas[0]) * np.linalg.norm(deltas[1]))
    (layer,) = r["write_layers"].values()
    assert layer["relative_write"] == pytest.approx(rel, rel=1e-5)
    assert layer["write_cosine"] == pytest.approx(cos, rel=1e-5)
    assert r["write_cosine"] == pytest.approx(cos, rel=1e-5) and 0.0 <= r["energy_auc"] <= 1.0


# ---------------------------------------------------------------------------------------------------- write rates
def test_balanced_write_rates_make_each_first_step_the_set_fraction_of_each_layer():
    keras.utils.set_random_seed(2)
    mem = ebmm_tf.EnergyMemory(tiny_conv(), write_steps=2, read_steps=1, alpha_init=0.7, dtype="float64")
    x = np.random.default_rng(0).uniform(size=(5, 8, 8, 1))
    mem.balance_write_rates(x, energy_fraction=0.05, gradient_fraction=0.02)
    # independent gradients of mean_i E and mean_i ||grad_x E||^2 at theta_bar, per writable tensor
    theta = [tf.convert_to_tensor(v) for v in mem.theta_bar]
    xs = tf.constant(x)
    with tf.GradientTape(persistent=True) as outer:
        outer.watch(theta)
        with tf.GradientTape() as inner:
            inner.watch(xs)
            e = mem.energy_net(xs, memory=dict(zip(mem.memory_names, theta)))
            total = tf.reduce_sum(e)
        gx = inner.gradient(total, xs)
        mean_e = tf.reduce_mean(e)
        gradnorm = tf.reduce_sum(tf.square(gx)) / 5.0
    g_e, g_g = outer.gradient(mean_e, theta), outer.gradient(gradnorm, theta)
    rates = mem.write_rates().numpy()
    assert np.allclose(rates[0], rates[1])  # every write step
    for layer in range(rates.shape[1]):
        idx = [j for j, l in enumerate(mem._layer_of) if l == layer]
        norm = lambda ts: np.sqrt(sum(float(tf.reduce_sum(tf.square(ts[j]))) for j in idx))
        assert rates[0, layer, 0] * norm(g_e) == pytest.approx(0.05 * norm(theta), rel=1e-6)
        assert rates[0, layer, 1] * 0.7 * norm(g_g) == pytest.approx(0.02 * norm(theta), rel=1e-6)
    before = mem.write_rates().numpy()
    mem.scale_write_rates({"energy": 3.0})
    after = mem.write_rates().numpy()
    np.testing.assert_allclose(after[..., 0], 3.0 * before[..., 0], rtol=1e-6)
    np.testing.assert_allclose(after[..., 1:], before[..., 1:], rtol=1e-6)
    with pytest.raises(ValueError, match="unknown write terms"):
        mem.scale_write_rates({"enrgy": 2.0})
    mem.scale_write_rates(2.0)  # a number: both per-pattern terms, the prior's rate kept
    scaled = mem.write_rates().numpy()
    np.testing.assert_allclose(scaled[..., :2], 2.0 * after[..., :2], rtol=1e-6)
    np.testing.assert_allclose(scaled[..., 2], after[..., 2], rtol=1e-6)
    with pytest.raises(TypeError, match="a number or a dict"):
        mem.scale_write_rates([2.0, 2.0])


# ---------------------------------------------------------------------------------------------------- splits
def test_validation_split_is_a_fixed_disjoint_part_of_the_training_split():
    full = data.load_raw("sklearn_digits", "train")
    val = data.load_raw("sklearn_digits", "validation")
    rest = data.load_raw("sklearn_digits", "train_minus_validation")
    assert val.images.shape[0] + rest.images.shape[0] == full.images.shape[0]
    np.testing.assert_array_equal(val.images, full.images[9::10])
    assert val.info["split"] == "validation" and "every 10th" in val.info["description"]
    # whole classes for Omniglot: a held-out character never appears in training
    labels = np.repeat(np.arange(30), 20)
    held = data.registry.validation_mask("omniglot", labels.size, labels)
    assert set(labels[held]) == set(range(9, 30, 10)) and not set(labels[held]) & set(labels[~held])
    with pytest.raises(ValueError, match="split must be one of"):
        data.load_raw("sklearn_digits", "valid")


# ---------------------------------------------------------------------------------------------------- trainer
@pytest.mark.parametrize("learn_theta_bar", [False, True], ids=["fixed", "trained"])
def test_checkpoints_written_before_theta_bar_had_its_own_entries_still_resume(tmp_path, monkeypatch, learn_theta_bar):
    # the layout written before EnergyMemory saved theta_bar itself: the memory without theta_bar entries; a fixed
    # theta_bar under theta_bar/v<i> at the root, a trained one only through the optimizer's variables
    params = [
        "Experiment.energy = @SlotEnergy",
        "SlotEnergy.num_slots = 12",
        "Experiment.memory_from_data = True",
        f"EnergyMemory.learn_theta_bar = {learn_theta_bar}",
    ]
    old = _experiment(tmp_path, *params)
    slots = old.memory.theta_bar[0].numpy()
    old.memory.theta_bar[0].assign(2.0 * slots)
    legacy = tf.train.Checkpoint(**{f"v{i}": v for i, v in enumerate(old.memory.theta_bar)})
    root = {} if learn_theta_bar else {"theta_bar": legacy}
    with monkeypatch.context() as m:
        m.setattr(EnergyMemory, "_trackable_children", keras.Model._trackable_children)
        ckpt = tf.train.Checkpoint(
            memory=old.memory,
            optimizer=old.learner.optimizer,
            **root,
            curriculum=tf.train.Checkpoint(stage=old.stage, stage_start=old.stage_start, streak=old.streak),
        )
        old.learner.iterations.assign(5)
        path = tf.train.CheckpointManager(ckpt, tmp_path / "checkpoints", 3, step_counter=old.learner.iterations).save()
    assert not any("memory/theta_bar" in n for n, _ in tf.train.list_variables(path))
    resumed = _experiment(tmp_path, *params)
    assert resumed.restored_step == 5
    np.testing.assert_array_equal(resumed.memory.theta_bar[0].numpy(), 2.0 * slots)


def _experiment(tmp_path, *params):
    gin.clear_config()
    run_lib.parse_gin([SMOKE], ["Experiment.validation_episodes = 3", *params])
    return trainer.Experiment(workdir=str(tmp_path))


def test_curriculum_moves_on_gain_rescales_rates_and_resumes(tmp_path):
    params = [
        "Experiment.num_patterns = 8",
        "Experiment.curriculum = (4,)",
        "Experiment.curriculum_gain = -1000.0",  # any gain passes: the move happens at the 2nd validation
        "Experiment.curriculum_patience = 2",
        "Experiment.curriculum_below_query = False",  # a 2-step model is not yet better than the query
        "Experiment.num_steps = 6",
        "Experiment.validation_every = 2",
    ]
    exp = _experiment(tmp_path, *params)
    assert exp.current_num_patterns == 4 and tuple(next(exp.train_data)["patterns"].shape) == (4, 128)
    exp.run()
    with open(tmp_path / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    moves = [r["curriculum"] for r in records if "curriculum" in r]
    assert moves == [{"from": 4, "to": 8, "forced": False}]
    move_step = next(r["step"] for r in records if "curriculum" in r)
    assert move_step == 4  # validations at 2 and 4 passed
    vals = {r["step"]: r["validation"] for r in records if "validation" in r}
    assert vals[2]["N"] == 4 and vals[6]["N"] == 8 and "memory_gain" in vals[6] and "energy_auc" in vals[6]
    with open(tmp_path / "best" / "metrics.json") as f:
        assert json.load(f)["N"] == 8  # the best model is one at the final N
    again = _experiment(tmp_path, *params[:-2], "Experiment.num_steps = 8", "Experiment.validation_every = 2")
    assert again.current_num_patterns == 8 and again.restored_step == 6


def test_curriculum_step_limit_and_bad_values(tmp_path):
    exp = _experiment(
        tmp_path,
        "Experiment.num_patterns = 8",
        "Experiment.curriculum = (4,)",
        "Experiment.curriculum_gain = 1000.0",  # never met
        "Experiment.curriculum_max_steps = 2",
        "Experiment.num_steps = 2",
        "Experiment.validation_every = 2",
    )
    exp.run()
    assert exp.current_num_patterns == 8
    with pytest.raises(ValueError, match="increasing"):
        _experiment(tmp_path / "b", "Experiment.num_patterns = 8", "Experiment.curriculum = (8,)")
    with pytest.raises(ValueError, match="image sources"):
        _experiment(tmp_path / "c", "Experiment.mix_random_images = 0.5")


def test_random_image_episodes_warm_up_then_mix(tmp_path):
    gin.clear_config()
    run_lib.parse_gin(
        [os.path.join(ROOT, "gin", "smoke", "omniglot_conv.gin")],
        [
            'Experiment.source = "sklearn_digits"',
            "Experiment.mix_warmup_steps = 2",
            "Experiment.mix_random_images = 0.5",
            "Experiment.validation_episodes = 1",
        ],
    )
    exp = trainer.Experiment(workdir=str(tmp_path))
    plain = iter(data.make_episodes("sklearn_digits", "train_minus_validation", 8, exp.distortion, seed=0))
    kinds = []
    for i in range(40):
        ep, ref = next(exp.train_data), next(plain)
        p = ep["patterns"].numpy()
        assert set(np.unique(p)) <= {0.0, 1.0}
        if np.array_equal(p, ref["patterns"].numpy()):
            np.testing.assert_array_equal(ep["queries"].numpy(), ref["queries"].numpy())
            kinds.append("data")
        else:
            assert abs(p.mean() - 0.5) < 0.1  # random binary images of density 0.5
            kinds.append("random")
    assert kinds[:2] == ["random", "random"]
    assert 8 <= kinds[2:].count("random") <= 30  # about half of the rest
    # the validation episodes are data, never random images
    assert abs(exp.validation_data[0]["patterns"].numpy().mean() - 0.5) > 0.1


def test_warm_start_and_rate_optimizer(tmp_path):
    first = _experiment(tmp_path / "a", "Experiment.num_steps = 2", "Experiment.validation_every = 2")
    first.run()
    saved = str(tmp_path / "a" / "latest" / "memory.keras")
    warm = _experiment(
        tmp_path / "b",
        f'Experiment.init_from = "{saved}"',
        'Experiment.init_write_rate_scale = {"energy": 2.0}',
        "MetaLearner.rate_learning_rate = 0.05",
        "Experiment.num_steps = 1",
    )
    src = keras.saving.load_model(saved, compile=False)
    for a, b in zip(src.weights, warm.memory.weights):
        if "write_rates" not in b.path:
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_allclose(
        warm.memory.write_rates().numpy()[..., 0], 2.0 * src.write_rates().numpy()[..., 0], rtol=1e-5
    )
    assert sum(warm.learner._is_rate) == len(warm.memory.rate_variables()) == 7
    before = [v.numpy().copy() for v in warm.memory.rate_variables()]
    warm.run()
    assert int(warm.learner.rate_optimizer.iterations.numpy()) == 1 == int(warm.learner.iterations.numpy())
    assert any(not np.array_equal(a, v.numpy()) for a, v in zip(before, warm.memory.rate_variables()))
    with pytest.raises(ValueError, match="needs Experiment.init_from"):
        _experiment(tmp_path / "c", 'Experiment.init_write_rate_scale = {"energy": 2.0}')
    with pytest.raises(FileNotFoundError, match="init_from"):
        _experiment(tmp_path / "d", 'Experiment.init_from = "/no/such/memory.keras"')


def test_training_curve_reads_validations_and_curriculum_moves(tmp_path):
    from ebmm_tf import analysis

    records = [
        {"step": 0, "validation": {"mean": 9.0, "query_mean": 10.0, "metric": "hamming", "memory_gain": 0.5}},
        {"step": 1, "loss": 3.0},
        {"step": 5, "validation": {"mean": 6.0, "query_mean": 10.0, "cross_mean": 9.0, "memory_gain": 3.0}},
        {"step": 5, "curriculum": {"from": 4, "to": 8, "forced": False}},
        {"step": 9, "validation": {"mean": 7.0, "query_mean": 10.0, "cross_mean": 8.0, "memory_gain": 1.0}},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    vals, moves = analysis.validation_history(str(tmp_path))
    assert [v["step"] for v in vals] == [0, 5, 9] and moves == [(5, 4, 8)]
    out = analysis.training_curve([str(tmp_path)], str(tmp_path / "curve.png"), labels=["run"])
    assert out == {"run": [(0, 9.0, 0.5), (5, 6.0, 3.0), (9, 7.0, 1.0)]}
    assert (tmp_path / "curve.png").stat().st_size > 1000
    shifted = analysis.training_curve(
        [str(tmp_path)], str(tmp_path / "log.png"), labels=["run"], logy=True, step_offsets=[100]
    )
    assert shifted == {"run": [(100, 9.0, 0.5), (105, 6.0, 3.0), (109, 7.0, 1.0)]}
    with pytest.raises(ValueError, match="step offsets"):
        analysis.training_curve([str(tmp_path)], str(tmp_path / "x.png"), step_offsets=[1, 2])
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        analysis.validation_history(str(tmp_path / "nothing"))


def test_capacity_curve_sorts_by_n_and_needs_the_diagnostics(tmp_path):
    from ebmm_tf import analysis

    paths = []
    for n, own, cross in ((16, 40.0, 50.0), (4, 30.0, 70.0), (64, 45.0, 48.0)):
        r = {"N": n, "mean": own, "p5": own - 2, "p95": own + 2, "query_mean": 128.0, "cross_mean": cross}
        r.update(metric="hamming", memory_gain=cross - own, memory_gain_p5=cross - own - 1)
        r.update(memory_gain_p95=cross - own + 1, energy_auc=0.8)
        paths.append(str(tmp_path / f"eval_n{n}.json"))
        with open(paths[-1], "w") as f:
            json.dump(r, f)
    out = analysis.capacity_curve(paths, str(tmp_path / "n.png"))
    assert [row[0] for row in out] == [4, 16, 64] and [row[5] for row in out] == [40.0, 10.0, 3.0]
    assert (tmp_path / "n.png").stat().st_size > 1000
    with open(paths[0], "w") as f:
        json.dump({"N": 16, "mean": 1.0, "p5": 1.0, "p95": 1.0, "metric": "hamming"}, f)
    with pytest.raises(ValueError, match="memory-use diagnostics"):
        analysis.capacity_curve(paths, str(tmp_path / "m.png"))


def test_validation_loss_is_logged_and_best_follows_select_by(tmp_path):
    exp = _experiment(
        tmp_path, "Experiment.num_steps = 2", "Experiment.validation_every = 2", 'Experiment.select_by = "loss"'
    )
    exp.run()
    with open(tmp_path / "metrics.jsonl") as f:
        vals = [json.loads(line)["validation"] for line in f if '"validation"' in line]
    last = next(v for v in vals if v["step"] == 2)
    # the objective of the validation episodes, recomputed from the final model, is the one logged
    assert np.isfinite(last["loss"]) and exp.validation_loss() == pytest.approx(last["loss"], rel=1e-5)
    # the selection rule on made-up validations that go up and down (N fixed)
    # (step, error, gain, loss)
    made_up = [(2, 5.0, 1.0, 3.0), (4, 4.0, 3.0, 9.0), (6, 6.0, 2.0, 1.0), (8, 4.5, 0.5, 2.0)]
    expected = {"error": 4, "memory_gain": 4, "loss": 6}
    for select_by, step in expected.items():
        exp.select_by, exp.best = select_by, None
        for s, err, gain, loss in made_up:
            exp._maybe_save_best(s, {"mean": err, "memory_gain": gain, "loss": loss, "N": exp.current_num_patterns})
        assert exp.best["step"] == step, select_by
        with open(tmp_path / "best" / "metrics.json") as f:
            assert json.load(f)["step"] == step
    with pytest.raises(ValueError, match="select_by must be"):
        _experiment(tmp_path / "bad", 'Experiment.select_by = "elbo"')


def test_memory_from_data_sets_the_starting_slots_and_learn_theta_bar_false_keeps_them(tmp_path):
    params = [
        "Experiment.energy = @SlotEnergy",
        "SlotEnergy.num_slots = 12",
        "SlotEnergy.slot_init_std = 0.2",
        "Experiment.memory_from_data = True",
        "EnergyMemory.learn_theta_bar = False",
        "Experiment.num_steps = 2",
        "Experiment.validation_every = 0",
    ]
    exp = _experiment(tmp_path, *params)
    assert exp.memory.energy_net.starting_memory_size == 12  # one training string per slot
    slots = exp.memory.theta_bar[0].numpy()  # [128, 12]
    # one training string per slot: +-1 bits scaled to the norm 0.2 * sqrt(128), so every entry is +-0.2
    np.testing.assert_allclose(np.abs(slots), 0.2, rtol=1e-5)
    assert len({tuple(np.sign(c)) for c in slots.T}) == 12
    assert all(v is not exp.memory.theta_bar[0] for v in exp.memory.trainable_variables)
    exp.run()
    np.testing.assert_array_equal(exp.memory.theta_bar[0].numpy(), slots)  # not meta-trained
    # a resumed run keeps its trained state, not a fresh draw
    again = _experiment(tmp_path, *params)
    np.testing.assert_array_equal(again.memory.theta_bar[0].numpy(), slots)
    # the resumed value comes from the checkpoint, not from drawing the same slots again: move theta_bar, save
    again.memory.theta_bar[0].assign(2.0 * slots)
    again.manager.save(checkpoint_number=3)
    np.testing.assert_array_equal(_experiment(tmp_path, *params).memory.theta_bar[0].numpy(), 2.0 * slots)
    with pytest.raises(ValueError, match="starting_memory"):
        _experiment(tmp_path / "rnn", "Experiment.memory_from_data = True")
    with pytest.raises(ValueError, match="use one"):
        _experiment(tmp_path / "both", *params, 'Experiment.init_from = "x.keras"')
    # a warm start pairs theta_bar with theta_bar whether or not either side trains it (Keras lists trainable
    # weights first, so the two models' weight lists are in different orders)
    exp.memory.save(tmp_path / "fixed.keras")
    learned = [p for p in params if "learn_theta_bar" not in p and "memory_from_data" not in p]
    warm = _experiment(tmp_path / "warm", *learned, f'Experiment.init_from = "{tmp_path / "fixed.keras"}"')
    assert warm.memory.learn_theta_bar
    np.testing.assert_array_equal(warm.memory.theta_bar[0].numpy(), slots)
    np.testing.assert_array_equal(warm.memory.write_rates_raw.numpy(), exp.memory.write_rates_raw.numpy())
    with pytest.raises(ValueError, match="theta_bar has"):
        exp.memory.set_starting_memory({"slots/kernel": np.zeros((3, 3))})
    with pytest.raises(KeyError, match="unknown memory names"):
        exp.memory.set_starting_memory({"nope": np.zeros((3, 3))})
    with pytest.raises(ValueError, match="at least num_slots"):
        exp.memory.energy_net.starting_memory(np.ones((5, 128), "float32"))
