"""Shared helpers of the benchmark workers: machine peak, memory, FLOP counting, models built from gin files."""

from __future__ import annotations

import math
import os
import resource
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIN_DIR = os.path.join(REPO, "gin")


# ---------------------------------------------------------------------------------------------------- machine
def matmul_peak(size=2048, repeats=5):
    """Best and median float32 GFLOP/s of ``[size, size] @ [size, size]`` (compiled, after one warm-up call).

    The *best* of a few calls is this process' view of the machine's peak right now; the benchmark divides
    achieved rates by it.
    """
    import tensorflow as tf

    a = tf.random.stateless_normal((size, size), seed=[1, 2])
    b = tf.random.stateless_normal((size, size), seed=[3, 4])
    f = tf.function(lambda a, b: tf.reduce_sum(tf.matmul(a, b)), autograph=False)
    f(a, b).numpy()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        f(a, b).numpy()
        times.append(time.perf_counter() - t)
    flops = 2.0 * size**3
    return {"best_gflops": flops / min(times) / 1e9, "median_gflops": flops / float(np.median(times)) / 1e9}


def max_rss_mb():
    """Peak resident set size of this process so far (MiB; Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb():
    """Current resident set size (MiB), from /proc where available."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):  # pragma: no cover - not Linux
        return float("nan")


def load_average():
    try:
        return list(os.getloadavg())
    except OSError:  # pragma: no cover
        return None


def cpu_model():
    """``lscpu``'s model name (from /proc/cpuinfo) and the number of CPUs this process may use."""
    model = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:  # pragma: no cover
        pass
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"model": model, "cpus": cpus}


# ---------------------------------------------------------------------------------------------------- FLOPs
def _prod(shape):
    return math.prod(int(d) for d in shape)


def live_ops(graph, outputs):
    """The operations that running ``outputs`` executes: ancestors of the outputs (inputs and control inputs).

    The function runtime prunes everything else (e.g. gradients that no output needs), so counting the whole
    graph would overstate the work.
    """
    seen, stack = {}, [t.op for t in outputs]
    while stack:
        op = stack.pop()
        if op.name in seen:
            continue
        seen[op.name] = op
        stack.extend(t.op for t in op.inputs)
        stack.extend(op.control_inputs)
    return list(seen.values())


def op_flops(op):
    """Multiply-add FLOPs (2 per MAC) of the dense linear-algebra ops; 0 for everything else."""
    t = op.type
    try:
        if t == "Conv2D":
            k = op.inputs[1].shape
            return 2 * _prod(op.outputs[0].shape) * int(k[0]) * int(k[1]) * int(k[2])
        if t == "Conv2DBackpropInput":
            k = op.inputs[1].shape
            return 2 * _prod(op.inputs[2].shape) * int(k[0]) * int(k[1]) * int(k[2])
        if t == "Conv2DBackpropFilter":
            k = op.outputs[0].shape
            return 2 * _prod(op.inputs[2].shape) * int(k[0]) * int(k[1]) * int(k[2])
        if t == "MatMul":
            a = op.inputs[0].shape
            inner = a[-2] if op.get_attr("transpose_a") else a[-1]
            return 2 * _prod(op.outputs[0].shape) * int(inner)
        if t in ("BatchMatMulV2", "BatchMatMulV3"):
            a = op.inputs[0].shape
            inner = a[-2] if op.get_attr("adj_x") else a[-1]
            return 2 * _prod(op.outputs[0].shape) * int(inner)
    except (TypeError, ValueError):  # unknown static shape: not counted
        return 0
    return 0


_CALL_OPS = ("PartitionedCall", "StatefulPartitionedCall")


def _function_graph(graph, name):
    """The FuncGraph of a function called from ``graph`` (searching enclosing graphs), or None."""
    while graph is not None:
        fn = getattr(graph, "_functions", {}).get(name)
        if fn is not None:
            return getattr(fn, "graph", None)
        graph = getattr(graph, "outer_graph", None)
    return None


def _graph_flops(graph, outputs, memo, by_type):
    count = 0
    ops = live_ops(graph, outputs)
    for op in ops:
        if op.type in _CALL_OPS:
            name = op.get_attr("f").name
            if name not in memo:
                fgraph = _function_graph(graph, name)
                sub = {}
                memo[name] = (_graph_flops(fgraph, fgraph.outputs, memo, sub), sub) if fgraph is not None else (0, {})
            n, sub = memo[name]
            count += n
            for k, v in sub.items():
                by_type[k] = by_type.get(k, 0) + v
            continue
        f = op_flops(op)
        if f:
            by_type[op.type] = by_type.get(op.type, 0) + f
            count += 1
    return count


