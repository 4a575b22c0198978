r"""Evaluation of a meta-trained memory on the test split (paper Section 4, Appendix A "Error bars").

CLI::

    python -m ebmm_tf.evaluate --workdir=DIR [--num_batches=1000] [--gin_param=...] [--data_dir=...]
        [--seed=20011] [--output_prefix=eval] [--figures] [--checkpoint=auto|best|latest] [--split=test]

Python::

    from ebmm_tf.evaluate import evaluate
    result = evaluate("runs/omniglot_conv_cpu", num_batches=1000)   # also writes DIR/eval.json, DIR/eval.md

What it does:

1. restores ``DIR/best/memory.keras`` (fallback ``DIR/latest/memory.keras``; ``FileNotFoundError`` if neither
   exists). The model is the one the run saved (EBMM or a baseline of ``ebmm_tf.baselines``); ``--gin_param``
   does not change it.
2. re-parses ``DIR/operative_config.gin`` plus the ``--gin_param`` overrides to get the *protocol*: source, N,
   distortion, sampler. Overrides make the generalization checks of A.5 / A.6 without fine-tuning, e.g.
   ``--gin_param='BlockNoise.size = 20'``, ``--gin_param='Experiment.distortion = @SaltAndPepper()'
   --gin_param='SaltAndPepper.rate = 0.1'`` or ``--gin_param='Experiment.source = "mnist"'`` (offline there is
   no MNIST; ``"sklearn_digits"`` is a small labelled **stand-in**, for tests only). The gin configuration
   of the process is cleared before and after.
3. runs the protocol on ``num_batches`` episodes of the **test split** drawn from the seed stream ``seed``
   (default ``EVAL_SEED``; it must differ from the run's training seed and validation seed, which would
   reuse training or model-selection episodes): each episode is written into a fresh memory, the N distorted
   queries are read (clamping the known bits for binary strings), and the per-pattern error of the last read
   iterate is taken (Hamming after binarization for binary sources, squared error otherwise; the same
   ``ebmm_tf.metrics.per_pattern_error`` as validation). The per-episode step is a ``tf.function``.
4. writes ``DIR/<prefix>.json`` (mean over all patterns, 5th/95th percentiles of the per-batch means, the same
   for the queries themselves, per-read-iterate means, metric, memory size, N, distortion, checkpoint step,
   seed, data provenance, wall time, hardware) and ``DIR/<prefix>.md`` (a short markdown table). With
   ``figures``: ``<prefix>_retrieval.png`` (Figures 2 / 4), and for models with an energy
   ``<prefix>_energy.png`` + ``<prefix>_energy.json`` (Figure 6: stored, other test, distorted stored and
   out-of-distribution patterns; see ``ebmm_tf.analysis``).

``--output_prefix`` keeps several evaluations of one workdir apart (e.g. ``eval_block20``, ``eval_sp10``); an
absolute prefix writes outside the workdir.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import math
import os
import platform
import sys
import time

import numpy as np

from ebmm_tf import eval_figures, rundir
from ebmm_tf import run as run_lib

logger = logging.getLogger("ebmm_tf.evaluate")

# Names kept for code written against earlier versions; the owner is ebmm_tf.rundir.
load_model = rundir.load_saved_model
resolve_run_dir = rundir.resolve_run_dir
checkpoint_step = rundir.checkpoint_step


def _episodes(protocol, split, seed, data_dir, with_indices=False):
    """``protocol.episodes(...)`` under its earlier name (the shipped models' tests replay episodes with it)."""
    return protocol.episodes(split, seed, data_dir, with_indices=with_indices)


__all__ = [
    "EVAL_SEED",
    "Protocol",
    "evaluate",
    "evaluate_model",
    "load_protocol",
    "model_family",
]

# Seed of the evaluation episode stream: distinct from Experiment's defaults (training seed 0, validation seed
# 10_007), so evaluation never reuses the episodes that selected the best checkpoint.
EVAL_SEED = 20_011


@dataclasses.dataclass(frozen=True)
class Protocol(run_lib.Task):
    """What an evaluation measures: the run's ``ebmm_tf.run.Task`` (read from its operative config and
    overrides) and the seeds and split the run trained and selected on, which the evaluation stream must avoid.

    Attributes (beyond ``Task``'s): data_dir (the run's; None: ``$EBMM_DATA_DIR``), train_seed,
    validation_seed, validation_split.
    """

    data_dir: str | None = None
    train_seed: int | None = None
    validation_seed: int | None = None
    validation_split: str | None = None


# ====================================================================== checkpoints and configuration
def load_protocol(workdir, gin_params=()) -> Protocol:
    """Parses ``DIR/operative_config.gin`` with ``gin_params`` overrides; returns the evaluation ``Protocol``.

    Clears the process' gin configuration before and after.
    """
    import gin

    rundir.register_model_classes()
    config = os.path.join(workdir, "operative_config.gin")
    if not os.path.exists(config):
        raise FileNotFoundError(f"{config} not found: is {workdir} a workdir of python -m ebmm_tf.train?")
    gin.clear_config()
    try:
        run_lib.parse_gin([config], list(gin_params))
        try:
            run = run_lib.config_from_gin()
        except ValueError as e:
            raise ValueError(f"{config}: {e}") from None
        fields = {f.name: getattr(run.task, f.name) for f in dataclasses.fields(run.task)}
        return Protocol(
            **fields,
            data_dir=run.data_dir,
            train_seed=run.seed,
            validation_seed=run.validation_seed,
            validation_split=run.validation_split,
        )
    finally:
        gin.clear_config()


def model_family(model) -> str:
    """A label for plots: ``"EBMM <energy class>"`` or the baseline's class name."""
    energy = getattr(model, "energy_net", None)
    if energy is not None:
        return f"EBMM {type(energy).__name__}"
    return type(model).__name__


def _hardware():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if names:
            cpu = names[0]
    except OSError:
        pass
    import tensorflow as tf

    gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "gpus": gpus,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
    }


