"""Tests of ebmm_tf.metrics: Hamming / squared error and the mean + 5/95 percentile summary."""

import numpy as np
import pytest
import tensorflow as tf

from ebmm_tf import metrics


def test_hamming_binary_images_threshold_at_half():
    orig = np.array([[0.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]], np.float32)
    retr = np.array([[0.4, 0.6, 0.5, 0.51], [0.9, 0.2, 1.0, 0.0]], np.float32)
    # Row 0: 0.4->0 ok, 0.6->1 ok, 0.5->0 (differs), 0.51->1 (differs). Row 1: two differ.
    err = metrics.hamming_error(orig, retr).numpy()
    assert err.dtype == np.float32
    np.testing.assert_array_equal(err, [2.0, 2.0])


def test_hamming_pm1_uses_sign_and_needs_the_range():
    rng = np.random.default_rng(0)
    orig = rng.choice([-1.0, 1.0], size=(8, 128)).astype(np.float32)
    retr = np.clip(orig + rng.normal(0, 0.9, size=orig.shape), -1, 1).astype(np.float32)
    expected = (np.sign(orig) != np.sign(retr)).sum(axis=1)
    got = metrics.hamming_error(orig, retr, data_range=(-1.0, 1.0)).numpy()
    np.testing.assert_array_equal(got, expected)
    # With the {0,1} range, -1 and +1 values binarize differently: the range argument matters.
    wrong = metrics.hamming_error(orig, retr).numpy()
    assert not np.array_equal(wrong, expected)


def test_hamming_per_image_over_all_dims():
    orig = np.zeros((3, 4, 4, 2), np.float32)
    retr = orig.copy()
    retr[0, 0, 0, 0] = 1.0
    retr[2] = 1.0
    np.testing.assert_array_equal(metrics.hamming_error(orig, retr).numpy(), [1.0, 0.0, 32.0])


def test_squared_error_sums_over_all_dims():
    rng = np.random.default_rng(1)
    a = rng.uniform(size=(5, 8, 8, 3)).astype(np.float32)
    b = rng.uniform(size=(5, 8, 8, 3)).astype(np.float32)
    got = metrics.squared_error(tf.constant(a), tf.constant(b)).numpy()
    assert got.shape == (5,)
    np.testing.assert_allclose(got, ((a - b) ** 2).reshape(5, -1).sum(1), rtol=1e-5)


def test_metrics_reject_unbatched_input():
    with pytest.raises(ValueError):
        metrics.squared_error(np.zeros(3, np.float32), np.zeros(3, np.float32))


def test_error_summary_mean_over_patterns_and_percentiles_over_batch_means():
    s = metrics.ErrorSummary()
    rng = np.random.default_rng(2)
    batches = [rng.uniform(0, 10, size=n) for n in [4, 8, 16] * 40]
    for b in batches:
        s.accumulate(tf.constant(b, tf.float32) if len(b) == 8 else b)
    r = s.result()
    allerr = np.concatenate(batches)
    means = np.array([b.astype(np.float32).mean() if len(b) == 8 else b.mean() for b in batches])
    assert r["num_batches"] == 120 and r["num_patterns"] == allerr.size
    np.testing.assert_allclose(r["mean"], allerr.mean(), rtol=1e-5)
    np.testing.assert_allclose([r["p5"], r["p95"]], np.percentile(means, [5, 95]), rtol=1e-5)
    assert r["p5"] < r["mean"] < r["p95"]


def test_error_summary_weights_patterns_not_batches():
    s = metrics.ErrorSummary()
    s.accumulate([0.0])
    s.accumulate([3.0, 3.0, 3.0])
    assert s.result()["mean"] == pytest.approx(2.25)  # not the mean of batch means (1.5)


def test_error_summary_empty_and_reset():
    s = metrics.ErrorSummary()
    assert np.isnan(s.result()["mean"]) and s.result()["num_batches"] == 0
    s.accumulate([1.0, 2.0])
    s.reset()
    assert s.result()["num_patterns"] == 0
    with pytest.raises(ValueError):
        s.accumulate([])


def test_each_source_has_the_papers_error_metric():
    from ebmm_tf import data
    from ebmm_tf.metrics import error_metric, per_pattern_error

    expected = {"binary_strings": "hamming", "omniglot": "hamming", "mnist": "hamming", "sklearn_digits": "hamming"}
    for source in data.SOURCES:
        assert error_metric(source) == expected.get(source, "squared"), source
    x = np.array([[1.0, -1.0, 1.0]], np.float32)
    np.testing.assert_array_equal(per_pattern_error("binary_strings", x, -x).numpy(), [3.0])
    np.testing.assert_allclose(per_pattern_error("cifar10", x * 0.5, x * 0.0).numpy(), [0.75])
    with pytest.raises(ValueError, match="Unknown source"):
        error_metric("no_such_source")
