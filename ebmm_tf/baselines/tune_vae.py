"""CLI of the variational autoencoder's read-rate grid search (A.3) on a trained run's validation split::

    python -m ebmm_tf.baselines.tune_vae --workdir=DIR [--rates=0.01,0.03,0.1,0.3,1.0] [--num_batches=20] \
        [--intra_op_threads=1]

It writes ``DIR/read_rate_grid.json`` and stores the chosen rate in the run's saved model
(``ebmm_tf.baselines.vae.tune_read_rate``). A module of its own: ``python -m ebmm_tf.baselines.vae`` would import
the model module twice, and gin refuses a configurable registered twice.
"""

from absl import app, flags

flags.DEFINE_string("workdir", None, "run directory of a trained VariationalAutoEncoder", required=True)
flags.DEFINE_list("rates", ["0.01", "0.03", "0.1", "0.3", "1.0"], "read rates gamma to try")
flags.DEFINE_integer("num_batches", 20, "validation episodes per rate")
flags.DEFINE_string("data_dir", None, "dataset directory (default: the run's)")
flags.DEFINE_bool("progress", True, "show a progress bar")
flags.DEFINE_integer("intra_op_threads", 0, "threads per TensorFlow op (0: TensorFlow's default, all cores)")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from ebmm_tf.cli import set_threads

    set_threads(FLAGS.intra_op_threads)
    from ebmm_tf.baselines.vae import tune_read_rate

    tune_read_rate(FLAGS.workdir, [float(r) for r in FLAGS.rates], FLAGS.num_batches, FLAGS.data_dir, FLAGS.progress)


if __name__ == "__main__":
    from ebmm_tf.cli import run_absl

    run_absl(main, "python -m ebmm_tf.baselines.tune_vae")
