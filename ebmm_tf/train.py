"""Meta-training CLI: ``python -m ebmm_tf.train --gin_file=gin/<experiment>.gin [--gin_param=...] --workdir=DIR``.

A thin absl front end: gin does the wiring (``ebmm_tf.trainer.Experiment`` and everything it builds), the
loop lives in ``ebmm_tf.trainer``. Unknown or misspelt bindings fail before any work. Run with ``--helpfull``
for every flag.
"""

import logging
import os

from absl import app, flags

flags.DEFINE_multi_string("gin_file", [], "gin config files (repeatable), e.g. gin/omniglot_conv.gin")
flags.DEFINE_multi_string("gin_param", [], "gin bindings (repeatable), e.g. 'Experiment.num_steps = 100'")
flags.DEFINE_string("workdir", None, "output directory (default runs/<gin file name>); an existing run is resumed")
flags.DEFINE_string("data_dir", None, "dataset directory in the official layouts (default $EBMM_DATA_DIR)")
flags.DEFINE_integer(
    "num_cpu_devices",
    0,
    "split the CPU into this many logical devices (to run "
    "MirroredStrategy without GPUs, with Experiment.strategy = 'mirrored'); 0 leaves it alone",
)
flags.DEFINE_integer(
    "intra_op_threads",
    0,
    "threads per TensorFlow op (0: TensorFlow's default, all cores); 1 suits several trainings sharing a small machine",
)
flags.DEFINE_integer(
    "inter_op_threads",
    1,
    "ops run concurrently; 1 (default): same-seed runs agree bit for bit much longer (docs/performance.md, "
    "Reproducibility); 0: TensorFlow's default",
)
flags.DEFINE_string(
    "xla_cache_dir",
    "auto",
    "persistent cache of XLA-compiled meta-steps, so a machine compiles each once: 'auto' = "
    "~/.cache/ebmm_tf/xla/<machine key>, a path, or '' for none (ebmm_tf/xla_cache.py)",
)
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS.gin_file:
        raise app.UsageError("give at least one --gin_file (see the gin/ folder)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from ebmm_tf import xla_cache

    # normally set already by the __main__ block (from sys.argv, before absl starts); here for main() called
    # from Python, where it may come too late for TensorFlow to see it (then it is only unused)
    cache = xla_cache.configure(FLAGS.xla_cache_dir)
    import tensorflow as tf

    if cache:
        logging.getLogger("ebmm_tf").info("XLA compilation cache: %s", cache)

    from ebmm_tf.cli import ALLOCATOR_ENV, allocator_in_force, set_threads

    set_threads(FLAGS.intra_op_threads, max(FLAGS.inter_op_threads, 0))
    if FLAGS.num_cpu_devices:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * FLAGS.num_cpu_devices
        )
    logging.getLogger("ebmm_tf").info(
        "TensorFlow CPU allocator: %s (%s=%s)",
        allocator_in_force(),
        ALLOCATOR_ENV,
        os.environ.get(ALLOCATOR_ENV, "unset"),
    )
    from ebmm_tf import run as run_lib
    from ebmm_tf import trainer

    run_lib.parse_gin(FLAGS.gin_file, FLAGS.gin_param)
    workdir = FLAGS.workdir or os.path.join("runs", os.path.splitext(os.path.basename(FLAGS.gin_file[-1]))[0])
    bindings = {"workdir": workdir}
    if FLAGS.data_dir:
        bindings["data_dir"] = FLAGS.data_dir
    experiment = trainer.Experiment(**bindings)
    result = experiment.run()
    print(trainer.summary_text(result, experiment.workdir), flush=True)


if __name__ == "__main__":
    from ebmm_tf import xla_cache
    from ebmm_tf.cli import run_absl

    # TensorFlow reads TF_XLA_FLAGS once, and (measured) already during absl's start-up: set it from argv first
    xla_cache.configure(xla_cache.directory_from_argv(__import__("sys").argv))

    run_absl(main, "python -m ebmm_tf.train")
