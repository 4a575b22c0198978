"""CLI of the Deep Image Prior baseline (A.3): one generator fit per test image of a gin file's protocol::

    python -m ebmm_tf.baselines.run_dip --gin_file=gin/baselines/imagenet64_dip_cpu.gin --num_images=10 \\
        --data_dir=../shared/data --output=runs/dip_imagenet64 [--intra_op_threads=1]

Writes ``<output>.json`` (every image's error, the query's, fit loss and time, the operative configuration) and
``<output>.md``. A module of its own: ``python -m ebmm_tf.baselines.deep_image_prior`` would import the model module
twice (the gin file imports it by name), and gin refuses a configurable registered twice.
"""

import sys

from absl import app, flags

flags.DEFINE_multi_string("gin_file", [], "gin file(s) of the protocol (Experiment.source, distortion)")
flags.DEFINE_multi_string("gin_param", [], "gin bindings (repeatable)")
flags.DEFINE_integer("num_images", 20, "images of the test split to restore, one fit each")
flags.DEFINE_enum("split", "test", ["test", "validation", "train"], "data split")
flags.DEFINE_integer("seed", None, "episode seed stream (default: the evaluation's)")
flags.DEFINE_string("data_dir", None, "dataset directory")
flags.DEFINE_string("output", "dip_eval", "output path prefix (.json and .md are written)")
flags.DEFINE_integer("intra_op_threads", 0, "TensorFlow intra-op threads (0: TensorFlow's default)")
flags.DEFINE_bool("progress", True, "print one line per image")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS.gin_file:
        raise app.UsageError("give at least one --gin_file (e.g. gin/baselines/imagenet64_dip_cpu.gin)")
    from ebmm_tf.cli import set_threads

    set_threads(FLAGS.intra_op_threads)
    from ebmm_tf.baselines import deep_image_prior

    deep_image_prior.evaluate_and_write(
        FLAGS.gin_file,
        FLAGS.gin_param,
        FLAGS.num_images,
        FLAGS.output,
        split=FLAGS.split,
        seed=FLAGS.seed,
        data_dir=FLAGS.data_dir,
        progress=FLAGS.progress,
        command=" ".join(["python -m ebmm_tf.baselines.run_dip"] + sys.argv[1:]),
    )


if __name__ == "__main__":
    from ebmm_tf.cli import run_absl

    run_absl(main, "python -m ebmm_tf.baselines.run_dip")
