r"""Deep Image Prior baseline (Ulyanov et al. 2018; paper Appendix A.3, Table 2): per-image fitting, no memory.

For each distorted image ``x~ [H, W, C]`` separately, a freshly initialised convolutional generator
``g_theta`` maps a fixed random input ``u [1, H, W, noise_channels]`` (uniform in [0, 0.1]) to an image, and
``steps`` Adam updates (paper: 2,000) minimise the squared error on the pixels that the distortion left intact,

    ``L(theta) = sum_d m_d (g_theta(u + sigma_r * eps)_d - x~_d)^2``,   ``m = 1 - corrupted``,

i.e. the generator is told where the block is ("the network was instructed about location of the occluded
block", A.3; for salt and pepper ``m`` marks the uncorrupted pixels). ``sigma_r`` (``reg_noise_std``) perturbs
the input at every step, as in the original inpainting setup. The restored image is ``g_theta(u)`` after the last
update with the known pixels set to the query's: ``m * x~ + (1 - m) * g_theta(u)``. Nothing is learned across
images: there is no training run, only this per-image optimisation.

Generator (``Hourglass``, after the original's "skip" encoder-decoder): ``levels`` times
``[conv3x3 stride 2 -> norm -> LeakyReLU(0.2) -> conv3x3 -> norm -> LeakyReLU]`` down, with a
``conv1x1(skip_channels) -> norm -> LeakyReLU`` side branch at each level; up, per level: nearest 2x upsampling
(cropped to the level's size), concatenation with that level's skip, ``norm -> conv3x3 -> norm -> LeakyReLU ->
conv1x1 -> norm -> LeakyReLU``; then ``conv1x1(C) -> sigmoid`` into the data range. ``norm`` is a per-channel
normalisation over the image (batch normalisation of a batch of one image, with its affine parameters).
The original uses 128 channels and 5 levels; the CPU gin files say what they use.

Shapes: the generator is built for one ``pattern_shape`` ``(H, W, C)``; ``restore`` takes ``[H, W, C]``
arrays (or ``[H, W]`` for single-channel images).

CLI (evaluates on the test split of the gin file's protocol, writes a JSON and markdown record)::

    python -m ebmm_tf.baselines.run_dip --gin_file=gin/baselines/imagenet64_dip_cpu.gin \
        --num_images=20 --data_dir=../shared/data --output=runs/dip_imagenet64

Paper numbers (Table 2, ImageNet 64x64, squared error): 25% block noise 170.36, 15% salt and pepper 467.92.
"""

from __future__ import annotations

import json
import os
import platform
import time

import keras
import numpy as np
import tensorflow as tf

import gin

__all__ = ["DeepImagePrior", "Hourglass", "evaluate_dip", "markdown"]


class ImageNorm(keras.layers.Layer):
    """Per-channel normalisation over the spatial axes with a learned scale and shift ([1, H, W, C])."""

    def build(self, input_shape):
        c = int(input_shape[-1])
        self.scale = self.add_weight(name="scale", shape=(c,), initializer="ones")
        self.shift = self.add_weight(name="shift", shape=(c,), initializer="zeros")

    def call(self, x):
        mean, var = tf.nn.moments(x, axes=[1, 2], keepdims=True)
        return (x - mean) * tf.math.rsqrt(var + 1e-5) * self.scale + self.shift