# ====================================================================== the protocol
def evaluate_model(
    model,
    protocol: Protocol,
    num_batches=1000,
    seed=EVAL_SEED,
    split="test",
    data_dir=None,
    progress=True,
    keep_first=False,
    memory_use=True,
):
    """Runs the protocol with ``model`` on ``num_batches`` episodes of ``split``; returns the summary dict.

    ``model`` needs ``write``, ``read`` (list of iterates) and ``memory_size()``. Keys: ``mean``, ``p5``, ``p95``
    (percentiles of the per-batch means), ``num_batches``, ``num_patterns`` (= num_batches * N), ``query_mean``,
    ``query_p5``, ``query_p95``, ``per_iterate_mean`` [K], ``batch_means`` [num_batches], ``metric``, ``N``,
    ``memory_size``, ``seed``, ``split``, ``wall_seconds``. With ``memory_use`` (default) also the memory-use
    diagnostics of ``ebmm_tf.diagnostics`` (each episode's queries read from the previous episode's memory
    too): ``memory_gain`` [``memory_gain_p5``, ``memory_gain_p95``], ``cross_mean``, ``uses_memory``,
    ``energy_auc`` and ``write_layers`` / ``write_cosine`` / ``write_relative``. With ``keep_first`` the first
    episode is returned under the private key ``_first_episode`` (for figures).
    """
    from ebmm_tf import diagnostics
    from ebmm_tf import metrics as metrics_lib

    if num_batches < 1:
        raise ValueError(f"num_batches must be >= 1, got {num_batches}")
    start = time.time()
    data_dir = data_dir or protocol.data_dir
    ds = protocol.episodes(split, seed, data_dir).take(int(num_batches))
    probe = diagnostics.MemoryUseProbe(model, protocol.source, protocol.clamps)
    summary, query_summary = metrics_lib.ErrorSummary(), metrics_lib.ErrorSummary()
    sums = []
    first = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=int(num_batches), unit="batch", desc="evaluating", dynamic_ncols=True, file=sys.stderr)

    def collect(episode, own):
        errors = own["errors"].numpy()
        summary.accumulate(errors[-1])
        query_summary.accumulate(own["query_errors"].numpy())
        sums.append(errors.sum(axis=1))
        if keep_first and not first:
            first.append({k: v.numpy() for k, v in episode.items()})
        if bar is not None:
            bar.update(1)
            bar.set_postfix(error=f"{summary.result()['mean']:.3f}", refresh=False)

    try:
        if memory_use:
            use = probe.run(ds, collect)
        else:
            use = {}
            for episode in ds:
                collect(episode, probe.own(episode))
    finally:
        if bar is not None:
            bar.close()
    iterate_sums = np.sum(sums, axis=0)
    first = first[0] if first else None
    result = summary.result()
    q = query_summary.result()
    result.update(
        query_mean=q["mean"],
        query_p5=q["p5"],
        query_p95=q["p95"],
        per_iterate_mean=[float(v) for v in iterate_sums / result["num_patterns"]],
        batch_means=[float(v) for v in summary.batch_means],
        metric=protocol.metric,
        N=protocol.num_patterns,
        memory_size=int(model.memory_size()),
        seed=int(seed),
        split=split,
        **use,
        wall_seconds=time.time() - start,
    )
    if keep_first:
        result["_first_episode"] = first
    return result


