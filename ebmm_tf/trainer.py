r"""The meta-training loop behind ``python -m ebmm_tf.train`` (see ``ebmm_tf/train.py`` for the CLI).

gin does the wiring: the gin file binds the experiment (``Experiment``), the energy network, the memory,
the distortion and the optimiser; ``--gin_param`` overrides single bindings. Unknown or misspelt bindings
fail before any work (``skip_unknown=False``).

Workdir layout (a run started again with the same workdir resumes where it stopped):

* ``operative_config.gin``: the configuration actually used (written once the run is configured);
* ``checkpoints/``: ``tf.train.CheckpointManager`` checkpoints of the memory (theta_bar, static weights,
  every learned rate), the optimiser state and the step counter. Episode ``i`` of the data stream is a pure
  function of ``(seed, i)``, so the step counter is the data iterator's state (no RNG state elsewhere);
* ``best/memory.keras`` + ``best/metrics.json``: the model with the best validation error so far;
  ``latest/memory.keras``: the model at the end of the last run;
* ``metrics.jsonl``: one line per training step (loss, per-read-step losses, gradient norm) and per
  validation; ``tb/``: TensorBoard summaries (``tensorboard --logdir DIR/tb``).

A NaN or Inf in the loss or the gradients stops the run before anything is applied; the last good
checkpoint stays. SIGINT / SIGTERM save a checkpoint before exiting; SIGKILL loses at most the steps since
the last checkpoint (``checkpoint_every`` steps or ``checkpoint_secs`` seconds).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sys
import time

import keras
import numpy as np
import tensorflow as tf

import gin
from ebmm_tf import (
    configurables,  # noqa: F401  (registers the Keras classes with gin)
    contract,
    diagnostics,
    distortions,  # noqa: F401  (registers the distortions with gin)
    rundir,
)
from ebmm_tf import data as data_lib
from ebmm_tf import meta as meta_lib
from ebmm_tf import metrics as metrics_lib
from ebmm_tf import run as run_lib
from ebmm_tf.memory import EnergyMemory
from ebmm_tf.meta import MetaLearner

logger = logging.getLogger("ebmm_tf.train")

__all__ = ["Experiment", "summary_text"]

# Names kept for code written against earlier versions; the owners are ebmm_tf.metrics and ebmm_tf.run.
error_metric = metrics_lib.error_metric
per_pattern_error = metrics_lib.per_pattern_error
parse_gin = run_lib.parse_gin
make_strategy = run_lib.make_strategy


def _ordered_weights(model):
    """``model.weights`` in an order that does not depend on which are trainable: Keras lists the trainable ones
    first, so an ``EnergyMemory`` with ``learn_theta_bar = False`` would list ``theta_bar`` after the rates. For an
    ``EnergyMemory``: ``theta_bar`` first, then the other weights; for other models ``weights`` as they are."""
    if not isinstance(model, EnergyMemory):
        return list(model.weights)
    theta_bar = list(model.theta_bar)
    ids = {id(v) for v in theta_bar}
    return theta_bar + [v for v in model.weights if id(v) not in ids]


@gin.configurable(module="ebmm_tf.train")
class Experiment:
    """One EBMM meta-training experiment: data, model, optimiser, checkpoints, summaries, validation.

    Args:
      workdir: output directory (see the module docstring); resumed if it holds checkpoints.
      energy: an ``EnergyNetwork`` class or factory (gin: ``@GatedRNNEnergy``), called with
        ``pattern_shape`` and the gin bindings. Required unless ``model`` builds a model without one.
      source: data source (``ebmm_tf.data.SOURCES``).
      num_patterns: N, patterns per written episode.
      distortion: a callable ``(patterns, seed) -> Distorted`` (``ebmm_tf.distortions``) used to make queries.
      num_steps: total meta-training steps (a resumed run continues up to this number).
      seed: seed of the model initialisation and of the training data stream.
      data_dir: dataset directory (default ``$EBMM_DATA_DIR``; see ``ebmm_tf.data``).
      sampler, num_classes: episode sampler (``uniform`` or A.7's ``correlated`` with ``num_classes``).
      validation_split, validation_episodes, validation_every, validation_seed: held-out episodes used to pick
        the best model. The default split, ``"validation"``, is held out of the dataset's training split (whole
        Omniglot characters, 1 in 10 images elsewhere; ``ebmm_tf.data.registry``), so that model selection
        never sees the test split; training then uses the rest (``"train_minus_validation"``); with any other
        validation split training uses the whole ``"train"`` split. Episodes come from a seed stream distinct from the
        training stream and from ``ebmm_tf.evaluate``'s default seed.
      checkpoint_every, checkpoint_secs, keep_checkpoints: checkpoint cadence (steps or seconds, whichever first).
      log_every, summary_every, image_every: cadences of log lines / scalar summaries / image grids (steps).
      strategy: ``auto``, ``default``, ``mirrored`` or ``multi_worker`` (see ``make_strategy``).
      deterministic: enable TF op determinism. Necessary, not sufficient: TensorFlow's graph executor still
        varies in the last float digits from about step 100 on; with ``MetaLearner.jit_compile = True`` (XLA; on
        in ``gin/binary_strings_cpu.gin``) two same-seed runs are bitwise identical (docs/performance.md,
        "Reproducibility").
      progress: show a progress bar.
      model: optional factory of the meta-trained model, called as
        ``model(energy_net_or_None, pattern_shape=..., data_range=...)``; default None = ``EnergyMemory``
        (gin: ``@EnergyMemory`` bindings). Baselines with EnergyMemory's interface (``write``, ``read``,
        ``recall``, ``reconstruction_loss``, ``memory_size``, ``data_range``, ``pattern_shape``), e.g.
        ``@DenoisingAutoEncoder`` or ``@MemoryNetwork`` of ``ebmm_tf.baselines``, are meta-trained the same way.
      init_from: path of a saved ``memory.keras`` (e.g. another run's ``best/memory.keras``) whose weights start
        this run (a warm start, e.g. from a memory trained at a smaller N). Used only when the run starts at step
        0; the architecture must match. The optimiser starts fresh. The validation before the first step then
        competes for ``best/`` (as with ``memory_from_data``), so a run that only gets worse keeps its start.
      init_write_rate_scale: with ``init_from``, multiply the loaded write rates of each term by a factor, as
        ``{"energy": 4.0, "gradient": 4.0}`` (a write step is a mean over the N patterns, so moving from N to 4N
        patterns at the same per-pattern step takes 4x the rates); a single number scales the energy and gradient terms.
      memory_from_data: at the start of a run (step 0), set the starting memory ``theta_bar`` from training
        patterns through the energy's ``starting_memory`` (``SlotEnergy``: one slot per pattern); with
        ``EnergyMemory.learn_theta_bar = False`` it then stays there.
      balance_write_rates: ``None`` or ``(energy_fraction, gradient_fraction)``: at the start of a run (step 0),
        set every write rate so that on the first training episode each writable layer's first write step of
        the energy term (of the gradient-norm term) moves that layer by the given fraction of
        ``||theta_bar||`` (``EnergyMemory.balance_write_rates``), whatever the scale of the two gradients.
      curriculum: numbers of patterns to train with before ``num_patterns``, increasing, e.g. ``(4, 8, 16, 32)``
        for a final N of 64. The run moves to the next N when the validation memory gain (at the current N) is
        at least ``curriculum_gain`` on ``curriculum_patience`` validations in a row, after at least
        ``curriculum_min_steps`` steps at that N, or anyway after ``curriculum_max_steps`` steps (None: never).
        On each move, the write rates of the terms in ``curriculum_rate_scale`` are multiplied by the ratio of
        the new N to the old (the write gradient is a mean over the N patterns). With ``curriculum_below_query``
        a validation passes only if its error is also below the query's (a memory that degrades the queries can
        show a gain too). Validation
        uses the current N,
        and the best model is the best at the final N once it is reached. The stage is checkpointed.
      mix_random_images: for image sources, the fraction of training steps whose episode is made of random
        binary images (each pixel 1 with probability ``mix_density``) distorted like the data: episodes that no
        memory-less denoiser can recall, so they reward using the memory. ``mix_warmup_steps``: the first steps
        use random images only.
      select_by: which validation picks ``best/``: ``"error"`` (lowest error), ``"memory_gain"`` (highest) or
        ``"loss"`` (lowest meta-training objective on the validation episodes, e.g. the variational autoencoder's
        negative ELBO, whose attractor read can end at one image for every query: its read error does not rank
        checkpoints; the validation then also logs ``loss``).
    """

    def __init__(
        self,
        workdir,
        energy=None,
        source=gin.REQUIRED,
        num_patterns=gin.REQUIRED,
        distortion=None,
        num_steps=1000,
        seed=run_lib.DEFAULTS["seed"],
        data_dir=run_lib.DEFAULTS["data_dir"],
        sampler=run_lib.DEFAULTS["sampler"],
        num_classes=run_lib.DEFAULTS["num_classes"],
        validation_split=run_lib.DEFAULTS["validation_split"],
        validation_episodes=20,
        validation_every=250,
        validation_seed=run_lib.DEFAULTS["validation_seed"],
        checkpoint_every=250,
        checkpoint_secs=300.0,
        keep_checkpoints=3,
        log_every=50,
        summary_every=10,
        image_every=500,
        strategy="auto",
        deterministic=True,
        progress=True,
        model=None,
        init_from=None,
        init_write_rate_scale=None,
        balance_write_rates=None,
        memory_from_data=False,
        curriculum=(),
        curriculum_gain=4.0,
        curriculum_patience=2,
        curriculum_min_steps=0,
        curriculum_max_steps=None,
        curriculum_rate_scale=("energy",),
        curriculum_below_query=True,
        mix_random_images=0.0,
        mix_warmup_steps=0,
        mix_density=0.5,
        select_by="error",
    ):
        if num_steps < 0:
            raise ValueError(f"num_steps must be >= 0, got {num_steps}")
        self.task = run_lib.Task(source, int(num_patterns), distortion, sampler, num_classes)
        self.workdir = os.path.abspath(workdir)
        self.source, self.num_patterns, self.distortion = source, int(num_patterns), distortion
        self.curriculum = [int(n) for n in curriculum or ()] + [self.num_patterns]
        if any(b <= a for a, b in zip(self.curriculum, self.curriculum[1:])) or self.curriculum[0] < 1:
            raise ValueError(f"curriculum must be increasing positive N below num_patterns, got {self.curriculum}")
        self.curriculum_gain, self.curriculum_patience = float(curriculum_gain), int(curriculum_patience)
        self.curriculum_min_steps = int(curriculum_min_steps)
        self.curriculum_max_steps = None if curriculum_max_steps is None else int(curriculum_max_steps)
        self.curriculum_rate_scale = tuple(curriculum_rate_scale or ())
        self.curriculum_below_query = bool(curriculum_below_query)
        if not 0.0 <= mix_random_images <= 1.0:
            raise ValueError(f"mix_random_images must be in [0, 1], got {mix_random_images}")
        if (mix_random_images or mix_warmup_steps) and source == "binary_strings":
            raise ValueError("mix_random_images / mix_warmup_steps apply to image sources only")
        if not 0.0 < mix_density < 1.0:
            raise ValueError(f"mix_density must be in (0, 1), got {mix_density}")
        self.mix_random_images, self.mix_warmup_steps = float(mix_random_images), int(mix_warmup_steps)
        self.mix_density = float(mix_density)
        if select_by not in ("error", "memory_gain", "loss"):
            raise ValueError(f"select_by must be 'error', 'memory_gain' or 'loss', got {select_by!r}")
        self.select_by = select_by
        self._validation_loss_fn = None
        self.num_steps, self.seed, self.data_dir = int(num_steps), int(seed), data_dir
        self.validation_split, self.validation_episodes = validation_split, int(validation_episodes)
        if validation_split not in data_lib.SPLITS or validation_split == "train_minus_validation":
            raise ValueError(f"validation_split must be 'validation', 'test' or 'train', got {validation_split!r}")
        self.train_split = "train_minus_validation" if validation_split == "validation" else "train"
        self.validation_every, self.validation_seed = int(validation_every), int(validation_seed)
        self.checkpoint_every, self.checkpoint_secs = int(checkpoint_every), float(checkpoint_secs)
        self.log_every, self.summary_every, self.image_every = int(log_every), int(summary_every), int(image_every)
        self.progress = progress
        self.clamps = self.task.clamps
        if deterministic:
            tf.config.experimental.enable_op_determinism()
            if tf.config.threading.get_inter_op_parallelism_threads() != 1:
                logger.warning(
                    "More than one inter-op thread: same-seed runs will differ in the last float digits early on (run "
                    "with --inter_op_threads=1, the CLI's default)."
                )
        keras.utils.set_random_seed(self.seed)
        if memory_from_data and init_from is not None:
            raise ValueError("Experiment.memory_from_data and Experiment.init_from both set theta_bar: use one")

        self._build_model(strategy, energy, model)
        # a start worth keeping (a warm start, a memory drawn from data) competes for best/; a random one does not
        self.start_competes = init_from is not None or bool(memory_from_data)
        self._restore(keep_checkpoints, init_from, init_write_rate_scale)
        self._prepare_data(balance_write_rates, memory_from_data)
        self._open_writers()

    # ---------------------------------------------------------------------- the phases of __init__
    def _build_model(self, strategy, energy, model):
        """Strategy, memory (``ebmm_tf.run.build_memory``) and meta-learner."""
        self.strategy = run_lib.make_strategy(strategy)
        self.num_replicas = self.strategy.num_replicas_in_sync
        self._resolver = getattr(self.strategy, "cluster_resolver", None)
        resolver = self._resolver
        self.is_chief = (
            resolver is None
            or resolver.task_type in (None, "chief")
            or (resolver.task_type == "worker" and resolver.task_id == 0)
        )
        with self.strategy.scope():
            self.memory = run_lib.build_memory(self.task, energy, model)
            self.learner = MetaLearner(self.memory, strategy=self.strategy)
        self.pattern_shape = self.task.pattern_shape
        logger.info(
            "%s on %s: memory size %d floats, %d trainable variables, %d replica(s).",
            self.memory.energy_net.name if isinstance(self.memory, EnergyMemory) else self.memory.name,
            self.source,
            self.memory.memory_size(),
            len(self.memory.trainable_variables),
            self.num_replicas,
        )

    def _legacy_theta_bar(self, ckpt_dir):
        """Checkpoints written before ``EnergyMemory`` put ``theta_bar`` in its own checkpoint entries held a fixed
        ``theta_bar`` (``learn_theta_bar = False``) under ``theta_bar/v<i>`` at the checkpoint's root: when the
        latest checkpoint is one of those, the same variables are also reachable there so that resuming restores
        them (a run resumed from one keeps writing that alias beside the new entries). Returns the extra
        ``tf.train.Checkpoint`` children (none for every other checkpoint)."""
        latest = tf.train.latest_checkpoint(ckpt_dir)
        if latest is None or not isinstance(self.memory, EnergyMemory):
            return {}
        if not any(name.startswith("theta_bar/v") for name, _ in tf.train.list_variables(latest)):
            return {}
        return {"theta_bar": tf.train.Checkpoint(**{f"v{i}": v for i, v in enumerate(self.memory.theta_bar)})}

    def _restore(self, keep_checkpoints, init_from, init_write_rate_scale):
        """Checkpoint manager; resumes from the last checkpoint, else warm-starts from ``init_from`` if given."""
        self.run_dir = rundir.RunDir(self.workdir)
        ckpt_dir = self.run_dir.checkpoints
        if not self.is_chief:  # every worker must save; non-chief workers write to a scratch directory
            ckpt_dir = self.run_dir.scratch(self._resolver.task_id)
        # curriculum state: stage index, step at which the stage began, validations in a row that passed
        self.stage = tf.Variable(0, dtype=tf.int64, trainable=False, name="curriculum_stage")
        self.stage_start = tf.Variable(0, dtype=tf.int64, trainable=False, name="curriculum_stage_start")
        self.streak = tf.Variable(0, dtype=tf.int64, trainable=False, name="curriculum_streak")
        self.checkpoint = tf.train.Checkpoint(
            memory=self.memory,
            optimizer=self.learner.optimizer,
            **self._legacy_theta_bar(ckpt_dir),
            curriculum=tf.train.Checkpoint(stage=self.stage, stage_start=self.stage_start, streak=self.streak),
            **({"rate_optimizer": self.learner.rate_optimizer} if self.learner.rate_optimizer is not None else {}),
        )
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, ckpt_dir, max_to_keep=keep_checkpoints, step_counter=self.learner.iterations
        )
        self.restored_step = 0
        if self.manager.latest_checkpoint:
            self.checkpoint.restore(self.manager.latest_checkpoint).assert_existing_objects_matched()
            self.restored_step = int(self.learner.iterations.numpy())
            logger.info("Resumed from %s (step %d).", self.manager.latest_checkpoint, self.restored_step)

        if init_from is not None and self.restored_step == 0:
            self._warm_start(init_from, init_write_rate_scale)
        elif init_write_rate_scale and init_from is None:
            raise ValueError("Experiment.init_write_rate_scale needs Experiment.init_from")

        if len(self.curriculum) > 1:
            logger.info(
                "Curriculum over N = %s: at stage %d (N = %d).",
                self.curriculum,
                int(self.stage),
                self.current_num_patterns,
            )

    def _prepare_data(self, balance_write_rates, memory_from_data=False):
        """Training and validation streams from the restored step; the starting memory from data and the balanced
        write rates of a new run."""
        self._make_data(self.restored_step)
        if memory_from_data and self.restored_step == 0:
            self._starting_memory_from_data()
        if balance_write_rates is not None and self.restored_step == 0:
            if not isinstance(self.memory, EnergyMemory):
                raise ValueError("Experiment.balance_write_rates needs an EnergyMemory")
            energy_fraction, gradient_fraction = balance_write_rates
            first = next(iter(self._episodes(self.train_split, self.seed, 0)))
            rates = self.memory.balance_write_rates(first["patterns"], energy_fraction, gradient_fraction)
            logger.info("Balanced write rates (energy, gradient) per layer: %s", np.round(rates, 6).tolist())
        self._probe = diagnostics.MemoryUseProbe(self.memory, self.source, self.clamps)
        self.best = self._read_best()

    def _open_writers(self):
        """The operative config and the TensorBoard writers (chief only)."""
        if self.is_chief:
            rundir.atomic_write_text(self.run_dir.config, gin.operative_config_str())
            self.train_writer = tf.summary.create_file_writer(self.run_dir.summaries("train"))
            self.valid_writer = tf.summary.create_file_writer(self.run_dir.summaries("validation"))
        else:
            self.train_writer = self.valid_writer = tf.summary.create_noop_writer()

    def _warm_start(self, path, rate_scale):
        """Copies the weights of the saved model at ``path`` into ``self.memory`` (same architecture)."""
        if not os.path.exists(path):
            raise FileNotFoundError(f"Experiment.init_from: {path} does not exist")
        source = rundir.load_saved_model(path)
        src, dst = _ordered_weights(source), _ordered_weights(self.memory)
        if [tuple(v.shape) for v in src] != [tuple(v.shape) for v in dst]:
            raise ValueError(
                f"Experiment.init_from: {path} has weights {[tuple(v.shape) for v in src]}, this run's model "
                f"{[tuple(v.shape) for v in dst]}; the architectures must match."
            )
        for s, d in zip(src, dst):
            d.assign(s)
        if rate_scale:
            self.memory.scale_write_rates(rate_scale)
        logger.info("Warm start from %s (write rates scaled by %s).", path, rate_scale or 1)

    # ====================================================================== data
    @property
    def current_num_patterns(self) -> int:
        """N of the current curriculum stage (``num_patterns`` without a curriculum)."""
        return self.curriculum[min(int(self.stage.numpy()), len(self.curriculum) - 1)]

    def _make_data(self, step):
        self.train_data = self._distributed_episodes(self.train_split, self.seed, start=step * self.num_replicas)
        self.validation_data = list(
            self._episodes(self.validation_split, self.validation_seed).take(self.validation_episodes)
        )

    def _random_image_episode(self, index, num_patterns):
        """Episode ``index`` of the random-binary-image stream (``mix_random_images``)."""
        s_img, s_dist = data_lib.episode_seeds(self.seed, index, stream=7919)
        shape = (num_patterns,) + self.pattern_shape
        patterns = tf.cast(tf.random.stateless_uniform(shape, seed=s_img) < self.mix_density, tf.float32)
        if self.distortion is None:
            return {"patterns": patterns, "queries": patterns, "clamp": tf.zeros_like(patterns)}
        d = self.distortion(patterns, s_dist)
        return {"patterns": patterns, "queries": tf.cast(d.query, tf.float32), "clamp": tf.cast(d.clamp, tf.float32)}

    def _episodes(self, split, seed, start=0, mix=False):
        """Episodes of ``split`` at the current N; ``mix``: with the random-image episodes (training only)."""
        num_patterns = self.current_num_patterns
        ds = self.task.with_num_patterns(num_patterns).episodes(split, seed, self.data_dir, start=start)
        keys = ("patterns", "queries", "clamp") if self.clamps else ("patterns", "queries")
        if mix and (self.mix_random_images > 0 or self.mix_warmup_steps > 0):
            frac, warmup = self.mix_random_images, self.mix_warmup_steps

            def mixed(ep, index):
                u = tf.random.stateless_uniform([], seed=tf.stack([tf.constant(self.seed + 104_729, tf.int64), index]))
                use_random = tf.logical_or(index < warmup, u < frac)
                rnd = self._random_image_episode(index, num_patterns)
                return {k: tf.where(use_random, rnd[k], ep[k]) for k in keys}

            counter = tf.data.Dataset.counter(start=int(start), dtype=tf.int64)
            return tf.data.Dataset.zip((ds, counter)).map(mixed)
        return ds.map(lambda ep: {k: ep[k] for k in keys})

    def _distributed_episodes(self, split, seed, start):
        """One episode per replica and step; episode ``start + step * replicas + replica`` of the stream."""

        def dataset_fn(ctx):
            ds = self._episodes(split, seed, start + ctx.input_pipeline_id, mix=True)
            return ds.shard(ctx.num_input_pipelines, 0) if ctx.num_input_pipelines > 1 else ds

        options = tf.distribute.InputOptions(experimental_fetch_to_device=True)
        return iter(self.strategy.distribute_datasets_from_function(dataset_fn, options))

    # ====================================================================== validation
    def validate(self, step):
        """Validation error, query error, energies and the memory-use diagnostics (``ebmm_tf.diagnostics``)."""
        summary = metrics_lib.ErrorSummary()
        query_summary = metrics_lib.ErrorSummary()
        energies = {}
        first = []
        # B.4's objective from the probe's own write and read (the same as meta_loss's); a memory with its own
        # stochastic objective (the VAE's ELBO) needs its own pass, validation_loss
        losses = [] if self.select_by == "loss" and not isinstance(self.memory, contract.OwnObjective) else None

        def collect(episode, own):
            if losses is not None:
                losses.append(float(self.memory.reconstruction_loss(episode["patterns"], own["iterates"])[0]))
            summary.accumulate(own["errors"][-1].numpy())
            query_summary.accumulate(own["query_errors"].numpy())
            for k in ("stored", "distorted", "retrieved"):
                if f"energy_{k}" in own:
                    energies.setdefault(k, []).append(own[f"energy_{k}"].numpy())
            if not first:
                first.append((episode, own["iterates"]))

        use = self._probe.run(self.validation_data, collect)
        result = summary.result()
        result["query_mean"] = query_summary.result()["mean"]
        result["metric"] = self.task.metric
        result["step"] = int(step)
        result["N"] = self.current_num_patterns
        result.update(use)
        if self.select_by == "loss":
            result["loss"] = float(np.mean(losses)) if losses is not None else self.validation_loss()
        with self.valid_writer.as_default(step=step):
            if "loss" in result:
                tf.summary.scalar("meta_loss/total", result["loss"])
            for k in ("mean", "p5", "p95"):
                tf.summary.scalar(f"error/{result['metric']}_{k}", result[k])
            tf.summary.scalar(f"error/{result['metric']}_query", result["query_mean"])
            for k in ("memory_gain", "memory_gain_p5", "cross_mean", "energy_auc", "write_cosine", "write_relative"):
                if k in result and np.isfinite(result[k]):
                    tf.summary.scalar(f"memory_use/{k}", result[k])
            for name, layer in result.get("write_layers", {}).items():
                tf.summary.scalar(f"memory_use/relative_write/{name}", layer["relative_write"])
                tf.summary.scalar(f"memory_use/write_cosine/{name}", layer["write_cosine"])
            tf.summary.scalar("memory_use/num_patterns", result["N"])
            for k, v in energies.items():
                tf.summary.scalar(f"energy/{k}", float(np.mean(np.concatenate(v))))
                tf.summary.histogram(f"energy/{k}", np.concatenate(v))
            if len(self.pattern_shape) == 3 and (
                self.image_every and step % self.image_every == 0 or step == self.num_steps
            ):
                tf.summary.image("retrieval", self._retrieval_grid(*first[0]), step=step)
        return result

    def _starting_memory_from_data(self):
        """``theta_bar`` from training patterns (``energy.starting_memory``): enough episodes of the training
        stream under their own seed (so the training episodes are unchanged)."""
        energy = getattr(self.memory, "energy_net", None)
        need = getattr(energy, "starting_memory_size", None)
        if need is None:
            name = type(energy or self.memory).__name__
            raise ValueError(
                f"Experiment.memory_from_data needs an energy with starting_memory(patterns) and "
                f"starting_memory_size (how many patterns it takes), not {name}"
            )
        need, patterns = int(need), []
        for episode in self._episodes(self.train_split, self.seed + 7919, 0):
            patterns.append(episode["patterns"])
            if sum(int(p.shape[0]) for p in patterns) >= need:
                break
        self.memory.set_starting_memory(energy.starting_memory(tf.concat(patterns, axis=0)))
        logger.info("Starting memory from %d training patterns.", need)

    def validation_loss(self):
        """Mean meta-training objective (``ebmm_tf.meta.meta_loss``) over the validation episodes; a stochastic
        objective (the VAE's ELBO) draws the same noise for episode ``i`` at every validation (seed ``i``)."""
        if self._validation_loss_fn is None:
            self._validation_loss_fn = tf.function(
                lambda episode, seed: meta_lib.meta_loss(self.memory, episode, seed=seed)[0]
            )
        losses = [
            self._validation_loss_fn(episode, tf.constant(i, tf.int64)).numpy()
            for i, episode in enumerate(self.validation_data)
        ]
        return float(np.mean(losses))

    def _retrieval_grid(self, episode, iterates, rows=4):
        """Figure 2 style grid: each row is original, query, then every read iterate."""
        cols = [episode["patterns"][:rows], episode["queries"][:rows]] + [it[:rows] for it in iterates]
        lo, hi = self.memory.data_range
        cols = [(tf.convert_to_tensor(c) - lo) / (hi - lo) for c in cols]
        grid = tf.concat([tf.concat(list(tf.unstack(c)), axis=0) for c in cols], axis=1)  # [rows*H, cols*W, C]
        return tf.clip_by_value(grid, 0.0, 1.0)[None]

    # ====================================================================== bookkeeping
    def _read_best(self):
        path = self.run_dir.best_metrics
        if os.path.exists(path):
            with open(path) as f:
                return json.load(f)
        return None

    @property
    def _select_key(self):
        return {"error": "mean", "loss": "loss"}.get(self.select_by, self.select_by)

    def _maybe_save_best(self, step, result):
        if not self.is_chief:
            return
        better = (
            self.best is None
            or self.best.get("N", self.num_patterns) != result["N"]
            or (
                result["memory_gain"] > self.best.get("memory_gain", -np.inf)
                if self.select_by == "memory_gain"
                else result[self._select_key] < self.best.get(self._select_key, np.inf)
            )
        )
        if better:
            self.best = {"step": step, **result}
            rundir.atomic_save_keras(self.memory, self.run_dir.best_model)
            rundir.atomic_write_text(self.run_dir.best_metrics, json.dumps(self.best, indent=2))

    def _log_metrics(self, record):
        if self.is_chief:
            with open(self.run_dir.metrics_log, "a") as f:
                f.write(json.dumps(record) + "\n")

    def _truncate_metrics_log(self):
        """After a resume, drop log lines of steps that the restored checkpoint does not include."""
        path = self.run_dir.metrics_log
        if not self.is_chief or not os.path.exists(path):
            return
        with open(path) as f:
            lines = [line for line in f if line.strip() and json.loads(line)["step"] <= self.restored_step]
        rundir.atomic_write_text(path, "".join(lines))

    def _rate_summaries(self):
        mem = self.memory
        rates = mem.write_rates().numpy()
        for t in range(rates.shape[0]):
            for layer in range(rates.shape[1]):
                for term, name in enumerate(("energy", "gradient", "prior")):
                    tf.summary.scalar(f"write_rate/step{t + 1}/layer{layer}/{name}", rates[t, layer, term])
        tf.summary.scalar("write/alpha", mem.alpha())
        tf.summary.scalar("write/beta", mem.beta())
        for k, (g, p) in enumerate(zip(mem.read_steps_schedule().numpy(), mem.momentum_schedule().numpy())):
            tf.summary.scalar(f"read/step_size_{k + 1}", g)
            tf.summary.scalar(f"read/momentum_{k + 1}", p)

    def _maybe_advance(self, step, result):
        """Moves to the next curriculum stage when the memory gain criterion (or the step limit) says so."""
        stage = int(self.stage.numpy())
        if stage >= len(self.curriculum) - 1:
            return
        gain = result.get("memory_gain", float("nan"))
        # a gain only counts while the memory also recalls better than the query itself (a memory that makes the
        # queries worse can still show a gain, e.g. right after a warm-up on random images)
        ok = np.isfinite(gain) and gain >= self.curriculum_gain
        ok = ok and (result["mean"] < result["query_mean"] or not self.curriculum_below_query)
        self.streak.assign(self.streak + 1 if ok else 0)
        at_stage = step - int(self.stage_start.numpy())
        passed = int(self.streak.numpy()) >= self.curriculum_patience and at_stage >= self.curriculum_min_steps
        forced = self.curriculum_max_steps is not None and at_stage >= self.curriculum_max_steps
        if not (passed or forced):
            return
        old_n, new_n = self.curriculum[stage], self.curriculum[stage + 1]
        self.stage.assign(stage + 1)
        self.stage_start.assign(step)
        self.streak.assign(0)
        if self.curriculum_rate_scale and isinstance(self.memory, EnergyMemory):
            self.memory.scale_write_rates({t: new_n / old_n for t in self.curriculum_rate_scale})
        self._make_data(step)
        logger.info(
            "step %d: curriculum N %d -> %d (%s after %d steps at N = %d).",
            step,
            old_n,
            new_n,
            "memory gain criterion met" if passed else "step limit",
            at_stage,
            old_n,
        )
        self._log_metrics({"step": step, "curriculum": {"from": old_n, "to": new_n, "forced": not passed}})
        self.save_checkpoint()

    def save_checkpoint(self):
        step = int(self.learner.iterations.numpy())
        path = self.manager.save(checkpoint_number=step)
        logger.info("Saved checkpoint %s.", path)
        return path

    # ====================================================================== loop
    def run(self):
        """Meta-trains up to ``num_steps``; returns a summary dict (first/last validation, best, wall time).

        Phases: resume (``restored_step``), then per step ``_train_one_step``, ``_write_summaries``,
        ``_validate_and_select`` and ``_maybe_checkpoint``; ``_finish`` saves what a stopped run keeps.
        """
        self._truncate_metrics_log()
        step = self.restored_step
        start_time = time.time()
        first_validation = None
        if step == 0 and self.validation_every:
            # a warm start competes for best/: a run whose training only makes it worse keeps its start
            first_validation = self._validate_and_select(0, select=self.start_competes, advance=False)
        last_validation = first_validation
        stop_signal = []

        def on_signal(signum, _frame):
            stop_signal.append(signum)

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        bar = self._progress_bar(step)
        self._last_ckpt = (time.time(), step)
        try:
            while step < self.num_steps and not stop_signal:
                step, record = self._train_one_step(step)
                self._write_summaries(step, record, bar)
                if self.validation_every and (step % self.validation_every == 0 or step == self.num_steps):
                    last_validation = self._validate_and_select(step)
                self._maybe_checkpoint(step)
        finally:
            if bar is not None:
                bar.close()
            for s, handler in previous.items():
                signal.signal(s, handler)
        self._finish(step)
        if stop_signal:
            logger.warning("Stopped by signal %d at step %d; checkpoint saved, rerun to resume.", stop_signal[0], step)
        return {
            "step": step,
            "first_validation": first_validation,
            "last_validation": last_validation,
            "best": self.best,
            "wall_seconds": time.time() - start_time,
            "interrupted": bool(stop_signal),
        }

    # ---------------------------------------------------------------------- the phases of run()
    def _progress_bar(self, step):
        if not (self.progress and self.is_chief):
            return None
        from tqdm.auto import tqdm

        return tqdm(
            total=self.num_steps,
            initial=step,
            unit="step",
            dynamic_ncols=True,
            mininterval=2.0,
            desc="meta-training",
            file=sys.stderr,
        )

    def _train_one_step(self, step):
        """One meta-step on the next episodes; returns ``(step + 1, record)`` (record logged to metrics.jsonl)."""
        episodes = next(self.train_data)
        try:
            m = self.learner.train_step(episodes)
        except FloatingPointError as err:
            raise FloatingPointError(
                f"{err} Training stopped at step {step + 1}; the last good checkpoint is "
                f"{self.manager.latest_checkpoint} (nothing after it was saved)."
            ) from None
        step += 1
        record = {
            "step": step,
            "loss": float(m["loss"]),
            "grad_norm": float(m["grad_norm"]),
            "per_step": [float(v) for v in m["per_step"].numpy()],
        }
        if m.get("skipped"):
            record["skipped"] = True
            logger.warning(
                "step %d: meta-gradient norm %.4g is a spike (MetaLearner.skip_spikes = %s x the recent median); "
                "not applied (%d skipped so far).",
                step,
                record["grad_norm"],
                self.learner.skip_spikes,
                self.learner.skipped_steps,
            )
        self._log_metrics(record)
        return step, record

    def _write_summaries(self, step, record, bar):
        """TensorBoard scalars every ``summary_every`` steps, the progress bar, a log line every ``log_every``."""
        loss = record["loss"]
        if self.summary_every and step % self.summary_every == 0:
            with self.train_writer.as_default(step=step):
                tf.summary.scalar("meta_loss/total", loss)
                # a model with its own objective (contract.OwnObjective) reports the terms of that objective
                part = "term" if isinstance(self.memory, contract.OwnObjective) else "read_step"
                for k, v in enumerate(record["per_step"]):
                    tf.summary.scalar(f"meta_loss/{part}_{k + 1}", v)
                tf.summary.scalar("grad_norm", record["grad_norm"])
                if isinstance(self.memory, EnergyMemory):
                    self._rate_summaries()
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
        if self.log_every and step % self.log_every == 0:
            logger.info("step %d: meta-loss %.4f, grad norm %.3f", step, loss, record["grad_norm"])

    def _validate_and_select(self, step, select=True, advance=True):
        """Validates, logs the result; with ``select`` keeps the best model, with ``advance`` moves the curriculum."""
        result = self.validate(step)
        self._log_metrics({"step": step, "validation": result})
        if select:
            self._maybe_save_best(step, result)
        logger.info(
            "step %d: validation %s error %.3f [p5 %.3f, p95 %.3f] (query %.3f, N = %d); %s",
            step,
            result["metric"],
            result["mean"],
            result["p5"],
            result["p95"],
            result["query_mean"],
            result["N"],
            diagnostics.describe(result, result["metric"]),
        )
        if advance:
            self._maybe_advance(step, result)
        return result

    def _maybe_checkpoint(self, step):
        """A checkpoint every ``checkpoint_every`` steps or ``checkpoint_secs`` seconds."""
        last_time, _ = self._last_ckpt
        if step % self.checkpoint_every == 0 or time.time() - last_time > self.checkpoint_secs:
            self.save_checkpoint()
            self._last_ckpt = (time.time(), step)

    def _finish(self, step):
        """Last checkpoint, the latest model and config, flushed summaries (after a signal too)."""
        if step != self._last_ckpt[1]:
            self.save_checkpoint()
        if not self.is_chief:  # non-chief workers saved only so that the collective save could proceed
            shutil.rmtree(self.manager.directory, ignore_errors=True)
        if self.is_chief:
            rundir.atomic_save_keras(self.memory, self.run_dir.latest_model)
            rundir.atomic_write_text(self.run_dir.config, gin.operative_config_str())
        self.train_writer.flush()
        self.valid_writer.flush()


def summary_text(result, workdir):
    lines = [f"Finished at step {result['step']} in {result['wall_seconds']:.0f} s."]
    first, last = result["first_validation"], result["last_validation"]
    if first:
        lines.append(
            f"Validation {first['metric']} error at step 0: {first['mean']:.3f} (query: {first['query_mean']:.3f})"
        )
    if last:
        lines.append(
            f"Validation {last['metric']} error at step {last['step']}: {last['mean']:.3f} "
            f"[p5 {last['p5']:.3f}, p95 {last['p95']:.3f}]"
        )
    if result["best"]:
        lines.append(
            f"Best: {result['best']['mean']:.3f} at step {result['best']['step']} -> {workdir}/best/memory.keras"
        )
    lines.append(f"TensorBoard: tensorboard --logdir {workdir}/tb")
    return "\n".join(lines)
