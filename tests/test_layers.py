"""LayerNorm higher-order gradients and the writable layers' algebra."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from ebmm_tf.layers import Conv, LayerNorm, Linear, WritableConv2D, WritableDense


def _meta_objective(norm, x0, c):
    """The derivative order meta-training needs, on ``E(x; P) = sum(c * tanh(norm(x @ P)))``.

    ``G(P) = ||grad_x E||^2`` (the writing loss' gradient term), ``S(P) = sum(sin(grad_P G))`` (a function of
    the write update); ``grad_P S`` is then a third-order derivative of the energy, as in the meta-gradient.
    """

    def objective(p):
        with tf.GradientTape() as t2:
            t2.watch(p)
            with tf.GradientTape() as t1:
                x = tf.identity(x0)
                t1.watch(x)
                e = tf.reduce_sum(c * tf.tanh(norm(x @ p)))
            gx = t1.gradient(e, x)
            g = tf.reduce_sum(gx * gx)
        return tf.reduce_sum(tf.sin(t2.gradient(g, p)))

    return objective


def _grad_and_fd(objective, p, eps=1e-6):
    with tf.GradientTape() as tape:
        tape.watch(p)
        s = objective(p)
    analytic = tape.gradient(s, p).numpy()
    base = p.numpy()
    fd = np.zeros_like(base)
    for i in range(base.size):
        e = np.zeros(base.size)
        e[i] = eps
        e = e.reshape(base.shape)
        fd.ravel()[i] = (objective(tf.constant(base + e)).numpy() - objective(tf.constant(base - e)).numpy()) / (
            2 * eps
        )
    return analytic, fd


def _rel_err(a, b):
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12)


def _problem(seed=0):
    rng = np.random.default_rng(seed)
    return (
        tf.constant(rng.normal(size=(3, 4)), tf.float64),
        tf.constant(rng.normal(size=(3, 6)), tf.float64),
        tf.constant(rng.normal(size=(4, 6)), tf.float64),
        rng,
    )


def test_layernorm_third_order_gradients_match_finite_differences():
    x0, c, p, rng = _problem()
    norm = LayerNorm(channels=6, dtype="float64")
    norm.scale.assign(rng.uniform(0.5, 1.5, size=6))
    norm.offset.assign(rng.normal(size=6) * 0.1)
    analytic, fd = _grad_and_fd(_meta_objective(norm, x0, c), p)
    assert _rel_err(analytic, fd) < 1e-6


def test_layernorm_matches_the_definition_and_normalises_all_non_batch_axes():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 4, 4, 2))
    y = LayerNorm(channels=2, dtype="float64")(tf.constant(x)).numpy()
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    var = x.var(axis=(1, 2, 3), keepdims=True)
    np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-5), rtol=1e-10, atol=1e-12)


def test_keras_layernormalization_gives_wrong_higher_order_gradients():
    """Documents why ebmm_tf has its own LayerNorm.

    ``keras.layers.LayerNormalization`` uses ``tf.nn.moments``, which stops the gradient through the mean
    inside the variance. First and second derivatives happen to survive, the third-order one that the
    meta-gradient needs does not (about 5% relative error here, and 25% measured on a full meta-gradient).
    If this starts failing, a Keras/TF release fixed it and the workaround may be revisited.
    """
    x0, c, p, _ = _problem()
    keras_norm = keras.layers.LayerNormalization(axis=-1, epsilon=1e-5, dtype="float64")
    keras_norm.build((3, 6))
    analytic, fd = _grad_and_fd(_meta_objective(keras_norm, x0, c), p)
    assert _rel_err(analytic, fd) > 1e-2
    # Forward values agree with ours: only the higher-order gradients differ.
    ours = LayerNorm(axes=(1,), channels=6, dtype="float64")
    y = x0 @ p
    np.testing.assert_allclose(keras_norm(y).numpy(), ours(y).numpy(), rtol=1e-6, atol=1e-8)


def test_writable_dense_equals_concat_of_static_and_memory_parts():
    rng = np.random.default_rng(2)
    layer = WritableDense(5, 3, 2, name="w", dtype="float64")
    x = rng.normal(size=(4, 5))
    mem = {"w/kernel": tf.constant(rng.normal(size=(5, 2))), "w/bias": tf.constant(rng.normal(size=2))}
    y = layer(tf.constant(x), mem).numpy()
    static = x @ layer.kernel.numpy() + layer.bias.numpy()
    dynamic = x @ mem["w/kernel"].numpy() + mem["w/bias"].numpy()
    np.testing.assert_allclose(y, np.concatenate([static, dynamic], -1), rtol=1e-12)
    assert layer.memory_size() == 12


def test_writable_conv_equals_concat_of_static_and_memory_parts():
    rng = np.random.default_rng(3)
    layer = WritableConv2D(3, 4, 2, kernel_size=3, strides=2, name="c", dtype="float64")
    x = tf.constant(rng.normal(size=(2, 7, 7, 3)))
    mem = {"c/kernel": tf.constant(rng.normal(size=(3, 3, 3, 2))), "c/bias": tf.constant(rng.normal(size=2))}
    y = layer(x, mem).numpy()
    static = tf.nn.conv2d(x, layer.kernel, 2, "SAME").numpy() + layer.bias.numpy()
    dynamic = tf.nn.conv2d(x, mem["c/kernel"], 2, "SAME").numpy() + mem["c/bias"].numpy()
    np.testing.assert_allclose(y, np.concatenate([static, dynamic], -1), rtol=1e-12)
    assert y.shape == (2, 4, 4, 6)
    assert layer.memory_size() == 3 * 3 * 3 * 2 + 2


def test_writable_layer_reports_missing_memory_clearly():
    layer = WritableDense(3, 1, 2, name="mem")
    with pytest.raises(KeyError, match="mem/bias"):
        layer(tf.zeros((1, 3)), {"mem/kernel": tf.zeros((3, 2))})
    with pytest.raises(ValueError, match="needs its memory"):
        layer(tf.zeros((1, 3)), None)


def test_static_layers_are_built_at_construction():
    lin, conv = Linear(3, 2), Conv(2, 4, 3, 2)
    assert lin.built and conv.built
    assert lin(tf.zeros((1, 3))).shape == (1, 2)
    assert conv(tf.zeros((1, 5, 5, 2))).shape == (1, 3, 3, 4)
