"""How the command-line tools end on a user error: one message on stderr and exit status 2, no traceback.

A user error is a mistake in what was asked (a missing gin file or dataset, a misspelt or invalid binding, a
bad flag value, a non-finite input): ``ValueError``, ``TypeError``, ``FileNotFoundError`` (including
``ebmm_tf.data.DatasetNotFoundError``), ``FileExistsError``, ``NotADirectoryError``, ``PermissionError``,
``FloatingPointError`` (a diverged run) and TensorFlow's ``InvalidArgumentError``. Set ``EBMM_TRACEBACK=1`` (or
pass ``--traceback`` to the absl tools) to see the full traceback instead. Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import os
import sys

__all__ = [
    "ALLOCATOR_ENV",
    "EXIT_USER_ERROR",
    "allocator_in_force",
    "guarded",
    "run_absl",
    "set_threads",
    "use_pooled_allocator",
]

EXIT_USER_ERROR = 2
ALLOCATOR_ENV = "TF_CPU_ALLOCATOR_USE_BFC"


def use_pooled_allocator(environ=None) -> bool:
    """Makes TensorFlow keep freed CPU buffers for reuse instead of returning them to the system; True if in force.

    TensorFlow's default CPU allocator hands each large buffer back to the C library when it is freed, which
    returns it to the kernel; the next step's buffers then come back one 4 KB page fault at a time (a meta-step
    of ``binary_strings_cpu`` at N = 32 faulted ~15,700 pages, ``omniglot_conv_cpu`` 15,000-65,000).
    ``TF_CPU_ALLOCATOR_USE_BFC=true`` switches to TensorFlow's best-fit pool (the one it uses on GPUs),
    which keeps its memory: about 1,000 faults per step or fewer. Measured effect:
    docs/performance.md, "Page faults". An explicit value in the environment wins (``=false`` restores the
    default). TensorFlow reads the variable when it creates its CPU allocator, at the first op: call this before.
    """
    env = os.environ if environ is None else environ
    env.setdefault(ALLOCATOR_ENV, "true")
    return env[ALLOCATOR_ENV].strip().lower() in ("1", "true")


def set_threads(intra_op=0, inter_op=None):
    """TensorFlow's thread pools for a command-line run: ``intra_op`` threads per op, ``inter_op`` ops at once.

    0 leaves TensorFlow's default (all cores); ``inter_op=None``: one op at a time when ``intra_op`` is set, else
    the default. Must run before TensorFlow executes its first op.
    """
    import tensorflow as tf

    if inter_op is None:
        inter_op = 1 if intra_op else 0

    if intra_op:
        tf.config.threading.set_intra_op_parallelism_threads(int(intra_op))
    if inter_op:
        tf.config.threading.set_inter_op_parallelism_threads(int(inter_op))
    if intra_op or inter_op:
        import logging

        logging.getLogger("ebmm_tf").info(
            "TensorFlow threads: %d per op, %d ops at once (0: all cores)",
            tf.config.threading.get_intra_op_parallelism_threads(),
            tf.config.threading.get_inter_op_parallelism_threads(),
        )


def allocator_in_force() -> str:
    """``"pooled"`` if TensorFlow's CPU allocator is the best-fit pool (it keeps statistics), else ``"system"``."""
    import tensorflow as tf

    try:
        tf.config.experimental.get_memory_info("CPU:0")
    except ValueError:  # "Allocator stats not available": the system allocator
        return "system"
    return "pooled"


def _user_errors():
    errors = (ValueError, TypeError, FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError)
    errors += (FloatingPointError,)
    tf = sys.modules.get("tensorflow")
    if tf is not None:
        errors += (tf.errors.InvalidArgumentError,)
    return errors


def _show_traceback(default=False):
    return default or os.environ.get("EBMM_TRACEBACK", "") not in ("", "0")


def guarded(main, prog, traceback=False):
    """``main`` wrapped so that a user error prints ``<prog>: error: <message>`` and exits with status 2."""

    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except _user_errors() as err:
            if _show_traceback(traceback):
                raise
            message = getattr(err, "message", None) or str(err) or type(err).__name__
            print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
            print(f"{prog}: (set EBMM_TRACEBACK=1 for the traceback)", file=sys.stderr, flush=True)
            sys.exit(EXIT_USER_ERROR)

    return wrapper


def run_absl(main, prog):
    """``absl.app.run(main)`` with user errors reported by ``guarded`` (``--traceback`` shows the traceback), and
    TensorFlow's pooled CPU allocator unless the environment chose (``use_pooled_allocator``)."""
    from absl import app, flags

    use_pooled_allocator()

    if "traceback" not in flags.FLAGS:
        flags.DEFINE_bool("traceback", False, "on a user error, show the Python traceback instead of one message")

    def main_with_flags(argv):
        return guarded(main, prog, traceback=flags.FLAGS.traceback)(argv)

    app.run(main_with_flags)
