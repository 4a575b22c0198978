r"""Compiled meta-step time of one gin config with the ``ebmm_tf`` of a given checkout: before/after comparisons.

    git worktree add /tmp/before <rev>
    for i in 1 2; do for code in /tmp/before .; do python benchmarks/step_time.py $code omniglot_conv_cpu 4; done; done

Prints one JSON line: the checkout, the first step (trace, graph optimisation, one step), the median and the
minimum of the following ``steps`` steps. Uses only the API that every version of the package has had (gin
parsing, ``EnergyMemory``, ``MetaLearner.train_step``); the gin files are this checkout's.
"""

import json
import os
import sys
import time


def main(code, config, steps):
    sys.path.insert(0, os.path.abspath(code))
    import keras
    import numpy as np
    import tensorflow as tf

    import gin
    from ebmm_tf import configurables, trainer
    from ebmm_tf import data as data_lib
    from ebmm_tf.meta import MetaLearner

    gin_file = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gin", config + ".gin")
    gin.clear_config()
    trainer.parse_gin([gin_file], [])
    source = gin.query_parameter("Experiment.source")
    n = int(gin.query_parameter("Experiment.num_patterns"))
    keras.utils.set_random_seed(0)
    shape = data_lib.pattern_shape(source)
    net = gin.query_parameter("Experiment.energy").scoped_configurable_fn(pattern_shape=shape)
    learner = MetaLearner(configurables.EnergyMemory(net, data_range=data_lib.data_range(source)))
    rng = np.random.default_rng(0)
    lo, hi = data_lib.data_range(source)
    episode = {
        key: tf.constant(np.where(rng.uniform(size=(n, *shape)) < 0.2, hi, lo).astype("float32"))
        for key in ("patterns", "queries")
    }
    t = time.perf_counter()
    learner.train_step(episode)
    first = time.perf_counter() - t
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        learner.train_step(episode)
        times.append(time.perf_counter() - t)
    print(
        json.dumps(
            {
                "code": code,
                "config": config,
                "first_s": first,
                "median_s": float(np.median(times)),
                "min_s": min(times),
                "load": list(os.getloadavg()),
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 4)
