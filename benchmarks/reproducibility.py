r"""Bitwise reproducibility of same-seed meta-training, and what it costs: ``python -m benchmarks.reproducibility``.

For each setting of the knobs that decide it (``MetaLearner.jit_compile``: the meta-step compiled by XLA as one
program, or run op by op by TensorFlow's graph executor; ``MetaLearner.inline_steps``: nested write/read steps
inlined into the meta-step graph or called as functions; the inter-op thread count: 1, the CLI's default, or
TensorFlow's default), two fresh processes train the same gin experiment from the same seed for ``--steps`` steps; the
settings are run interleaved (A1 B1 C1 D1 A2 B2 ...) so that load on the machine hits them alike. Printed per
setting: the first step (tracing, graph optimisation, one step), the median step time of the rest, and whether
the two processes' losses and gradient norms were identical at every step (and, if not, at how many values they
differed and from which step on). The last line is the JSON of everything.

    python -m benchmarks.reproducibility [--config=binary_strings_cpu] [--steps=200] [--param='...']
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = {  # name: (inline_steps, inter_op_threads, jit_compile)
    "tf.function, 1 inter-op thread": (True, 1, False),
    "XLA (jit_compile), 1 inter-op thread": (True, 1, True),
    "tf.function, TF's inter-op threads": (True, 0, False),
    "function calls, 1 inter-op thread": (False, 1, False),
}


def worker(config, steps, inline, inter, jit, params):
    """Runs in a fresh process; prints one JSON line with the per-step losses, gradient norms and times."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tempfile

    import numpy as np
    import tensorflow as tf

    if inter:
        tf.config.threading.set_inter_op_parallelism_threads(inter)
    from ebmm_tf import run as run_lib
    from ebmm_tf import trainer

    gin_file = os.path.join(ROOT, "gin", config + ".gin")
    bindings = ["Experiment.validation_every = 0", "Experiment.progress = False", *params]
    bindings.append(f"MetaLearner.inline_steps = {inline}")
    bindings.append(f"MetaLearner.jit_compile = {jit}")
    run_lib.parse_gin([gin_file], bindings)
    with tempfile.TemporaryDirectory() as workdir:
        exp = trainer.Experiment(workdir=workdir)
        losses, norms, times = [], [], []
        for _ in range(steps):
            episode = next(exp.train_data)
            t = time.perf_counter()
            m = exp.learner.train_step(episode)
            loss = float(m["loss"])  # waits for the step
            times.append(time.perf_counter() - t)
            losses.append(loss)
            norms.append(float(m["grad_norm"]))
    print(json.dumps({"losses": losses, "norms": norms, "first_s": times[0], "median_s": float(np.median(times[1:]))}))


def _run(config, steps, inline, inter, jit, params):
    cmd = [sys.executable, "-m", "benchmarks.reproducibility", "--worker", f"--config={config}", f"--steps={steps}"]
    cmd += [f"--inline={int(inline)}", f"--inter={inter}", f"--jit={int(jit)}"] + [f"--param={p}" for p in params]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"worker failed: {' '.join(cmd)}\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="binary_strings_cpu", help="gin file in gin/ (without .gin)")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--param", action="append", default=[], help="extra gin binding (repeatable)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--inline", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--inter", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--jit", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.steps < 2:
        ap.error("--steps must be >= 2")
    if not os.path.exists(os.path.join(ROOT, "gin", args.config + ".gin")):
        ap.error(f"no gin file gin/{args.config}.gin")
    if args.worker:
        worker(args.config, args.steps, bool(args.inline), args.inter, bool(args.jit), args.param)
        return
    runs = {name: [] for name in SETTINGS}
    for repeat in range(2):
        for name, (inline, inter, jit) in SETTINGS.items():
            print(f"[{repeat + 1}/2] {name} ...", file=sys.stderr, flush=True)
            runs[name].append(_run(args.config, args.steps, inline, inter, jit, args.param))
    report = {"config": args.config, "steps": args.steps, "params": args.param, "load": list(os.getloadavg())}
    base = None
    print(f"{args.config}, {args.steps} steps, two fresh processes per setting, interleaved")
    print(f"{'setting':48s} {'first step s':>13s} {'step s (median)':>16s} {'ratio':>6s}  identical runs")
    for name, (a, b) in runs.items():
        differ = sum(x != y for x, y in zip(a["losses"] + a["norms"], b["losses"] + b["norms"]))
        first = (a["first_s"] + b["first_s"]) / 2
        step = (a["median_s"] + b["median_s"]) / 2
        base = base or step
        first_diff = next(
            (
                i
                for i, (la, lb, na, nb) in enumerate(zip(a["losses"], b["losses"], a["norms"], b["norms"]))
                if la != lb or na != nb
            ),
            None,
        )
        same = "yes" if differ == 0 else f"no ({differ} of {2 * args.steps} values differ, from step {first_diff})"
        print(f"{name:48s} {first:13.2f} {step:16.4f} {step / base:6.2f}  {same}")
        report[name] = {"first_s": [a["first_s"], b["first_s"]], "median_s": [a["median_s"], b["median_s"]]}
        report[name]["values_differing"] = differ
        report[name]["first_differing_step"] = first_diff
    print(json.dumps(report))


if __name__ == "__main__":
    from ebmm_tf.cli import guarded

    guarded(main, "python -m benchmarks.reproducibility")()
