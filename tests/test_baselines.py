"""Learned baselines (ebmm_tf.baselines: denoising autoencoder, Memory Networks) and the trainer's
``Experiment.model`` hook: shapes, memory sizes, meta-training, serialization, gin files, eval.json."""

import glob
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from ebmm_tf import evaluate, trainer
from ebmm_tf import run as run_lib
from ebmm_tf.baselines.autoencoder import DenoisingAutoEncoder, denoising_autoencoder
from ebmm_tf.baselines.kanerva import DynamicKanervaMachine
from ebmm_tf.baselines.memnet import MemoryNetwork, memory_network
from ebmm_tf.baselines.networks import ConvAutoEncoder, DenseAutoEncoder
from ebmm_tf.baselines.recurrent import SequentialBaseline
from ebmm_tf.baselines.vae import VariationalAutoEncoder
from ebmm_tf.meta import MetaLearner, meta_loss

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = os.environ.get("EBMM_DATA_DIR", os.path.join(os.path.dirname(ROOT), "shared", "data"))
# the Deep Image Prior files configure a per-image fit, not a training run (tests/test_image_baselines.py)
BASELINE_GIN = sorted(p for p in glob.glob(os.path.join(ROOT, "gin", "baselines", "*.gin")) if "_dip" not in p)


def _images(n, shape=(16, 16, 1), seed=0, block=8):
    rng = np.random.default_rng(seed)
    x = (rng.random((n,) + shape) < 0.3).astype(np.float32)
    q = x.copy()
    q[:, :block, :block] = (rng.random((n, block, block, shape[-1])) < 0.5).astype(np.float32)
    return {"patterns": x, "queries": q}


def _small_conv(shape=(16, 16, 1)):
    return ConvAutoEncoder(shape, channels=4, encoding_size=32)