class Hourglass(keras.Model):
    """The DIP generator (module docstring): ``u [1, H, W, noise_channels] -> image [1, H, W, C]`` in [0, 1]."""

    def __init__(self, pattern_shape, channels=64, levels=4, skip_channels=4, noise_channels=32, seed=0, **kwargs):
        super().__init__(**kwargs)
        h, w, c = (int(d) for d in pattern_shape)
        if levels < 1 or min(h, w) < 2**levels:
            raise ValueError(f"levels must be >= 1 and the image ({h}x{w}) at least 2**levels wide, got {levels}")
        self.pattern_shape, self.levels = (h, w, c), int(levels)
        counter = iter(range(10**6))

        def conv(filters, k, stride=1):
            # one seed per layer: an initializer seeded with an int draws the same values at every call
            init = keras.initializers.HeNormal(seed=int(seed) * 1000 + next(counter))
            return keras.layers.Conv2D(filters, k, strides=stride, padding="same", kernel_initializer=init)

        act = keras.layers.LeakyReLU(negative_slope=0.2)
        self._act = act
        self.down = [[conv(channels, 3, 2), ImageNorm(), conv(channels, 3), ImageNorm()] for _ in range(levels)]
        self.skip = [[conv(skip_channels, 1), ImageNorm()] for _ in range(levels)]
        self.up = [[ImageNorm(), conv(channels, 3), ImageNorm(), conv(channels, 1), ImageNorm()] for _ in range(levels)]
        self.head = conv(c, 1)
        self(tf.zeros((1, h, w, int(noise_channels))))  # creates every weight (a plain forward pass)

    def call(self, u):
        act = self._act
        skips, sizes, x = [], [], u
        for (c1, n1, c2, n2), (cs, ns) in zip(self.down, self.skip):
            sizes.append(tf.shape(x)[1:3])
            skips.append(act(ns(cs(x))))
            x = act(n2(c2(act(n1(c1(x))))))
        for i in reversed(range(self.levels)):
            n0, c1, n1, c2, n2 = self.up[i]
            x = tf.image.resize(x, sizes[i], method="nearest")
            x = tf.concat([x, skips[i]], axis=-1)
            x = act(n2(c2(act(n1(c1(n0(x)))))))
        return tf.sigmoid(self.head(x))


