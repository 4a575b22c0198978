"""The benchmark harness runs and writes valid JSON; the performance options of the core keep the meta-gradient.

Benchmarks are not tests: nothing here asserts a time. The numbers live in docs/performance.md.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from _tiny import episode, tiny_conv, tiny_rnn

import ebmm_tf
from ebmm_tf.layers import conv2d_same

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------------------------------------------- harness
def test_smoke_benchmark_runs_and_writes_valid_json(tmp_path):
    out = tmp_path / "bench.json"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--smoke", f"--output={out}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["level"] == "smoke" and report["machine"]["cpus"] >= 1
    train = [r for r in report["results"] if r["job"]["kind"] == "train"]
    assert {r["job"]["mode"] for r in train} >= {"function", "eager"}
    for r in train:
        assert "error" not in r, r
        assert r["step"]["median_s"] > 0 and r["rss_peak_mb"] > 0 and r["peak_gflops"] > 0
        assert r["step_faults"] >= 0 and r["step_user_s"] > 0
        assert r["allocator"] == ("pooled" if r["job"]["section"] == "modes" else r["job"]["allocator"])
    function = next(r for r in train if r["job"]["mode"] == "function")
    assert function["flops"] > 0 and function["trace_s"] > 0 and 0 < function["peak_fraction"]
    assert report["ratios"]["modes:smoke/binary_strings"]["function_speedup_over_eager"] > 0
    allocator = report["ratios"]["allocator:smoke/binary_strings"]  # one fresh process per allocator
    assert {r["allocator"] for r in train if r["job"]["section"] == "allocator"} == {"system", "pooled"}
    assert allocator["pooled_over_system_step"] > 0 and allocator["system"]["step_faults"] >= 0
    assert "function" in proc.stdout and "wrote" in proc.stdout and "allocator: pooled step" in proc.stdout


def test_worker_applies_the_graph_optimiser_options():
    job = {"kind": "peak", "peak_size": 64, "peak_repeats": 1, "grappler": {"disable_meta_optimizer": True}}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.worker", json.dumps(job)],
        cwd=REPO,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1].split(" ", 1)[1])
    assert result["grappler"]["disable_meta_optimizer"] is True
    assert result["best_gflops"] > 0


def test_a_variants_graph_optimiser_options_hold_only_around_its_own_calls():
    from benchmarks.worker import _grappler

    before = tf.config.optimizer.get_experimental_options()
    assert before.get("remapping") is not False
    with _grappler({"constant_folding": False}, {"remapping": False, "constant_folding": True}):
        inside = tf.config.optimizer.get_experimental_options()
        assert inside["remapping"] is False and inside["constant_folding"] is True
    after = tf.config.optimizer.get_experimental_options()
    # back to the job's value where the job sets one, to TensorFlow's default elsewhere
    assert after.get("constant_folding") is False and after.get("remapping") == before.get("remapping")
    tf.config.optimizer.set_experimental_options({"constant_folding": None})
    assert tf.config.optimizer.get_experimental_options() == before


def _worker_with_optimiser_log(job):
    """Runs a worker job with Grappler's per-function log on; returns (result, number of graphs it optimised)."""
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.worker", json.dumps(job)],
        cwd=REPO,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="0", TF_CPP_VMODULE="meta_optimizer=1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1].split(" ", 1)[1])
    return result, proc.stderr.count("Starting optimization for grappler item")


def test_worker_times_variants_with_their_own_graph_optimiser_options():
    def job(second):
        return {
            "kind": "train",
            "config": "smoke/binary_strings",
            "variants": [{"label": "default"}, second],
            "rounds": 2,
            "peak_size": 64,
            "peak_repeats": 1,
        }

    result, optimised_off = _worker_with_optimiser_log(
        job({"label": "off", "grappler": {"disable_meta_optimizer": True}})
    )
    default, off = result["variants"]
    assert "grappler" not in default and off["grappler"]["disable_meta_optimizer"] is True
    assert off["job"]["variant_grappler"] == {"disable_meta_optimizer": True}
    assert len(default["step"]["times_s"]) == len(off["step"]["times_s"]) == 2
    assert "grappler" not in result  # the job itself set nothing process-wide
    # the option reached the second variant's graphs only: with two default variants, Grappler optimises more graphs
    _, optimised_both = _worker_with_optimiser_log(job({"label": "default 2"}))
    assert 0 < optimised_off < optimised_both


# ---------------------------------------------------------------------------------------------------- core options
def _meta_gradients(mem, ep, compiled):
    def grads():
        with tf.GradientTape() as tape:
            loss = ebmm_tf.meta_loss(mem, ep)[0]
        return [loss] + tape.gradient(loss, mem.trainable_variables)

    fn = tf.function(grads, autograph=False) if compiled else grads
    return [g.numpy() for g in fn()]


def _memory(make, data_range, **kw):
    keras.utils.set_random_seed(2)
    return ebmm_tf.EnergyMemory(
        make(),
        write_steps=2,
        read_steps=3,
        data_range=data_range,
        write_rate_init=0.05,
        read_step_init=0.05,
        dtype="float64",
        **kw,
    )