# ====================================================================== shapes and memory sizes
@pytest.mark.parametrize("shape", [(32, 32, 1), (28, 28, 1), (32, 32, 3), (64, 64, 3)])
def test_conv_autoencoder_is_the_c2_encoder_with_a_transposed_decoder(shape):
    net = ConvAutoEncoder(shape, channels=2, encoding_size=16)
    x = np.random.default_rng(0).random((3,) + shape).astype(np.float32)
    code = net.encode(x)
    assert code.shape == (3, 16)
    np.testing.assert_allclose(np.mean(code.numpy(), -1), 0.0, atol=1e-4)  # ends with LayerNorm
    assert net.decode(code).shape == (3,) + shape
    assert [b.channels for b in net.encoder_blocks] == [2, 4, 6]  # C.2: channels x (1, 2, 3), stride 2
    assert [b.channels for b in net.decoder_blocks] == [4, 2, 2]
    h, w = shape[:2]
    for _ in range(3):  # three stride-2 'SAME' blocks
        h, w = -(-h // 2), -(-w // 2)
    assert net.encoder_linear.in_features == h * w * 6


def test_dense_autoencoder_shapes():
    net = DenseAutoEncoder((128,), hidden_size=32, encoding_size=16)
    x = np.sign(np.random.default_rng(0).normal(size=(5, 128))).astype(np.float32)
    assert net.encode(x).shape == (5, 16) and net(x).shape == (5, 128)
    with pytest.raises(ValueError, match="vector patterns"):
        DenseAutoEncoder((8, 8, 1))


def test_denoising_autoencoder_has_no_memory_and_one_iterate_in_range():
    model = DenoisingAutoEncoder(_small_conv(), data_range=(0.0, 1.0))
    ep = _images(4)
    state = model.write(ep["patterns"])
    assert state.weights == {} and model.memory_size() == 0 and state.memory_size() == 0
    iterates = model.read(state, ep["queries"])
    assert len(iterates) == 1 and iterates[0].shape == (4, 16, 16, 1)
    assert 0.0 <= float(tf.reduce_min(iterates[0])) and float(tf.reduce_max(iterates[0])) <= 1.0
    # a non-memory model: the output does not depend on what was written
    other = model.write(_images(4, seed=1)["patterns"])
    np.testing.assert_array_equal(model.recall(other, ep["queries"]).numpy(), iterates[0].numpy())
    loss, per_step = model.reconstruction_loss(ep["patterns"], iterates)
    expected = np.mean(np.sum(np.square(ep["patterns"] - iterates[0].numpy()).reshape(4, -1), -1))
    assert float(loss) == pytest.approx(expected, rel=1e-5) and per_step.shape == (1,)  # loss (2)
    with pytest.raises(ValueError, match="shape"):
        model.write(np.zeros((2, 8, 8, 1), np.float32))


def test_memory_network_slots_attention_and_memory_size():
    model = MemoryNetwork(_small_conv(), num_slots=6, slot_size=10, hops=2)
    assert model.memory_size() == 6 * 10
    ep = _images(6)
    state = model.write(ep["patterns"])
    assert state.weights["slots"].shape == (6, 10) and state.memory_size() == model.memory_size()
    attention = model.attention(state, model.network.encode(ep["queries"])).numpy()
    assert attention.shape == (6, 6)
    np.testing.assert_allclose(attention.sum(-1), 1.0, rtol=1e-5)
    iterates = model.read(state, ep["queries"])
    assert len(iterates) == 2 and all(it.shape == (6, 16, 16, 1) for it in iterates)  # one iterate per hop
    # fewer patterns than slots are fine, more are not
    assert model.write(ep["patterns"][:3]).weights["slots"].shape == (3, 10)
    with pytest.raises(ValueError, match="do not fit"):
        model.write(_images(7)["patterns"])
    # the read depends on what was written
    other = model.write(_images(6, seed=3)["patterns"])
    assert not np.allclose(model.recall(other, ep["queries"]).numpy(), iterates[-1].numpy())


def test_factories_budget_and_clamping():
    net = lambda pattern_shape: DenseAutoEncoder(pattern_shape, hidden_size=16, encoding_size=8)
    model = memory_network(
        None, pattern_shape=(128,), data_range=(-1.0, 1.0), network=net, num_slots=64, memory_size=8256
    )
    assert model.slot_size == 129 and model.memory_size() == 8256  # Table 1's budget: 128 * 127 / 2 + 128
    with pytest.raises(ValueError, match="exactly one"):
        memory_network(None, pattern_shape=(128,), network=net, num_slots=4)
    with pytest.raises(ValueError, match="no energy network"):
        denoising_autoencoder(object(), pattern_shape=(128,), network=net)
    rng = np.random.default_rng(0)
    x = np.sign(rng.normal(size=(4, 128))).astype(np.float32)
    q = np.sign(rng.normal(size=(4, 128))).astype(np.float32)
    mask = (rng.random((4, 128)) < 0.5).astype(np.float32)
    for m in (model, denoising_autoencoder(None, pattern_shape=(128,), data_range=(-1.0, 1.0), network=net)):
        out = m.recall(m.write(x), q, mask).numpy()
        np.testing.assert_array_equal(out[mask > 0], q[mask > 0])  # known bits clamped (A.2)
        assert np.all(np.abs(out) <= 1.0)


# ====================================================================== meta-training
@pytest.mark.parametrize("kind", ["dae", "memnet"])
def test_a_few_meta_training_steps_reduce_the_loss_on_a_fixed_episode(kind):
    keras.utils.set_random_seed(0)
    if kind == "dae":
        model = DenoisingAutoEncoder(_small_conv())
    else:
        model = MemoryNetwork(_small_conv(), num_slots=8, slot_size=16)
    ep = _images(8)
    learner = MetaLearner(model, learning_rate=3e-3, clip_norm=10.0)  # raises if a variable gets no gradient
    before = float(meta_loss(model, ep)[0])
    for _ in range(15):
        learner.train_step(ep)
    after = float(meta_loss(model, ep)[0])
    assert after < 0.8 * before, (before, after)


def test_saved_baselines_load_and_recall_identically(tmp_path):
    ep = _images(4)
    for model in (DenoisingAutoEncoder(_small_conv()), MemoryNetwork(_small_conv(), num_slots=4, slot_size=8, hops=2)):
        path = str(tmp_path / f"{model.name}.keras")
        model.save(path)
        loaded = keras.saving.load_model(path, compile=False)
        assert type(loaded) is type(model) and loaded.memory_size() == model.memory_size()
        np.testing.assert_allclose(
            loaded.recall(loaded.write(ep["patterns"]), ep["queries"]).numpy(),
            model.recall(model.write(ep["patterns"]), ep["queries"]).numpy(),
            atol=1e-6,
        )


# ====================================================================== gin files and the trainer hook
def _needs_data(path):
    return "base/binary_strings.gin" not in open(path).read()


@pytest.mark.parametrize("path", BASELINE_GIN, ids=[os.path.relpath(p, ROOT) for p in BASELINE_GIN])
def test_every_baseline_gin_file_parses_strictly_and_builds(path, tmp_path):
    if _needs_data(path) and not os.path.isdir(DATA_DIR):
        pytest.skip(f"dataset folder {DATA_DIR} is absent")
    header = open(path).read().split("\n\n")[0]
    for field in ("Reproduces:", "Command:", "Expect:", "Budget:") if "smoke" not in path else ():
        assert field in header, f"{path}: the header must state '{field}'"
    run_lib.parse_gin([path], ["Experiment.validation_episodes = 1", "Experiment.progress = False"])
    exp = trainer.Experiment(workdir=str(tmp_path), data_dir=DATA_DIR)
    kinds = (DenoisingAutoEncoder, MemoryNetwork, SequentialBaseline, VariationalAutoEncoder, DynamicKanervaMachine)
    assert isinstance(exp.memory, kinds)
    if isinstance(exp.memory, SequentialBaseline):  # Table 1's recurrent baselines: within its budget
        assert 0 < exp.memory.memory_size() <= 8256
    elif isinstance(exp.memory, DynamicKanervaMachine):  # written mean and row covariance
        assert exp.memory.memory_size() == exp.memory.num_slots * (exp.memory.code_size + exp.memory.num_slots)
    elif isinstance(exp.memory, MemoryNetwork):
        assert exp.memory.memory_size() == exp.memory.num_slots * exp.memory.slot_size > 0
        assert exp.memory.num_slots >= exp.num_patterns
    else:
        assert exp.memory.memory_size() == 0
    episode = next(exp.train_data)
    assert tuple(episode["patterns"].shape) == (exp.num_patterns,) + exp.memory.pattern_shape
    assert "Experiment.model = @" in (tmp_path / "operative_config.gin").read_text()


def test_experiment_needs_an_energy_or_a_model(tmp_path):
    run_lib.parse_gin([os.path.join(ROOT, "gin", "smoke", "binary_strings.gin")], ["Experiment.energy = None"])
    with pytest.raises(ValueError, match="Experiment.energy is required"):
        trainer.Experiment(workdir=str(tmp_path))


def test_smoke_memory_network_trains_and_evaluates_into_eval_json(tmp_path):
    workdir = str(tmp_path / "memnet")
    run_lib.parse_gin([os.path.join(ROOT, "gin", "baselines", "smoke_binary_strings_memnet.gin")], [])
    result = trainer.Experiment(workdir=workdir).run()
    assert result["step"] == 12 and result["best"] is not None
    r = evaluate.evaluate(workdir, num_batches=3, progress=False, figures=True)
    with open(os.path.join(workdir, "eval.json")) as f:
        assert json.load(f)["mean"] == r["mean"]
    assert r["model"] == r["model_family"] == "MemoryNetwork" and r["memory_size"] == 4 * 32
    assert r["metric"] == "hamming" and r["num_patterns"] == 3 * 4 and r["p5"] <= r["mean"] <= r["p95"]
    assert os.path.exists(r["figures"]["retrieval"]) and "energy" not in r["figures"]  # no energy to plot
