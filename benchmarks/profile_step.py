r"""Where a compiled meta-step spends its time: a TensorFlow profile of one step, summed by op type.

    python -m benchmarks.profile_step omniglot_conv [gin bindings ...]

Builds the config's memory and ``MetaLearner`` as ``benchmarks.run`` does, runs two steps (tracing, graph
optimisation), profiles the third with ``tf.profiler`` and prints the self-time of each op type (summed over the
cores, idle time apart) and the slowest single ops. The trace stays in ``/tmp/ebmm_profile_<config>`` for
TensorBoard's profile plugin.
"""

import collections
import glob
import json
import os
import sys
import time


def main(config, params):
    import tensorflow as tf
    from tensorflow.python.profiler.internal import _pywrap_profiler_plugin as plugin

    from benchmarks import common

    learner, distortion, spec = common.build_from_gin(config, params)
    episode = common.random_episode(spec, distortion)
    for _ in range(2):
        learner.train_step(episode)
    logdir = f"/tmp/ebmm_profile_{os.path.basename(config)}"
    tf.profiler.experimental.start(logdir)
    t = time.perf_counter()
    learner.train_step(episode)
    step = time.perf_counter() - t
    tf.profiler.experimental.stop()
    xplane = sorted(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True))[-1]
    data, ok = plugin.xspace_to_tools_data([xplane], "framework_op_stats", {})
    if not ok:
        sys.exit(f"could not convert {xplane}")
    table = json.loads(data)[0]
    cols = [c["id"] for c in table["cols"]]
    rows = [dict(zip(cols, [c.get("v") for c in r["c"]])) for r in table["rows"]]
    by_type = collections.Counter()
    for r in rows:
        by_type[r["type"]] += r["total_self_time"]
    busy = sum(v for k, v in by_type.items() if k != "IDLE")
    print(
        f"{config}: profiled step {step:.2f} s; op self-time {busy / 1e6:.2f} s over the cores, idle "
        f"{by_type['IDLE'] / 1e6:.2f} s"
    )
    for name, t_us in by_type.most_common(20):
        if name != "IDLE":
            print(f"  {name:28s} {t_us / 1e6:8.3f} s {100 * t_us / busy:5.1f}%")
    print("slowest ops:")
    for r in sorted(rows, key=lambda r: -r["total_self_time"])[:10]:
        if r["type"] != "IDLE":
            print(f"  {r['total_self_time'] / 1e3:8.1f} ms x{r['occurrences']:.0f} {r['type']} {r['operation'][-90:]}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