def count_flops(concrete_function):
    """FLOPs of one call of a concrete function, from its graph: convolutions and matmuls that run.

    Nested function calls (the write/read steps that ``MetaLearner`` traces once, and their gradients) are
    followed and counted once per call; inside a called function every op that its outputs depend on
    counts. Elementwise ops, reductions and data movement are not counted (they are a few percent of the
    FLOPs, not of the time: see docs/performance.md).
    """
    by_type, memo = {}, {}
    graph = concrete_function.graph
    outputs = [t for t in concrete_function.outputs if t is not None]
    dense_ops = _graph_flops(graph, outputs, memo, by_type)
    return {
        "flops": int(sum(by_type.values())),
        "by_type": by_type,
        "dense_ops": dense_ops,
        "live_ops": len(live_ops(graph, outputs)),
        "nested_functions": len(memo),
    }


# ---------------------------------------------------------------------------------------------------- models
def gin_path(config):
    """``omniglot_conv`` -> ``<repo>/gin/omniglot_conv.gin`` (a path is returned as is)."""
    if config.endswith(".gin"):
        return config
    return os.path.join(GIN_DIR, config + ".gin")


def shipped_configs():
    """The experiment gin files at the top of ``gin/`` (the ones ``python -m ebmm_tf.train`` documents)."""
    return sorted(f[:-4] for f in os.listdir(GIN_DIR) if f.endswith(".gin"))


def build_from_gin(config, params=(), recompute=False, first_order=None, jit_compile=False):
    """Builds the energy, memory and MetaLearner of a gin experiment exactly as ``ebmm_tf.train`` does,
    without its data pipeline. Returns ``(learner, spec)`` with ``spec`` = source, N, distortion, shapes."""
    import keras

    import gin
    from ebmm_tf import run as run_lib
    from ebmm_tf.meta import MetaLearner

    gin.clear_config()
    run_lib.parse_gin([gin_path(config)], list(params))
    task = run_lib.config_from_gin().task
    source, num_patterns, distortion = task.source, task.num_patterns, task.distortion
    pattern_shape = task.pattern_shape
    keras.utils.set_random_seed(0)
    energy = run_lib.bound("energy", None)
    if energy is None:
        raise ValueError(f"{config}: the benchmarks time EBMM's meta-step; this configuration has no Experiment.energy")
    memory = run_lib.build_memory(task, energy, recompute=recompute)
    net = memory.energy_net
    learner = MetaLearner(memory, first_order=first_order, jit_compile=jit_compile)
    spec = {
        "source": source,
        "num_patterns": num_patterns,
        "pattern_shape": list(pattern_shape),
        "data_range": list(task.data_range),
        "energy": type(net).__name__,
        "memory_size": memory.memory_size(),
        "write_steps": memory.write_steps,
        "read_steps": memory.read_steps,
        "trainable_floats": int(sum(_prod(v.shape) for v in memory.trainable_variables)),
        "clamped": task.clamps,
    }
    return learner, distortion, spec


def random_episode(spec, distortion, seed=0):
    """An episode of random patterns of the right shape and range, queries from the configured distortion."""
    import tensorflow as tf

    from ebmm_tf import data as data_lib

    rng = np.random.default_rng(seed)
    shape = (spec["num_patterns"],) + tuple(spec["pattern_shape"])
    lo, hi = spec["data_range"]
    if spec["source"] == "binary_strings":
        patterns = rng.choice([-1.0, 1.0], size=shape)
    elif data_lib.is_binary(spec["source"]):  # binarized images
        patterns = (rng.uniform(size=shape) < 0.2).astype(np.float64)
    else:
        patterns = rng.uniform(lo, hi, size=shape)
    patterns = tf.constant(patterns, tf.float32)
    if distortion is None:
        return {"patterns": patterns, "queries": patterns}
    d = distortion(patterns, seed)
    episode = {"patterns": patterns, "queries": tf.convert_to_tensor(d.query)}
    if spec["clamped"]:
        episode["clamp"] = tf.convert_to_tensor(d.clamp)
    return episode
