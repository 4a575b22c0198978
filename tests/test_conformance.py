"""Conformance: every energy network and every learned baseline, through the same checks.

``REGISTRY`` holds a tiny instance of each; ``test_the_registry_covers_every_model`` fails when a new energy
network or baseline class is added to the package without an entry here. Every entry is checked for the memory
contract (``ebmm_tf.contract``), a ``.keras`` round trip and ``tf.function`` == eager. The EBMM entries are also
checked for recompute == plain and nested == unrolled meta-gradients. Every entry is exported and its signatures
run in a fresh process without ebmm_tf: ``write_and_recall`` (and, where the memory writes a state, ``write``
then ``recall``) give what the in-process model gives.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import ebmm_tf
from ebmm_tf import contract, energies
from ebmm_tf.baselines import base as baselines_base
from ebmm_tf.baselines.autoencoder import DenoisingAutoEncoder
from ebmm_tf.baselines.kanerva import DynamicKanervaMachine
from ebmm_tf.baselines.memnet import MemoryNetwork
from ebmm_tf.baselines.networks import ConvAutoEncoder
from ebmm_tf.baselines.recurrent import MANN, DifferentiablePlasticity, LSTMMemory, SequentialBaseline
from ebmm_tf.baselines.vae import VariationalAutoEncoder
from tests._tiny import episode, tiny_conv, tiny_fc, tiny_lower, tiny_rnn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _ebmm(make, data_range, dtype="float64", **kw):
    keras.utils.set_random_seed(5)
    return ebmm_tf.EnergyMemory(
        make(dtype=dtype),
        write_steps=2,
        read_steps=2,
        data_range=data_range,
        write_rate_init=0.05,
        read_step_init=0.1,
        dtype=dtype,
        **kw,
    )


def _tiny_imagenet(dtype="float64"):
    return energies.imagenet_conv_energy(
        pattern_shape=(8, 8, 3), channels=2, hidden_size=3, dynamic_size=1, head_size=4, hops=2, dtype=dtype
    )


def _tiny_slots(dtype="float64"):
    return energies.SlotEnergy(pattern_shape=(8, 8, 1), num_slots=3, input_center=0.5, dtype=dtype)


def _small_conv_autoencoder():
    return ConvAutoEncoder((8, 8, 1), channels=2, encoding_size=8)


# name -> (factory of the memory, pattern shape, data range, uses a clamp mask)
REGISTRY = {
    "GatedRNNEnergy": (lambda **kw: _ebmm(tiny_rnn, (-1.0, 1.0), **kw), (6,), (-1.0, 1.0), True),
    "ResNetConvEnergy": (lambda **kw: _ebmm(tiny_conv, (0.0, 1.0), **kw), (8, 8, 1), (0.0, 1.0), False),
    "SlotEnergy": (lambda **kw: _ebmm(_tiny_slots, (0.0, 1.0), **kw), (8, 8, 1), (0.0, 1.0), False),
    "ResNetFCEnergy": (lambda **kw: _ebmm(tiny_fc, (0.0, 1.0), **kw), (8, 8, 1), (0.0, 1.0), False),
    "ResNetLowerConvEnergy": (lambda **kw: _ebmm(tiny_lower, (0.0, 1.0), **kw), (8, 8, 1), (0.0, 1.0), False),
    "imagenet_conv_energy": (lambda **kw: _ebmm(_tiny_imagenet, (0.0, 1.0), **kw), (8, 8, 3), (0.0, 1.0), False),
    "DenoisingAutoEncoder": (lambda: DenoisingAutoEncoder(_small_conv_autoencoder()), (8, 8, 1), (0.0, 1.0), False),
    "MemoryNetwork": (
        lambda: MemoryNetwork(_small_conv_autoencoder(), num_slots=4, slot_size=6, hops=2),
        (8, 8, 1),
        (0.0, 1.0),
        False,
    ),
    "DynamicKanervaMachine": (
        lambda: DynamicKanervaMachine(_small_conv_autoencoder(), num_slots=4, read_steps=2, likelihood="gaussian"),
        (8, 8, 1),
        (0.0, 1.0),
        False,
    ),
    # Gaussian likelihood (also the Kanerva Machine's above): its read has no threshold, so graph and eager agree
    # to rounding (tests/test_image_baselines.py checks the Bernoulli read against a hand computation)
    "VariationalAutoEncoder": (
        lambda: VariationalAutoEncoder(_small_conv_autoencoder(), likelihood="gaussian", read_steps=3),
        (8, 8, 1),
        (0.0, 1.0),
        False,
    ),
    "LSTMMemory": (lambda: LSTMMemory((6,), hidden_size=5, read_steps=2), (6,), (-1.0, 1.0), True),
    "MANN": (lambda: MANN((6,), num_slots=3, word_size=4, controller_size=5), (6,), (-1.0, 1.0), True),
    "DifferentiablePlasticity": (lambda: DifferentiablePlasticity((6,), read_steps=2), (6,), (-1.0, 1.0), True),
}
EBMM = [k for k in REGISTRY if k[0].isupper() and k.endswith("Energy")] + ["imagenet_conv_energy"]
ALL = sorted(REGISTRY)
WRITE_NOTHING = ("DenoisingAutoEncoder", "VariationalAutoEncoder")  # non-memory baselines (A.3)
# The conv-family meta-gradients take ~30-50 s each to compile on 2 cores: in the default suite the dense network
# and (tests/test_benchmarks.py, test_recompute_keeps_the_meta_gradient) the C.3 conv network; the others, the FC
# network included, under -m slow (`make test-slow`).
_SLOW = pytest.mark.slow
META = [n if n == "GatedRNNEnergy" else pytest.param(n, marks=_SLOW) for n in EBMM]
# Exports: tests/test_export.py covers the dense and C.3 networks in the default suite, and this file the baselines;
# the other energy networks (~40 s in a fresh process) under -m slow.
BASELINES = [k for k in ALL if k not in EBMM]
EXPORTS = [
    pytest.param(("ResNetFCEnergy", "ResNetLowerConvEnergy"), id="fc_lower", marks=_SLOW),
    pytest.param(tuple(BASELINES), id="baselines"),
    pytest.param(tuple(EBMM), id="ebmm_all", marks=_SLOW),
]


def _subclasses(cls):
    out = set()
    for sub in cls.__subclasses__():
        out.add(sub)
        out |= _subclasses(sub)
    return out


def test_the_registry_covers_every_model():
    """Every public energy network and every concrete learned baseline of the package has an entry."""
    networks = {c.__name__ for c in _subclasses(energies.EnergyNetwork) if c.__module__ == "ebmm_tf.energies"}
    assert networks <= set(REGISTRY), f"energy networks without a conformance entry: {networks - set(REGISTRY)}"
    assert "imagenet_conv_energy" in REGISTRY  # a factory of ResNetConvEnergy with its own configuration
    abstract = {baselines_base.BaselineMemory, SequentialBaseline}
    baselines = {
        c.__name__
        for c in _subclasses(baselines_base.BaselineMemory) | _subclasses(SequentialBaseline)
        if c not in abstract and c.__module__.startswith("ebmm_tf.baselines")
    }
    assert baselines <= set(REGISTRY), f"baselines without a conformance entry: {baselines - set(REGISTRY)}"
    assert len(baselines) == 7 and len(networks) == 5


def _inputs(name, n=3, seed=1):
    _, shape, data_range, clamp = REGISTRY[name]
    dtype = np.float64 if name in EBMM else np.float32
    ep = episode(shape, n, data_range, seed=seed, dtype=dtype, clamp=clamp)
    return ep["patterns"], ep["queries"], ep.get("clamp")


def _build(name, **kw):
    keras.utils.set_random_seed(5)
    return REGISTRY[name][0](**kw)


@pytest.mark.parametrize("name", ALL)
def test_the_memory_contract(name):
    model = _build(name)
    assert isinstance(model, contract.AssociativeMemory)
    contract.check_memory(model)
    assert contract.has_energy(model) == (name in EBMM)
    assert isinstance(model, contract.LearnedRates) == (name in EBMM)
    assert tuple(model.pattern_shape) == REGISTRY[name][1]
    assert tuple(model.data_range) == REGISTRY[name][2]
    patterns, queries, mask = _inputs(name)
    state = model.write(patterns)
    assert isinstance(state, contract.MemoryState)
    iterates = model.read(state, queries, mask)
    assert isinstance(iterates, list) and iterates
    recalled = model.recall(state, queries, mask).numpy()
    np.testing.assert_array_equal(recalled, iterates[-1].numpy())
    assert recalled.shape == queries.shape
    lo, hi = model.data_range
    assert np.all(recalled >= lo - 1e-6) and np.all(recalled <= hi + 1e-6)
    if mask is not None:  # clamped dimensions keep the query's value
        np.testing.assert_allclose(recalled[mask == 1], queries[mask == 1], rtol=1e-6)
    loss, per_step = model.reconstruction_loss(patterns, iterates)
    assert per_step.shape == (len(iterates),)
    np.testing.assert_allclose(float(loss), float(np.sum(per_step)), rtol=1e-6)
    assert (model.memory_size() == 0) == (name in WRITE_NOTHING)  # the autoencoders store nothing
    if name in EBMM:  # the written state is the writable weights
        assert model.memory_size() == state.memory_size()
    with pytest.raises(TypeError, match="not an associative memory"):
        contract.check_memory(object())


@pytest.mark.parametrize("name", ALL)
def test_keras_round_trip(name, tmp_path):
    model = _build(name)
    if name in EBMM:  # move every variable off its initial value, so that the file must carry them
        rng = np.random.default_rng(0)
        for v in model.variables:
            v.assign(v.numpy() + rng.normal(scale=0.01, size=v.shape))
    patterns, queries, mask = _inputs(name)
    before = model.recall(model.write(patterns), queries, mask).numpy()
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, compile=False)
    assert type(loaded) is type(model)
    after = loaded.recall(loaded.write(patterns), queries, mask).numpy()
    np.testing.assert_allclose(after, before, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ALL)
def test_tf_function_equals_eager(name):
    model = _build(name)
    patterns, queries, mask = _inputs(name)
    eager = model.recall(model.write(patterns), queries, mask).numpy()
    compiled = tf.function(lambda p, q, m: model.recall(model.write(p), q, m), autograph=False)
    got = compiled(patterns, queries, mask).numpy()
    tol = 1e-10 if name in EBMM else 1e-5
    np.testing.assert_allclose(got, eager, rtol=tol, atol=tol)


def _episode_tensors(name):
    patterns, queries, mask = _inputs(name)
    ep = {"patterns": tf.constant(patterns), "queries": tf.constant(queries)}
    if mask is not None:
        ep["clamp"] = tf.constant(mask)
    return ep


def _learner_gradients(memory, ep, **kw):
    grads, metrics = ebmm_tf.MetaLearner(memory, **kw).compute_gradients(ep)
    return [metrics["loss"].numpy()] + [g.numpy() for g in grads]


@pytest.mark.parametrize("name", META)
def test_meta_gradient_recompute_and_nested_equal_the_unrolled_graph(name):
    ep = _episode_tensors(name)
    unrolled = _learner_gradients(_build(name), ep, nested_steps=False)
    nested = _learner_gradients(_build(name), ep)
    recomputed = _learner_gradients(_build(name, recompute=True), ep, nested_steps=False)
    assert len(unrolled) == len(nested) == len(recomputed) > 1
    for a, b, c in zip(unrolled, nested, recomputed):
        np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(c, a, rtol=1e-10, atol=1e-13)
    assert any(np.any(g != 0) for g in unrolled[1:])


_FRESH = r"""
import json, sys
import numpy as np
import tensorflow as tf
out = {}
for name, export_dir, inputs in json.load(open(sys.argv[1])):
    loaded = tf.saved_model.load(export_dir)
    feed = {k: tf.constant(np.asarray(v, np.float32)) for k, v in inputs.items()}
    clamped = "_clamped" if "mask" in feed else ""
    result = {"write_and_recall": loaded.signatures["write_and_recall" + clamped](**feed)["retrieved"].numpy().tolist()}
    if "write" in loaded.signatures:
        state = loaded.signatures["write"](patterns=feed["patterns"])
        state = {k.replace("/", "_"): v for k, v in state.items()}
        extra = {"mask": feed["mask"]} if clamped else {}
        recalled = loaded.signatures["recall" + clamped](queries=feed["queries"], **state, **extra)
        result["recall"] = recalled["retrieved"].numpy().tolist()
    result["signatures"] = sorted(loaded.signatures)
    out[name] = result