@gin.configurable(module="ebmm_tf.baselines")
class DeepImagePrior:
    """Per-image generator fitting (module docstring).

    Args:
      pattern_shape: ``(H, W, C)`` (or ``(H, W)``) of the images.
      data_range: ``(lo, hi)`` of the pixels; the generator's [0, 1] output is mapped onto it.
      channels, levels, skip_channels, noise_channels: the generator (original: 128, 5, 4, 32).
      steps: Adam updates per image (paper: 2,000).
      learning_rate: Adam's learning rate (original inpainting: 0.01).
      reg_noise_std: standard deviation of the per-step perturbation of the generator's input (original: 1/30).
      seed: seeds the generator's initialisation and each image's input (``seed + image index``).
      known_pixels: ``"uncorrupted"`` (the fit sees only the pixels the distortion left intact: the block's
        location is given, as in Table 2's block-noise cell) or ``"all"`` (the fit sees the whole distorted image
        and the output is ``g(u)`` everywhere: plain denoising, our reading of the salt-and-pepper cell, which
        carries no "location given" mark).
    """

    def __init__(
        self,
        pattern_shape=gin.REQUIRED,
        data_range=(0.0, 1.0),
        channels=64,
        levels=4,
        skip_channels=4,
        noise_channels=32,
        steps=2000,
        learning_rate=0.01,
        reg_noise_std=1.0 / 30.0,
        seed=0,
        known_pixels="uncorrupted",
    ):
        shape = tuple(int(d) for d in pattern_shape)
        if len(shape) == 2:
            shape = shape + (1,)
        if len(shape) != 3:
            raise ValueError(f"pattern_shape must be (H, W) or (H, W, C), got {pattern_shape}")
        if int(steps) < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if not learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {learning_rate}")
        if known_pixels not in ("uncorrupted", "all"):
            raise ValueError(f"known_pixels must be 'uncorrupted' or 'all', got {known_pixels!r}")
        self.known_pixels = known_pixels
        lo, hi = (float(v) for v in data_range)
        if not lo < hi:
            raise ValueError(f"data_range must be (lo, hi) with lo < hi, got {data_range}")
        self.input_shape, self.squeeze = shape, len(tuple(pattern_shape)) == 2
        self.data_range = (lo, hi)
        self.steps, self.reg_noise_std, self.seed = int(steps), float(reg_noise_std), int(seed)
        self.noise_channels = int(noise_channels)
        self.generator = Hourglass(shape, channels, levels, skip_channels, noise_channels, seed=seed)
        self._initial = [v.numpy() for v in self.generator.trainable_variables]
        self.optimizer = keras.optimizers.Adam(learning_rate=learning_rate)
        self.optimizer.build(self.generator.trainable_variables)
        # the optimizer's state at the start (iterations and moments at 0; its learning rate is a variable too)
        self._initial_optimizer = [v.numpy() for v in self.optimizer.variables]
        self._step = tf.function(self._step_impl)
        self._output = tf.function(self._output_impl)

    def _to_range(self, y):
        lo, hi = self.data_range
        return lo + (hi - lo) * y

    def _step_impl(self, u, target, known, noise_seed):
        if self.reg_noise_std:
            u = u + self.reg_noise_std * tf.random.stateless_normal(tf.shape(u), noise_seed)
        variables = self.generator.trainable_variables
        with tf.GradientTape() as tape:
            out = self._to_range(self.generator(u))
            loss = tf.reduce_sum(known * tf.square(out - target))
        self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    def _output_impl(self, u):
        return self._to_range(self.generator(u))

    def _reset(self):
        for v, value in zip(self.generator.trainable_variables, self._initial):
            v.assign(value)
        for v, value in zip(self.optimizer.variables, self._initial_optimizer):
            v.assign(value)

    def known_mask(self, corrupted):
        """The pixels the fit may look at, ``[1, H, W, C]`` float32: ``1 - corrupted``, or all of them."""
        m = 1.0 - np.asarray(corrupted, np.float32)
        if self.known_pixels == "all":
            m = np.ones_like(m)
        return m.reshape((1,) + self.input_shape)

    def restore(self, query, corrupted, index=0, callback=None):
        """Fits a fresh generator to ``query``'s known pixels; returns ``(restored [like query], final loss)``.

        ``corrupted`` (same shape as ``query``, 1 = distorted) gives the mask. ``index`` picks the image's input
        noise (``seed + index``); ``callback(step, loss)`` is called every 100 updates.
        """
        q = np.asarray(query, np.float32)
        expected = self.input_shape[:2] if self.squeeze else self.input_shape
        if q.shape != tuple(expected) or np.shape(corrupted) != q.shape:
            raise ValueError(
                f"query and corrupted must both have shape {tuple(expected)}, got {q.shape} and {np.shape(corrupted)}"
            )
        if not np.all(np.isfinite(q)):
            raise ValueError("query has NaN or Inf values")
        known = self.known_mask(corrupted)
        target = tf.constant(q.reshape((1,) + self.input_shape))
        rng = np.random.default_rng(self.seed + int(index))
        u = tf.constant(rng.uniform(0.0, 0.1, size=(1,) + self.input_shape[:2] + (self.noise_channels,)), tf.float32)
        self._reset()
        known_t = tf.constant(known)
        loss = float("nan")
        for step in range(self.steps):
            loss = self._step(u, target, known_t, tf.constant([self.seed + int(index), step], tf.int32))
            if callback is not None and (step + 1) % 100 == 0:
                callback(step + 1, float(loss))
        out = self._output(u).numpy()
        # the known pixels are the query's; with known_pixels="all" nothing is known: g(u) everywhere
        restored = out if self.known_pixels == "all" else known * target.numpy() + (1.0 - known) * out
        restored = restored.reshape(q.shape)
        return restored, float(loss)


