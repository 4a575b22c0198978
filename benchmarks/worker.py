"""One benchmark measurement in a fresh process: ``python -m benchmarks.worker '<json job>'``.

The last line of stdout is ``BENCH_RESULT <json>``. Job kinds:

* ``train``: meta-training steps of a gin experiment (``config``, ``params``) in ``mode`` ``function``
  (``tf.function``, the trainer's default), ``xla`` (``jit_compile=True``) or ``eager``
  (``tf.config.run_functions_eagerly``), optionally ``first_order`` / ``recompute``. Reports the trace time
  (Python tracing of the meta-gradient graph), the first step (trace excluded: graph optimisation, XLA
  compilation, first run), ``steps`` timed steps (compute + clip + AdamW update, as ``MetaLearner.train_step``),
  FLOPs counted on the traced graph, the matmul peak before and after, the process' peak RSS, and the minor page
  faults and system / user CPU seconds of a timed step (medians, ``step_faults``, ``step_sys_s``, ``step_user_s``).
* ``export``: builds a gin experiment's model and exports it with ``ebmm_tf.export.export_memory``.
* ``serve``: loads a SavedModel with ``tf.saved_model.load`` and times its ``write`` and ``recall`` signatures.
* ``peak``: the matmul peak alone.

Every kind accepts ``allocator`` (``"pooled"``, the CLIs' TensorFlow CPU allocator and the default, or ``"system"``,
TensorFlow's own default; ``ebmm_tf.cli.use_pooled_allocator``), ``threads`` (``[inter_op, intra_op]``) and
``grappler`` (a dict for
``tf.config.optimizer.set_experimental_options``, e.g. ``{"disable_meta_optimizer": true}``). A ``train`` variant
may carry its own ``grappler`` dict: it is in force for every call of that variant's step (the first call, which
optimises the graph, and the timed ones), so variants with different graph-optimiser passes are timed interleaved in
one process, their ratios side by side.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks import common  # noqa: E402
from ebmm_tf import cli  # noqa: E402


def _summary(times):
    times = [float(t) for t in times]
    return {
        "times_s": times,
        "median_s": float(np.median(times)) if times else None,
        "min_s": float(min(times)) if times else None,
        "p50_s": float(np.percentile(times, 50)) if times else None,
        "p99_s": float(np.percentile(times, 99)) if times else None,
    }


def _peak(job):
    return common.matmul_peak(job.get("peak_size", 2048), job.get("peak_repeats", 3))


class RssSampler:
    """Samples this process' resident set size every ``interval`` seconds in a thread; ``peak`` since ``reset``.

    ``getrusage``'s max RSS is the peak over the whole process (tracing and graph optimisation included); the
    sampler isolates the timed steps.
    """

    def __init__(self, interval=0.005):
        self.interval, self.peak, self._stop = interval, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, common.current_rss_mb())
            self._stop.wait(self.interval)

    def reset(self):
        self.peak = common.current_rss_mb()
        return self.peak

    def close(self):
        self._stop.set()
        self._thread.join()


def _variant_job(job, variant):
    merged = {k: v for k, v in job.items() if k != "variants"}
    merged.update(variant)
    # the job's options are set process-wide by main(); a variant's own are switched around its calls (_grappler)
    merged["job_grappler"] = job.get("grappler") or {}
    merged["variant_grappler"] = variant.get("grappler") or {}
    merged["params"] = list(job.get("params", ())) + list(variant.get("params", ()))
    return merged


def _build(v):
    """Builds one variant's learner and episode (before anything runs: building re-seeds TensorFlow's global
    RNG, and ``tf.random.set_seed`` drops every function instantiated so far)."""
    mode = v.get("mode", "function")
    if mode not in ("function", "xla", "eager"):
        raise ValueError(f"unknown mode {mode!r}")
    t = time.perf_counter()
    learner, distortion, spec = common.build_from_gin(
        v["config"],
        v.get("params", ()),
        recompute=v.get("recompute", False),
        first_order=v.get("first_order") or None,
        jit_compile=mode == "xla",
    )
    if "nested_steps" in v:
        learner.nested_steps = bool(v["nested_steps"])
    out = {"build_s": time.perf_counter() - t, **spec}
    return learner, common.random_episode(spec, distortion), out


def _prepare(v, learner, episode, out):
    """Traces (FLOPs from the traced graph) and runs the first step of one variant."""
    mode = v.get("mode", "function")
    out["rss_before_mb"] = common.current_rss_mb()
    if mode == "eager":
        out["trace_s"] = None
    else:
        t = time.perf_counter()
        concrete = learner._compute.get_concrete_function(episode)  # the trace that compute_gradients reuses
        out["trace_s"] = time.perf_counter() - t
        out["graph_ops"] = len(concrete.graph.get_operations())
        if v.get("count_flops", True):
            out.update(common.count_flops(concrete))
        del concrete
    with _eager(mode == "eager"), _grappler(v.get("job_grappler"), v.get("variant_grappler")):
        t = time.perf_counter()
        learner.train_step(episode)
        out["first_step_s"] = time.perf_counter() - t
    if v.get("variant_grappler"):
        with _grappler(v.get("job_grappler"), v.get("variant_grappler")):
            out["grappler"] = tf.config.optimizer.get_experimental_options()
    out["rss_after_first_mb"] = common.current_rss_mb()
    return learner, episode, out


class _grappler:
    """The variant's own graph-optimiser options (on top of the job's) while its step runs; back to the job's after.

    TensorFlow optimises a function's graph when the function is first called, with the options in force then; the
    options travel with every call, so each variant keeps its own set throughout."""

    def __init__(self, job_options, variant_options):
        self.job_options = dict(job_options or {})
        self.variant_options = dict(variant_options or {})

    def __enter__(self):
        if self.variant_options:
            tf.config.optimizer.set_experimental_options(self.variant_options)

    def __exit__(self, *exc):
        if self.variant_options:
            # None restores TensorFlow's default for an option the job does not set
            tf.config.optimizer.set_experimental_options({k: self.job_options.get(k) for k in self.variant_options})


class _eager:
    def __init__(self, enabled):
        self.enabled = enabled

    def __enter__(self):
        if self.enabled:
            tf.config.run_functions_eagerly(True)

    def __exit__(self, *exc):
        if self.enabled:
            tf.config.run_functions_eagerly(False)


def run_train(job):
    """One or several variants of a meta-training step; several are timed interleaved (round robin)."""
    variants = [_variant_job(job, v) for v in job.get("variants", [{}])]
    load_before = common.load_average()
    peak_before = _peak(job)
    built = [_build(v) for v in variants]
    prepared = [_prepare(v, *b) for v, b in zip(variants, built)]
    rounds = int(job.get("rounds", job.get("steps", 3)))
    times = [[] for _ in variants]
    usage = [[] for _ in variants]  # per step: (minor page faults, system CPU s, user CPU s)
    step_peaks = [0.0 for _ in variants]
    step_base = [float("inf") for _ in variants]
    sampler = RssSampler()
    try:
        for r in range(rounds):
            order = list(range(len(variants)))
            order = order[r % len(order) :] + order[: r % len(order)]  # rotate: no variant always runs first
            for i in order:
                learner, episode, _ = prepared[i]
                v = variants[i]
                with _eager(v.get("mode") == "eager"), _grappler(v.get("job_grappler"), v.get("variant_grappler")):
                    step_base[i] = min(step_base[i], sampler.reset())
                    u = resource.getrusage(resource.RUSAGE_SELF)
                    t = time.perf_counter()
                    learner.train_step(episode)
                    times[i].append(time.perf_counter() - t)
                    w = resource.getrusage(resource.RUSAGE_SELF)
                    usage[i].append((w.ru_minflt - u.ru_minflt, w.ru_stime - u.ru_stime, w.ru_utime - u.ru_utime))
                    step_peaks[i] = max(step_peaks[i], sampler.peak)
    finally:
        sampler.close()
    peak_after = _peak(job)
    peak = max(peak_before["best_gflops"], peak_after["best_gflops"])
    results = []
    for v, (_, _, out), ts, us, sp, sb in zip(variants, prepared, times, usage, step_peaks, step_base):
        out["step"] = _summary(ts)
        if us:  # process-wide counts over each timed step (the RSS sampler's thread adds next to nothing)
            faults, sys_s, user_s = (float(np.median(c)) for c in zip(*us))
            out["step_faults"] = faults
            out["step_sys_s"] = sys_s
            out["step_user_s"] = user_s
        out["step_peak_rss_mb"] = sp
        out["step_rss_increase_mb"] = sp - sb
        median = out["step"]["median_s"]
        out["episodes_per_s"] = 1.0 / median if median else None
        out["compile_s"] = max(out["first_step_s"] - median, 0.0) if median else None
        if out.get("flops") and median:
            out["gflops"] = out["flops"] / median / 1e9
            out["peak_fraction"] = out["gflops"] / peak
        out["job"] = {k: v[k] for k in v if k != "kind"} | {"kind": "train"}
        results.append(out)
    shared = {
        "rss_peak_mb": common.max_rss_mb(),
        "peak_before": peak_before,
        "peak_after": peak_after,
        "peak_gflops": peak,
        "load_before": load_before,
        "load_after": common.load_average(),
        "interleaved": len(variants) > 1,
    }
    for out in results:
        out.update(shared)
    return {"variants": results}


def run_export(job):
    import keras

    from ebmm_tf.export import export_memory

    learner, _, spec = common.build_from_gin(job["config"], job.get("params", ()))
    keras.utils.set_random_seed(0)
    t = time.perf_counter()
    export_memory(learner.memory, job["export_dir"], overwrite=True, keras_copy=False)
    return {**spec, "export_s": time.perf_counter() - t, "export_dir": job["export_dir"]}


def _time_calls(fn, repeats, warmup=2):
    for _ in range(warmup):
        tf.nest.map_structure(lambda t: t.numpy(), fn())
    times = []
    t_all = time.perf_counter()
    for _ in range(repeats):
        t = time.perf_counter()
        tf.nest.map_structure(lambda t: t.numpy(), fn())
        times.append(time.perf_counter() - t)
    return times, time.perf_counter() - t_all


def run_serve(job):
    out = {"load_before": common.load_average(), "rss_start_mb": common.current_rss_mb()}
    peak = _peak(job)
    t = time.perf_counter()
    loaded = tf.saved_model.load(job["export_dir"])
    out["load_s"] = time.perf_counter() - t
    with open(os.path.join(job["export_dir"], "assets.extra", "ebmm_tf_export.json")) as f:
        meta = json.load(f)
    batch = int(job.get("batch", 64))
    shape = [batch] + list(meta.get("pattern_shape", [32, 32, 1]))
    rng = np.random.default_rng(0)
    lo, hi = meta.get("data_range", [0.0, 1.0])
    patterns = tf.constant(np.where(rng.uniform(size=shape) < 0.2, hi, lo), tf.float32)
    queries = tf.constant(np.where(rng.uniform(size=shape) < 0.2, hi, lo), tf.float32)
    write, recall = loaded.signatures["write"], loaded.signatures["recall"]
    t = time.perf_counter()
    state = write(patterns=patterns)
    out["first_write_s"] = time.perf_counter() - t
    t = time.perf_counter()
    recall(queries=queries, **state)
    out["first_recall_s"] = time.perf_counter() - t
    repeats = int(job.get("repeats", 20))
    for name, fn in (("write", lambda: write(patterns=patterns)), ("recall", lambda: recall(queries=queries, **state))):
        times, total = _time_calls(fn, repeats)
        s = _summary(times)
        s["patterns_per_s"] = batch * repeats / total
        out[name] = s
    out.update(batch=batch, pattern_shape=shape[1:], peak=peak, rss_peak_mb=common.max_rss_mb())
    out["load_after"] = common.load_average()
    return out


def main(argv):
    job = json.loads(argv[1])
    kind = job.get("kind", "train")
    # TensorFlow's CPU allocator, as the CLIs set it (ebmm_tf.cli.use_pooled_allocator): "pooled" (default) or
    # "system" (TensorFlow's own default); read by TensorFlow at the first op, which has not run yet
    allocator = job.get("allocator", "pooled")
    if allocator not in ("pooled", "system"):
        raise ValueError(f"unknown allocator {allocator!r}: 'pooled' or 'system'")
    os.environ[cli.ALLOCATOR_ENV] = "true" if allocator == "pooled" else "false"
    runners = {"train": run_train, "export": run_export, "serve": run_serve, "peak": lambda job: _peak(job)}
    if job.get("threads"):
        inter, intra = job["threads"]
        tf.config.threading.set_inter_op_parallelism_threads(int(inter))
        tf.config.threading.set_intra_op_parallelism_threads(int(intra))
    if job.get("grappler"):
        # e.g. {"disable_meta_optimizer": true}: TensorFlow's graph optimiser options for every function
        tf.config.optimizer.set_experimental_options(job["grappler"])
    t = time.perf_counter()
    result = runners[kind](job)
    result["wall_s"] = time.perf_counter() - t
    result["job"] = job
    result["allocator"] = allocator
    for variant in result.get("variants", ()):
        variant["allocator"] = allocator
    if job.get("grappler"):
        result["grappler"] = tf.config.optimizer.get_experimental_options()
    print("BENCH_RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
