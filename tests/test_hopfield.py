"""Tests for the classical Hopfield baselines (ebmm_tf.baselines.hopfield), numpy only."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ebmm_tf.baselines import hopfield as hop
from ebmm_tf.baselines.hopfield import HopfieldNetwork, binary_string_queries, evaluate_table1

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pm1(rng, shape):
    return np.where(rng.random(shape) < 0.5, -1.0, 1.0)


# ------------------------------------------------------------------------------------------------
# Independent references, written as explicit loops.
# ------------------------------------------------------------------------------------------------
def _hebb_loops(x):
    n, d = x.shape
    w = [[0.0] * d for _ in range(d)]
    for i in range(d):
        for j in range(d):
            if i != j:
                w[i][j] = sum(x[mu, i] * x[mu, j] for mu in range(n)) / d
    return np.array(w)


def _storkey_loops(x, exclude_j=True):
    n, d = x.shape
    w = np.zeros((d, d))
    for mu in range(n):
        p = x[mu]
        # local fields from the previous weights
        h = np.zeros((d, d))
        for i in range(d):
            for j in range(d):
                total = 0.0
                for k in range(d):
                    if k == i or (exclude_j and k == j):
                        continue
                    total += w[i, k] * p[k]
                h[i, j] = total
        new = np.zeros((d, d))
        for i in range(d):
            for j in range(d):
                if i != j:
                    new[i, j] = w[i, j] + (p[i] * p[j] - p[i] * h[j, i] - h[i, j] * p[j]) / d
        w = new
    return w


def _projector_lstsq(x):
    """Orthogonal projector onto span of the rows of x, as X B with B = argmin ||X B - I||."""
    cols = x.T  # [d, N]
    b, *_ = np.linalg.lstsq(cols, np.eye(cols.shape[0]), rcond=None)  # b = X^+
    return cols @ b


@pytest.mark.parametrize("d", [8, 11, 16])
def test_hebb_matches_loops(d):
    x = _pm1(np.random.default_rng(d), (3, d))
    w = HopfieldNetwork("hebb", d).write(x)
    np.testing.assert_allclose(w, _hebb_loops(x), atol=1e-10, rtol=0)


@pytest.mark.parametrize("d", [8, 13, 16])
@pytest.mark.parametrize("rule", ["storkey", "storkey_simple"])
def test_storkey_matches_loops(d, rule):
    x = _pm1(np.random.default_rng(100 + d), (3, d))
    w = HopfieldNetwork(rule, d).write(x)
    ref = _storkey_loops(x, exclude_j=rule == "storkey")
    np.testing.assert_allclose(w, ref, atol=1e-10, rtol=0)
    assert np.array_equal(w, w.T)


def test_storkey_variants_differ():
    # The two Storkey variants are different rules (from the second pattern on).
    x = _pm1(np.random.default_rng(7), (3, 16))
    a = HopfieldNetwork("storkey", 16).write(x)
    b = HopfieldNetwork("storkey_simple", 16).write(x)
    assert np.max(np.abs(a - b)) > 1e-3


@pytest.mark.parametrize("d", [8, 12, 16])
def test_pinv_matches_lstsq(d):
    x = _pm1(np.random.default_rng(200 + d), (3, d))
    ref = _projector_lstsq(x)
    # a second, independent closed form: X (X^T X)^{-1} X^T via solve
    cols = x.T
    ref2 = cols @ np.linalg.solve(cols.T @ cols, cols.T)
    np.testing.assert_allclose(ref, ref2, atol=1e-10)
    w_diag = HopfieldNetwork("pinv_diag", d).write(x)
    np.testing.assert_allclose(w_diag, ref, atol=1e-10, rtol=0)
    w = HopfieldNetwork("pinv", d).write(x)
    ref_zero = ref.copy()
    np.fill_diagonal(ref_zero, 0.0)
    np.testing.assert_allclose(w, ref_zero, atol=1e-10, rtol=0)


def test_batched_write_equals_per_set_write():
    x = _pm1(np.random.default_rng(3), (2, 3, 5, 16))
    for rule in hop.RULES:
        net = HopfieldNetwork(rule, 16)
        w = net.write(x)
        assert w.shape == (2, 3, 16, 16)
        for a in range(2):
            for b in range(3):
                np.testing.assert_allclose(w[a, b], net.write(x[a, b]), atol=1e-12)


def test_memory_size():
    assert HopfieldNetwork("hebb").memory_size == 128 * 127 // 2 + 128 == 8256
    assert HopfieldNetwork("pinv", 16).memory_size == 16 * 15 // 2 + 16
    np.testing.assert_array_equal(HopfieldNetwork("storkey").bias(), np.zeros(128))


# ------------------------------------------------------------------------------------------------
# Protocol.
# ------------------------------------------------------------------------------------------------
def test_binary_string_queries():
    rng = np.random.default_rng(0)
    p = _pm1(rng, (50, 128))
    q, clamp = binary_string_queries(p, np.random.default_rng(1))
    assert q.shape == p.shape and clamp.shape == p.shape and clamp.dtype == bool
    np.testing.assert_array_equal(clamp.sum(-1), 64)
    np.testing.assert_array_equal(q[clamp], p[clamp])
    assert set(np.unique(q)) == {-1.0, 1.0}
    # replaced bits are fresh uniform values: about half of them differ from the original
    frac = np.mean(q[~clamp] != p[~clamp])
    assert 0.45 < frac < 0.55
    # kept positions differ between patterns (not a fixed mask)
    assert len({tuple(np.flatnonzero(c)) for c in clamp}) == 50
    q2, clamp2 = binary_string_queries(p, np.random.default_rng(1))
    np.testing.assert_array_equal(q, q2)
    np.testing.assert_array_equal(clamp, clamp2)


# ------------------------------------------------------------------------------------------------
# Retrieval.
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rule", ["pinv", "pinv_diag"])
def test_pinv_stored_patterns_are_fixed_points(rule):
    rng = np.random.default_rng(5)
    p = _pm1(rng, (40, 128))  # N < d
    net = HopfieldNetwork(rule)
    w = net.write(p)
    no_clamp = np.zeros(p.shape, dtype=bool)
    out, info = net.recall(w, p, no_clamp, rng, return_info=True)
    np.testing.assert_array_equal(out, p)
    np.testing.assert_array_equal(info["sweeps"], 1)  # the first sweep already changes nothing


@pytest.mark.parametrize("rule", ["hebb", "storkey", "storkey_simple", "pinv", "pinv_diag"])
def test_recall_converges(rule):
    rng = np.random.default_rng(6)
    p = _pm1(rng, (3, 48, 128))
    q, clamp = binary_string_queries(p, rng)
    net = HopfieldNetwork(rule)
    w = net.write(p)
    out, info = net.recall(w, q, clamp, rng, return_info=True)
    assert info["num_capped"] == 0 and info["converged"].all()
    assert np.any(out != q)  # it did move
    # one more sweep (any order) changes nothing
    again = net.recall(w, out, clamp, np.random.default_rng(99), max_sweeps=1)
    np.testing.assert_array_equal(again, out)
    # and every free unit agrees with the sign of its field (ties keep the state)
    field = np.einsum("sij,sbj->sbi", w, out)
    assert np.all((field * out >= -1e-10) | clamp)


def test_clamped_bits_never_change():
    rng = np.random.default_rng(8)
    d, n = 128, 20
    q = _pm1(rng, (n, d))
    clamp = rng.random((n, d)) < 0.5
    # Weights that make every query maximally unstable: W = -(1/d) q_b q_b^T per query's own network.
    w = -np.einsum("bi,bj->bij", q, q) / d
    w[:, np.arange(d), np.arange(d)] = 0.0
    net = HopfieldNetwork("hebb")
    out = net.recall(w, q[:, None], clamp[:, None], rng)[:, 0]
    np.testing.assert_array_equal(out[clamp], q[clamp])
    assert np.mean(out[~clamp] != q[~clamp]) > 0.5  # the free bits did move
    # also for a real memory with many stored patterns
    p = _pm1(rng, (96, d))
    qq, cc = binary_string_queries(p, rng)
    out = net.recall(net.write(p), qq, cc, rng)
    np.testing.assert_array_equal(out[cc], qq[cc])


def test_tie_keeps_state():
    net = HopfieldNetwork("hebb", 4)
    w = np.zeros((4, 4))  # every field is 0: a tie everywhere
    q = np.array([[1.0, -1.0, 1.0, -1.0]])
    out = net.recall(w, q, np.zeros_like(q, dtype=bool), np.random.default_rng(0))
    np.testing.assert_array_equal(out, q)


def test_hebb_small_vs_large_load():
    rng = np.random.default_rng(9)
    net = HopfieldNetwork("hebb")
    errors = {}
    for n in (5, 96):
        p = _pm1(rng, (4, n, 128))
        q, clamp = binary_string_queries(p, rng)
        out = net.recall(net.write(p), q, clamp, rng)
        errors[n] = hop.hamming(out, p).mean()
    assert errors[5] < 0.1
    assert errors[96] > 10.0


def test_evaluate_table1_tiny_and_deterministic():
    a = evaluate_table1("hebb", num_patterns_list=(8, 16), min_patterns=40, seed=3)
    b = evaluate_table1("hebb", num_patterns_list=(16,), min_patterns=40, seed=3)
    assert set(a) == {8, 16}
    assert a[8]["num_batches"] == 5 and a[8]["num_patterns"] == 40
    assert a[16]["num_batches"] == 3 and a[16]["num_patterns"] == 48
    assert a[16] == b[16]  # per-N streams do not depend on the other N
    for r in a.values():
        assert r["p5"] <= r["mean"] <= r["p95"]
        assert r["memory_size"] == 8256 and r["num_capped"] == 0


def test_cli_writes_json(tmp_path):
    out = tmp_path / "res.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ebmm_tf.baselines.hopfield",
            "--rules=hebb,storkey,pinv",
            "--num_patterns=16,32",
            "--min_patterns=32",
            "--seed=1",
            f"--output={out}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "| ours: hebb |" in proc.stdout and "pseudo-inverse rule | 0.0 | 0.0 |" in proc.stdout
    data = json.loads(out.read_text())
    assert set(data["results"]) == {"hebb", "storkey", "pinv"}
    for rule in ("hebb", "storkey", "pinv"):
        assert set(data["results"][rule]) == {"16", "32"}
        r = data["results"][rule]["32"]
        assert r["num_patterns"] == 32 and r["memory_size"] == 8256
        assert 0.0 <= r["mean"] <= 128.0
    assert data["paper"]["hebb"] == [0.4, 5.0, 9.8, 13.0, 16.5]
    assert data["config"]["seed"] == 1