def evaluate_dip(num_images=20, split="test", seed=None, data_dir=None, progress=True):
    """Runs the parsed gin configuration's protocol (``Experiment.source``, ``distortion``) with Deep Image Prior
    on one episode of ``num_images`` images of ``split`` (the evaluation seed stream; the protocol's N plays no
    role, each image is restored alone); returns the record.

    Record: per-image errors (Hamming after binarisation for binary sources, squared error otherwise: the
    evaluation's metric), their mean, p5 / p95 over images, the queries' errors, per-image fit time and loss.
    """
    from ebmm_tf import evaluate as evaluate_lib
    from ebmm_tf import metrics as metrics_lib
    from ebmm_tf import run as run_lib

    config = run_lib.config_from_gin()
    task = config.task.with_num_patterns(int(num_images))
    if task.source == "binary_strings":
        raise ValueError("Deep Image Prior needs images; binary_strings has none")
    seed = evaluate_lib.EVAL_SEED if seed is None else int(seed)
    dip = DeepImagePrior(pattern_shape=task.pattern_shape, data_range=task.data_range)
    episode = next(iter(task.episodes(split, seed, data_dir or config.data_dir)))
    patterns, queries, corrupted = (episode[k].numpy() for k in ("patterns", "queries", "corrupted"))
    errors, query_errors, seconds, losses = [], [], [], []
    start = time.time()
    for i in range(int(num_images)):
        t0 = time.time()
        restored, loss = dip.restore(queries[i], corrupted[i], index=i)
        seconds.append(time.time() - t0)
        losses.append(loss)
        err = metrics_lib.per_pattern_error(task.source, patterns[i : i + 1], restored[None].astype(np.float32))
        qerr = metrics_lib.per_pattern_error(task.source, patterns[i : i + 1], queries[i : i + 1])
        errors.append(float(np.asarray(err)[0]))
        query_errors.append(float(np.asarray(qerr)[0]))
        if progress:
            print(
                f"image {i + 1}/{num_images}: error {errors[-1]:.3f} (query {query_errors[-1]:.3f}), "
                f"fit loss {loss:.4f}, {seconds[-1]:.1f} s",
                flush=True,
            )
    e = np.asarray(errors)
    return {
        "model": "DeepImagePrior",
        "source": task.source,
        "split": split,
        "seed": seed,
        "distortion": repr(task.distortion),
        "metric": task.metric,
        "num_images": int(num_images),
        "mean": float(e.mean()),
        "p5": float(np.percentile(e, 5)),
        "p95": float(np.percentile(e, 95)),
        "std": float(e.std()),
        "query_mean": float(np.mean(query_errors)),
        "errors": errors,
        "query_errors": query_errors,
        "fit_loss": losses,
        "seconds_per_image": seconds,
        "steps": dip.steps,
        "known_pixels": dip.known_pixels,
        "generator": {
            "parameters": int(sum(np.prod(v.shape) for v in dip.generator.trainable_variables)),
            "levels": dip.generator.levels,
        },
        "operative_config": gin.operative_config_str(),
        "wall_seconds": time.time() - start,
        "hardware": {"machine": platform.machine(), "processor": platform.processor(), "cpus": os.cpu_count()},
        "tensorflow": tf.__version__,
    }


def evaluate_and_write(
    gin_files, gin_params, num_images, output, split="test", seed=None, data_dir=None, progress=True, command=None
):
    """The route of both CLIs (``python -m ebmm_tf.evaluate --gin_file=...``, ``python -m ebmm_tf.baselines.run_dip``).

    Parses the gin files (which must configure ``DeepImagePrior``), runs ``evaluate_dip``, writes
    ``<output>.json`` and ``<output>.md`` and prints the markdown. Returns the record.
    """
    from ebmm_tf import run as run_lib

    run_lib.parse_gin(gin_files, gin_params)
    if "DeepImagePrior." not in gin.config_str():
        raise ValueError(
            f"{list(gin_files)} configure no per-image model (DeepImagePrior); a meta-trained model is evaluated "
            "from its --workdir"
        )
    record = evaluate_dip(num_images, split, seed, data_dir, progress)
    if command is not None:
        record["command"] = command
    os.makedirs(os.path.dirname(os.path.abspath(output)) or ".", exist_ok=True)
    with open(output + ".json", "w") as f:
        json.dump(record, f, indent=1)
    with open(output + ".md", "w") as f:
        f.write(markdown(record))
    print(markdown(record), flush=True)
    print(f"Wrote {output}.json", flush=True)
    return record


def markdown(r):
    return "\n".join(
        [
            f"# Deep Image Prior on {r['source']} ({r['split']}), {r['distortion']}",
            "",
            "| images | error mean [p5, p95] | std | query | steps | seconds per image (median) |",
            "|---|---|---|---|---|---|",
            f"| {r['num_images']} | {r['mean']:.2f} [{r['p5']:.2f}, {r['p95']:.2f}] | {r['std']:.2f} | "
            f"{r['query_mean']:.2f} | {r['steps']} | {float(np.median(r['seconds_per_image'])):.1f} |",
            "",
            f"Metric: {r['metric']} error per image. Seed {r['seed']}. Wall time {r['wall_seconds']:.0f} s.",
            "",
        ]
    )