def _check_seed(protocol: Protocol, seed, split):
    if protocol.train_seed is not None and seed == protocol.train_seed:
        raise ValueError(
            f"seed {seed} is the run's training seed (Experiment.seed): pick another --seed "
            f"(default {EVAL_SEED}); binary-string episodes would even repeat the training episodes."
        )
    same_episodes = split == protocol.validation_split or protocol.source == "binary_strings"  # generated: no split
    if protocol.validation_seed is not None and seed == protocol.validation_seed and same_episodes:
        raise ValueError(
            f"seed {seed} is the run's validation seed on the {split} split: these episodes selected the best "
            f"checkpoint. Pick another --seed (default {EVAL_SEED})."
        )


def _output_path(workdir, prefix, suffix):
    base = prefix if os.path.isabs(prefix) else os.path.join(workdir, prefix)
    return base + suffix


def _markdown(r):
    lines = [
        f"# Evaluation of `{r['workdir']}`",
        "",
        f"{r['model_family']} ({r['model']}), memory size {r['memory_size']} floats, checkpoint "
        f"{r['checkpoint_kind']} (step {r['checkpoint_step']}).",
        f"Protocol: {r['source']} {r['split']} split{' (STAND-IN data)' if r['dataset'].get('standin') else ''}, "
        f"N = {r['N']}, sampler {r['sampler']}, distortion `{r['distortion']}`; {r['num_batches']} batches "
        f"({r['num_patterns']} patterns), seed {r['seed']}; {r['wall_seconds']:.0f} s.",
        "",
        f"| {r['metric']} error | mean | p5 | p95 |",
        "|---|---|---|---|",
        f"| retrieved | {r['mean']:.3f} | {r['p5']:.3f} | {r['p95']:.3f} |",
        f"| query (no retrieval) | {r['query_mean']:.3f} | {r['query_p5']:.3f} | {r['query_p95']:.3f} |",
        "",
        "Per read iterate (mean): " + ", ".join(f"{v:.3f}" for v in r["per_iterate_mean"]),
    ]
    if r.get("memory_pairs"):
        lines += [
            "",
            "Memory use (each batch's queries also read from another batch's memory):",
            "",
            "| | value |",
            "|---|---|",
            f"| {r['metric']} error from another batch's memory | {r['cross_mean']:.3f} |",
            f"| memory gain (other - own) [p5, p95] | {r['memory_gain']:.3f} [{r['memory_gain_p5']:.3f}, "
            f"{r['memory_gain_p95']:.3f}] |",
        ]
        if "energy_auc" in r:
            lines.append(f"| energy AUC, stored vs non-stored | {r['energy_auc']:.3f} |")
        for name, layer in r.get("write_layers", {}).items():
            lines.append(
                f"| write of `{name}`: relative size, cosine between two batches | {layer['relative_write']:.3g}, "
                f"{layer['write_cosine']:.3f} |"
            )
        lines += [
            "",
            "Uses its memory."
            if r["uses_memory"]
            else "**Does not use its memory**: recall from another batch's memory is as good as from its own.",
        ]
    if r.get("gin_params"):
        lines += ["", "Overrides: " + "; ".join(f"`{p}`" for p in r["gin_params"])]
    if r.get("figures"):
        lines += ["", "Figures: " + ", ".join(f"`{os.path.basename(p)}`" for p in r["figures"].values())]
    return "\n".join(lines) + "\n"