CASES = pytest.mark.parametrize(
    "make,shape,data_range,clamp",
    [(tiny_rnn, (6,), (-1.0, 1.0), True), (tiny_conv, (8, 8, 1), (0.0, 1.0), False)],
    ids=["dense_clamped", "conv"],
)
# The compiled-options check on the conv network takes about a minute (every option combination compiled): it
# runs under -m slow; the dense case stays in the default suite, and the conv network's meta-gradient there is
# checked by test_recompute_keeps_the_meta_gradient (plain vs recomputed) and the finite-difference tests.
OPTION_CASES = pytest.mark.parametrize(
    "make,shape,data_range,clamp",
    [
        (tiny_rnn, (6,), (-1.0, 1.0), True),
        pytest.param(tiny_conv, (8, 8, 1), (0.0, 1.0), False, marks=pytest.mark.slow),
    ],
    ids=["dense_clamped", "conv"],
)


def _episode(shape, data_range, clamp):
    return {k: tf.constant(v) for k, v in episode(shape, 3, data_range, seed=3, clamp=clamp).items()}


@CASES
def test_recompute_keeps_the_meta_gradient(make, shape, data_range, clamp):
    ep = _episode(shape, data_range, clamp)
    plain = _meta_gradients(_memory(make, data_range), ep, compiled=False)
    recomputed = _meta_gradients(_memory(make, data_range, recompute=True), ep, compiled=False)
    for a, b in zip(plain, recomputed):
        np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-13)


@OPTION_CASES
def test_compiled_meta_step_options_keep_the_meta_gradient(make, shape, data_range, clamp):
    """MetaLearner's default (write/read steps as nested functions) and recompute against the unrolled graph."""
    ep = _episode(shape, data_range, clamp)

    def learner_gradients(memory, **kw):
        grads, metrics = ebmm_tf.MetaLearner(memory, **kw).compute_gradients(ep)
        return [metrics["loss"].numpy()] + [g.numpy() for g in grads]

    unrolled = learner_gradients(_memory(make, data_range), nested_steps=False)
    nested = learner_gradients(_memory(make, data_range))
    recomputed = learner_gradients(_memory(make, data_range, recompute=True))
    for a, b, c in zip(unrolled, nested, recomputed):
        np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(c, a, rtol=1e-10, atol=1e-13)


def test_recompute_round_trips_through_the_config():
    mem = ebmm_tf.EnergyMemory(tiny_rnn(), recompute=True)
    assert ebmm_tf.EnergyMemory.from_config(mem.get_config()).recompute


def test_xla_meta_gradient_equals_the_graph_one():
    """XLA needs the XlaDynamicUpdateSlice gradient that ebmm_tf.layers registers (TensorFlow has none)."""
    ep = {k: tf.constant(v) for k, v in episode((6,), 3, (-1.0, 1.0), seed=3, clamp=True).items()}
    mem = _memory(tiny_rnn, (-1.0, 1.0))

    def grads():
        with tf.GradientTape() as tape:
            loss = ebmm_tf.meta_loss(mem, ep)[0]
        return [loss] + tape.gradient(loss, mem.trainable_variables)

    graph = tf.function(grads, autograph=False)()
    xla = tf.function(grads, autograph=False, jit_compile=True)()
    for a, b in zip(graph, xla):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kernel_size,strides", [(3, 1), (1, 1), (3, 2)])
def test_conv2d_same_matches_tf_conv2d_to_third_order(kernel_size, strides):
    """``conv2d_same``'s hand-written gradients (stride 1) equal TensorFlow's at every order the meta-step uses."""
    rng = np.random.default_rng(0)
    x0 = tf.constant(rng.normal(size=(2, 5, 5, 3)))
    k0 = tf.constant(rng.normal(size=(kernel_size, kernel_size, 3, 4)) * 0.3)
    k1 = tf.constant(rng.normal(size=(3, 3, 4, 2)) * 0.3)
    c = tf.constant(rng.normal(size=(2, 5 // strides + (5 % strides > 0), 5 // strides + (5 % strides > 0), 2)))

    def third_order(conv):
        with tf.GradientTape() as t3:
            t3.watch([k0, k1])
            with tf.GradientTape() as t2:
                t2.watch(k0)
                with tf.GradientTape() as t1:
                    x = tf.identity(x0)
                    t1.watch(x)
                    e = tf.reduce_sum(c * tf.tanh(conv(tf.tanh(conv(x, k0, strides)), k1, 1)))
                gx = t1.gradient(e, x)
                g = tf.reduce_sum(gx * gx)
            s = tf.reduce_sum(tf.sin(t2.gradient(g, k0)))
        return [s] + t3.gradient(s, [k0, k1])

    def reference(x, k, s):
        return tf.nn.conv2d(x, k, s, "SAME")

    for compiled in (False, True):
        run = (lambda f: tf.function(f, autograph=False)()) if compiled else (lambda f: f())
        expected = run(lambda: third_order(reference))
        got = run(lambda: third_order(conv2d_same))
        for a, b in zip(expected, got):
            np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-10, atol=1e-12)
