"""Tests of ebmm_tf.distortions: block noise, salt-and-pepper and the binary-string protocol."""

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

import gin
from ebmm_tf import distortions as D

SEED = tf.constant([3, 14], tf.int32)


def _images(n=32, h=32, w=32, c=1, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.uniform(size=(n, h, w, c)) > 0.5).astype(np.float32)


def _block_corners(mask):
    """Top-left corner of the (single) block of each [H, W] mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return rows, cols


@pytest.mark.parametrize("fill", ["random", "uniform", "constant"])
def test_block_is_a_full_square_inside_and_only_block_changes(fill):
    x = _images(n=64, h=32, w=32, c=3)
    d = D.BlockNoise(size=16, fill=fill, value=0.25)(x, SEED)
    q, m, clamp = (t.numpy() for t in d)
    assert q.shape == x.shape and m.shape == x.shape and q.dtype == np.float32
    assert not clamp.any()
    assert set(np.unique(m)) == {0.0, 1.0}
    for i in range(len(x)):
        mask2d = m[i, :, :, 0]
        np.testing.assert_array_equal(m[i], np.repeat(mask2d[..., None], 3, axis=-1))  # all channels
        rows, cols = _block_corners(mask2d)
        assert len(rows) == 16 and len(cols) == 16
        assert rows[-1] - rows[0] == 15 and cols[-1] - cols[0] == 15  # contiguous square
        assert rows[0] >= 0 and rows[-1] < 32 and cols[0] >= 0 and cols[-1] < 32
        assert mask2d.sum() == 256  # exactly the square, nothing else
    outside = m == 0
    np.testing.assert_array_equal(q[outside], x[outside])
    inside = q[m == 1]
    if fill == "random":
        assert set(np.unique(inside)) == {0.0, 1.0}
        assert 0.45 < inside.mean() < 0.55
    elif fill == "uniform":
        assert inside.min() >= 0.0 and inside.max() <= 1.0 and len(np.unique(inside)) > 1000
    else:
        np.testing.assert_array_equal(inside, 0.25)


def test_block_position_is_uniform_over_valid_positions():
    h, w, size, n = 6, 7, 3, 20000  # non-square so that swapping H and W would show
    x = np.zeros((n, h, w, 1), np.float32)
    m = D.BlockNoise(size=size, fill="constant", value=1.0)(x, SEED).corrupted.numpy()[..., 0]
    ys = m.any(axis=2).argmax(axis=1)
    xs = m.any(axis=1).argmax(axis=1)
    assert ys.max() == h - size and xs.max() == w - size and ys.min() == 0 and xs.min() == 0
    np.testing.assert_array_equal(m.sum(axis=(1, 2)), size * size)  # always fully inside
    counts = np.zeros((h - size + 1, w - size + 1))
    np.add.at(counts, (ys, xs), 1)
    assert (counts > 0).all()
    p = stats.chisquare(counts.ravel()).pvalue
    assert p > 1e-3, (p, counts)


def test_block_on_binary_strings_shape_and_errors():
    with pytest.raises(ValueError):
        D.BlockNoise(size=40)(np.zeros((2, 32, 32, 1), np.float32), SEED)
    with pytest.raises(ValueError):
        D.BlockNoise(fill="gaussian")
    d = D.BlockNoise(size=(2, 3), fill="constant", value=1.0)(np.zeros((4, 5, 6), np.float32), SEED)
    assert d.query.shape == (4, 5, 6)
    np.testing.assert_array_equal(d.corrupted.numpy().sum(axis=(1, 2)), 6)


def test_block_fill_uses_data_range():
    x = np.zeros((16, 8, 8, 1), np.float32)
    q, m, _ = D.BlockNoise(size=4, fill="random", data_range=(-1.0, 1.0))(x, SEED)
    assert set(np.unique(q.numpy()[m.numpy() == 1])) == {-1.0, 1.0}


@pytest.mark.parametrize("rate", [0.05, 0.15, 0.3])
def test_salt_and_pepper_rate_and_values(rate):
    x = np.full((64, 32, 32, 1), 0.5, np.float32)  # mid-grey so every hit is visible
    q, m, clamp = (t.numpy() for t in D.SaltAndPepper(rate=rate)(x, SEED))
    assert not clamp.any()
    frac = m.mean()
    assert abs(frac - rate) < 5 * np.sqrt(rate * (1 - rate) / m.size), frac
    np.testing.assert_array_equal(q != 0.5, m == 1)  # the mask marks exactly the changed pixels
    hit = q[m == 1]
    assert set(np.unique(hit)) == {0.0, 1.0}
    assert abs(hit.mean() - 0.5) < 0.05  # salt and pepper equally likely


def test_salt_and_pepper_rgb_pixels_are_black_or_white():
    x = np.full((8, 16, 16, 3), 0.5, np.float32)
    q, m, _ = (t.numpy() for t in D.SaltAndPepper(rate=0.2)(x, SEED))
    np.testing.assert_array_equal(m, np.repeat(m[..., :1], 3, axis=-1))
    hit = q[m[..., 0] == 1]  # [num_hit, 3]
    assert ((hit == 0).all(axis=1) | (hit == 1).all(axis=1)).all()


def test_binary_protocol_keeps_exactly_64_bits():
    rng = np.random.default_rng(0)
    x = rng.choice([-1.0, 1.0], size=(256, 128)).astype(np.float32)
    q, corrupted, clamp = (t.numpy() for t in D.BinaryStringProtocol(num_known=64)(x, SEED))
    np.testing.assert_array_equal(corrupted.sum(axis=1), 64)
    np.testing.assert_array_equal(clamp.sum(axis=1), 64)
    np.testing.assert_array_equal(clamp, 1.0 - corrupted)
    np.testing.assert_array_equal(q[clamp == 1], x[clamp == 1])
    assert set(np.unique(q)) == {-1.0, 1.0}
    flipped = (q != x).sum(axis=1)
    assert 28 < flipped.mean() < 36  # replaced bits are fresh random +-1: about half flip
    assert (flipped <= 64).all()
    # kept positions vary across patterns
    assert len({tuple(np.flatnonzero(r)) for r in clamp}) == len(clamp)


def test_binary_protocol_in_graph_with_dynamic_batch():
    proto = D.BinaryStringProtocol(num_known=10)
    fn = tf.function(
        lambda p, s: proto(p, s), input_signature=[tf.TensorSpec([None, 32], tf.float32), tf.TensorSpec([2], tf.int64)]
    )
    d = fn(tf.ones([5, 32]), tf.constant([1, 2], tf.int64))
    np.testing.assert_array_equal(d.clamp.numpy().sum(1), 10)
    with pytest.raises(ValueError):
        D.BinaryStringProtocol(num_known=200)(np.ones((2, 128), np.float32), SEED)


@pytest.mark.parametrize(
    "make", [lambda: D.BlockNoise(8), lambda: D.SaltAndPepper(0.2), lambda: D.BinaryStringProtocol(64)]
)
def test_same_seed_same_result_different_seed_different(make):
    dist = make()
    if isinstance(dist, D.BinaryStringProtocol):
        x = np.random.default_rng(1).choice([-1.0, 1.0], size=(16, 128)).astype(np.float32)
    else:
        x = _images(n=16, seed=1)
    a = dist(x, tf.constant([5, 6], tf.int64))
    b = dist(x, tf.constant([5, 6], tf.int32))
    c = dist(x, tf.constant([5, 7], tf.int64))
    for ta, tb in zip(a, b):
        np.testing.assert_array_equal(ta.numpy(), tb.numpy())
    assert not np.array_equal(a.query.numpy(), c.query.numpy())
    assert not np.array_equal(a.corrupted.numpy(), c.corrupted.numpy())
    np.testing.assert_array_equal(dist(x, 5).query.numpy(), dist(x, [5, 0]).query.numpy())


def test_gin_binds_distortion_parameters():
    gin.clear_config()
    try:
        gin.parse_config(
            "ebmm_tf.distortions.BlockNoise.size = 8\n"
            "ebmm_tf.distortions.SaltAndPepper.rate = 0.3\n"
            "ebmm_tf.distortions.BinaryStringProtocol.num_known = 32"
        )
        assert D.BlockNoise().size == (8, 8)
        assert D.SaltAndPepper().rate == 0.3
        assert D.BinaryStringProtocol().num_known == 32
    finally:
        gin.clear_config()
    assert D.BlockNoise().size == (16, 16)