assert "ebmm_tf" not in sys.modules
json.dump(out, open(sys.argv[2], "w"))
"""


@pytest.mark.parametrize("names", EXPORTS)
def test_exported_signatures_match_in_a_fresh_process(names, tmp_path):
    """Each memory, exported in float32, recalls in a fresh process (no ebmm_tf) as it does here."""
    from ebmm_tf.export import export_memory
    from ebmm_tf.serving import signature_names

    jobs, expected, signatures = [], {}, {}
    for name in names:
        model = _build(name, dtype="float32") if name in EBMM else _build(name)
        signatures[name] = sorted(set(signature_names(model)) | {"serving_default"})
        patterns, queries, mask = (None if a is None else a.astype(np.float32) for a in _inputs(name))
        expected[name] = model.recall(model.write(patterns), queries, mask).numpy()
        export_dir = export_memory(model, str(tmp_path / name / "1"), keras_copy=False)
        inputs = {"patterns": patterns.tolist(), "queries": queries.tolist()}
        if mask is not None:
            inputs["mask"] = mask.tolist()
        jobs.append((name, export_dir, inputs))
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    (tmp_path / "fresh.py").write_text(_FRESH)
    proc = subprocess.run(
        [sys.executable, str(tmp_path / "fresh.py"), str(tmp_path / "jobs.json"), str(tmp_path / "out.json")],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=str(tmp_path),
        env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads((tmp_path / "out.json").read_text())
    assert sorted(got) == sorted(names)
    for name in names:
        assert got[name]["signatures"] == signatures[name], name
        assert ("recall" in got[name]) == (name not in WRITE_NOTHING), name  # the autoencoders write nothing
        for key in ("write_and_recall", "recall"):
            if key in got[name]:
                np.testing.assert_allclose(
                    np.asarray(got[name][key]), expected[name], rtol=1e-5, atol=1e-6, err_msg=f"{name} {key}"
                )