def evaluate(
    workdir,
    num_batches=1000,
    gin_params=(),
    data_dir=None,
    seed=EVAL_SEED,
    output_prefix="eval",
    figures=False,
    figure_batches=10,
    checkpoint="auto",
    split="test",
    progress=True,
    command=None,
    memory_use=True,
):
    """Evaluates the run in ``workdir`` (see the module docstring); writes ``<prefix>.json`` / ``.md``.

    Returns the dict written to ``<prefix>.json`` (plus ``batch_means``, kept in the JSON too).
    """
    from ebmm_tf import data as data_lib

    start = time.time()
    workdir = rundir.resolve_run_dir(os.path.abspath(workdir))
    path, kind = rundir.find_saved_model(workdir, checkpoint)
    protocol = load_protocol(workdir, gin_params)
    _check_seed(protocol, seed, split)
    model = rundir.load_saved_model(path)
    shape = tuple(model.pattern_shape)
    expected = data_lib.pattern_shape(protocol.source)
    if tuple(expected) != shape:
        raise ValueError(f"the model stores patterns of shape {shape}, but {protocol.source} has {tuple(expected)}")
    data_dir = data_dir or protocol.data_dir
    logger.info(
        "Evaluating %s (%s, step %s) on %s/%s: N = %d, %s, %d batches, seed %d.",
        path,
        type(model).__name__,
        rundir.checkpoint_step(workdir, kind),
        protocol.source,
        split,
        protocol.num_patterns,
        protocol.distortion,
        num_batches,
        seed,
    )
    result = evaluate_model(
        model,
        protocol,
        num_batches,
        seed=seed,
        split=split,
        data_dir=data_dir,
        progress=progress,
        keep_first=figures,
        memory_use=memory_use,
    )
    first = result.pop("_first_episode", None)
    info = data_lib.dataset_info(protocol.source, split, data_dir)
    record = {
        "workdir": workdir,
        "checkpoint": path,
        "checkpoint_kind": kind,
        "checkpoint_step": rundir.checkpoint_step(workdir, kind),
        "model": type(model).__name__,
        "model_family": model_family(model),
        "source": protocol.source,
        "dataset": {k: info.get(k) for k in ("origin", "num_examples", "standin", "description")},
        "sampler": protocol.sampler,
        "num_classes": protocol.num_classes if protocol.sampler == "correlated" else None,
        "distortion": repr(protocol.distortion),
        "distortion_params": _distortion_params(protocol.distortion),
        "gin_params": list(gin_params),
        **result,
        "hardware": _hardware(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
    }
    if figures:
        record["figures"] = eval_figures.write_figures(
            model,
            protocol,
            first,
            _output_path(workdir, output_prefix, ""),
            model_family(model),
            seed=seed,
            split=split,
            data_dir=data_dir,
            figure_batches=figure_batches,
        )
    record["eval_seconds"] = result["wall_seconds"]
    record["wall_seconds"] = time.time() - start  # including model loading and figures
    rundir.atomic_write_json(_output_path(workdir, output_prefix, ".json"), record)
    rundir.atomic_write_text(_output_path(workdir, output_prefix, ".md"), _markdown(record))
    return record


def _distortion_params(distortion):
    if distortion is None:
        return None
    params = {"type": type(distortion).__name__}
    for k, v in vars(distortion).items():
        if not k.startswith("_"):
            params[k] = list(v) if isinstance(v, tuple) else v
    return params


# ====================================================================== figures
# ====================================================================== CLI
def _define_flags():
    from absl import flags

    flags.DEFINE_string(
        "workdir",
        None,
        "workdir of python -m ebmm_tf.train, or a SavedModel exported from one (e.g. export/pretrained/NAME/1)",
    )
    flags.DEFINE_multi_string(
        "gin_file",
        [],
        "instead of --workdir: the gin file of a model fitted per test image, not meta-trained (Deep Image Prior, "
        "gin/baselines/*_dip_cpu.gin); --num_batches then counts images and --output_prefix is a path prefix",
    )
    flags.DEFINE_integer("num_batches", 1000, "test episodes (paper: 1000 random batches)")
    flags.DEFINE_multi_string("gin_param", [], "protocol overrides, e.g. 'BlockNoise.size = 20' (repeatable)")
    flags.DEFINE_string("data_dir", None, "dataset directory (default: the run's, then $EBMM_DATA_DIR)")
    flags.DEFINE_integer("seed", EVAL_SEED, "seed of the evaluation episode stream")
    flags.DEFINE_string("output_prefix", "eval", "output name inside the workdir (or an absolute path prefix)")
    flags.DEFINE_bool("figures", False, "also write the retrieval grid and (EBMM) energy histogram PNGs")
    flags.DEFINE_integer("figure_batches", 10, "episodes pooled in the energy histogram")
    flags.DEFINE_enum("checkpoint", "auto", ["auto", "best", "latest"], "which saved model to evaluate")
    flags.DEFINE_enum("split", "test", ["test", "validation", "train"], "data split")
    flags.DEFINE_bool("progress", True, "show a progress bar")
    flags.DEFINE_bool(
        "memory_use", True, "also read each batch from another batch's memory: memory gain, energy AUC, writes"
    )
    flags.DEFINE_integer(
        "intra_op_threads", 0, "threads per TensorFlow op (0: TensorFlow's default, all cores); 1 beside a training"
    )


def main(argv):
    from absl import app, flags

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    FLAGS = flags.FLAGS
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from ebmm_tf.cli import set_threads

    set_threads(FLAGS.intra_op_threads)
    if bool(FLAGS.workdir) == bool(FLAGS.gin_file):
        raise app.UsageError(
            "give exactly one of --workdir (a trained run or an export) and --gin_file (a per-image model)"
        )
    if FLAGS.gin_file:
        _evaluate_per_image_model(FLAGS)
        return
    r = evaluate(
        FLAGS.workdir,
        num_batches=FLAGS.num_batches,
        gin_params=FLAGS.gin_param,
        data_dir=FLAGS.data_dir,
        seed=FLAGS.seed,
        output_prefix=FLAGS.output_prefix,
        figures=FLAGS.figures,
        figure_batches=FLAGS.figure_batches,
        checkpoint=FLAGS.checkpoint,
        split=FLAGS.split,
        progress=FLAGS.progress,
        memory_use=FLAGS.memory_use,
        command=" ".join(["python -m ebmm_tf.evaluate"] + sys.argv[1:]),
    )
    print(_markdown(r), end="", flush=True)
    print(f"Wrote {_output_path(r['workdir'], FLAGS.output_prefix, '.json')}", flush=True)
    if not math.isfinite(r["mean"]):
        sys.exit(1)


def _evaluate_per_image_model(FLAGS):
    """``--gin_file``: a model that fits each test image on its own (Deep Image Prior), no workdir."""
    from ebmm_tf.baselines import deep_image_prior

    deep_image_prior.evaluate_and_write(
        FLAGS.gin_file,
        FLAGS.gin_param,
        FLAGS.num_batches,
        FLAGS.output_prefix,
        split=FLAGS.split,
        seed=FLAGS.seed,
        data_dir=FLAGS.data_dir,
        progress=FLAGS.progress,
        command=" ".join(["python -m ebmm_tf.evaluate"] + sys.argv[1:]),
    )


if __name__ == "__main__":
    _define_flags()
    from ebmm_tf.cli import run_absl

    run_absl(main, "python -m ebmm_tf.evaluate")
