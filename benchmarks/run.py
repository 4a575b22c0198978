r"""Runs the benchmarks, prints tables and writes JSON.

    python -m benchmarks.run                    # full run: every shipped config (< 15 min on 2 idle cores)
    python -m benchmarks.run --quick            # headline numbers in a few minutes (`make bench`)
    python -m benchmarks.run --smoke            # tiny models, < 60 s: checks that the harness works
    python -m benchmarks.run --quick --output=bench.json --only=train,serving
    python -m benchmarks.run --only=allocator       # TensorFlow's system vs pooled CPU allocator, fresh processes

Every measured configuration runs in a fresh subprocess (``benchmarks.worker``): peak RSS is per
configuration, and every worker times a large matmul around its own measurement, so GFLOP/s are reported as a
fraction of this machine's peak at that moment. Ratios (eager / compiled, first-order / second-order, ...) are
what carries over between machines; absolute times depend on the CPU and on its load (recorded in the JSON).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks import common

HEADLINE = "omniglot_conv"  # paper-scale Omniglot conv memory: N = 64, T = K = 5
SECTIONS = ("train", "modes", "scaling", "memory", "allocator", "serving")


# ---------------------------------------------------------------------------------------------------- plans
FUNCTION = {"label": "function", "mode": "function"}
EAGER = {"label": "eager", "mode": "eager"}
XLA = {"label": "xla", "mode": "xla"}
FIRST_ORDER = {"label": "first_order", "mode": "function", "first_order": True}
RECOMPUTE = {"label": "recompute", "mode": "function", "recompute": True}


def _group(config, variants, rounds, group, **kw):
    """A train job: ``variants`` of ``config`` built in one process and timed interleaved for ``rounds``."""
    return {"kind": "train", "config": config, "variants": variants, "rounds": rounds, "group": group, **kw}


def _modes(config, variants, rounds, **kw):
    return _group(config, variants, rounds, f"modes:{config}", **kw)


def _single(config, rounds, variant=FUNCTION, group=None, **kw):
    """One variant alone in its process: its peak RSS is its own."""
    return _group(config, [variant], rounds, group or f"train:{config}", **kw)


def _scaling(config, axis, values, rounds, **kw):
    """Step time against one axis, every value traced in one process and timed interleaved."""
    variants = []
    for value in values:
        if axis == "N":
            params = [f"Experiment.num_patterns = {value}"]
        elif axis == "T=K":
            params = [f"EnergyMemory.write_steps = {value}", f"EnergyMemory.read_steps = {value}"]
        else:  # memory size through the energy's dynamic_size
            energy = "ResNetConvEnergy" if "conv" in config else "GatedRNNEnergy"
            params = [f"{energy}.dynamic_size = {value}"]
        variants.append(
            {"label": f"{axis}={value}", "mode": "function", "params": params, "scale_axis": axis, "scale_value": value}
        )
    return _group(config, variants, rounds, f"scaling:{config}:{axis}", **kw)


def _allocator(config, rounds, pairs=2, **kw):
    """TensorFlow's system CPU allocator against the CLIs' pooled one (``ebmm_tf.cli.use_pooled_allocator``), each
    in its own fresh process (the allocator is chosen once per process), alternating, ``pairs`` times."""
    jobs = []
    for i in range(pairs):
        for name in ("system", "pooled") if i % 2 == 0 else ("pooled", "system"):
            variant = {"label": f"{name}#{i}", "mode": "function"}
            jobs.append(_group(config, [variant], rounds, f"allocator:{config}", allocator=name, **kw))
    return jobs


def _serving(repeats):
    return [
        {"kind": "export", "config": HEADLINE, "group": "serving"},
        {"kind": "serve", "batch": 64, "repeats": repeats, "group": "serving"},
    ]


def plan(level, xla_paper=True, memory_config="omniglot_conv_cpu"):
    """``{section: [job, ...]}`` for ``level`` in smoke / quick / full."""
    if level == "smoke":
        small = {"peak_size": 512, "peak_repeats": 2}
        return {
            "modes": [_modes("smoke/binary_strings", [FUNCTION, EAGER], 5, **small)],
            "allocator": _allocator("smoke/binary_strings", 3, pairs=1, **small),
        }
    if level == "quick":
        return {
            # the configs a meta-step is compared on from one run to the next (docs/performance.md), each alone in
            # its process so that its peak RSS is its own: paper C.3 second and first order, C.3 at CPU scale,
            # paper C.1
            "train": [
                _single(HEADLINE, 3),
                _single(HEADLINE, 3, FIRST_ORDER),
                _single("omniglot_conv_cpu", 3),
                _single("binary_strings", 3),
            ],
            "modes": [
                _modes(HEADLINE, [FUNCTION, EAGER], 2),
                _modes("binary_strings_cpu", [FUNCTION, EAGER, XLA, FIRST_ORDER], 4),
            ],
            "memory": [
                _single(memory_config, 2, group=f"memory:{memory_config}"),
                _single(memory_config, 2, RECOMPUTE, group=f"memory:{memory_config}"),
            ],
            "scaling": [_scaling("binary_strings_cpu", "N", (8, 16, 32, 64), 4)],
            "serving": _serving(repeats=10),
        }
    configs = common.shipped_configs()
    paper = [c for c in configs if not c.endswith("_cpu") and c != HEADLINE]
    cpu_modes = {
        "binary_strings_cpu": [FUNCTION, EAGER, XLA, FIRST_ORDER],
        "omniglot_conv_cpu": [FUNCTION, EAGER, FIRST_ORDER],
    }
    cpu_single = [c for c in configs if c.endswith("_cpu") and c not in cpu_modes]
    headline_modes = [FUNCTION, EAGER, FIRST_ORDER] + ([XLA] if xla_paper else [])  # XLA: ~2 min to compile
    return {
        "modes": [_modes(HEADLINE, headline_modes, 2, timeout=3600 if xla_paper else None)]
        + [_modes(c, variants, 3) for c, variants in cpu_modes.items() if c in configs],
        "memory": [  # N = 64; --memory-config=omniglot_conv for paper scale (about 1.5 minutes longer)
            _single(memory_config, 2, group=f"memory:{memory_config}"),
            _single(memory_config, 2, RECOMPUTE, group=f"memory:{memory_config}"),
        ],
        # every other shipped config: one process each (its own peak RSS), fewer steps at paper scale
        "train": [_single(c, 2) for c in cpu_single]
        + [_single(c, 1) for c in paper]
        + [_single(HEADLINE, 2), _single(HEADLINE, 2, FIRST_ORDER), _single("omniglot_conv_cpu", 2)],
        # the three configs of the quick run's comparison, system vs pooled allocator, two fresh pairs each
        "allocator": [job for c in (HEADLINE, "omniglot_conv_cpu", "binary_strings") for job in _allocator(c, 3)],
        "scaling": [
            _scaling("omniglot_conv_cpu", "N", (16, 32, 64), 2),
            _scaling("binary_strings_cpu", "T=K", (1, 3, 5), 3),
            _scaling("binary_strings_cpu", "dynamic_size", (16, 32, 63), 3),
        ],
        "serving": _serving(repeats=20),
    }


# ---------------------------------------------------------------------------------------------------- running
def run_job(job, timeout):
    cmd = [sys.executable, "-m", "benchmarks.worker", json.dumps(job)]
    env = dict(
        os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=common.REPO + os.pathsep + os.environ.get("PYTHONPATH", "")
    )
    t = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=job.get("timeout") or timeout, cwd=common.REPO, env=env
        )
    except subprocess.TimeoutExpired:
        return {
            "job": job,
            "error": f"timeout after {job.get('timeout') or timeout} s",
            "wall_s": time.perf_counter() - t,
        }
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("BENCH_RESULT "):
            return json.loads(line[len("BENCH_RESULT ") :])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
    return {"job": job, "error": f"exit code {proc.returncode}", "stderr_tail": tail, "wall_s": time.perf_counter() - t}


def _describe(job):
    labels = "/".join(v["label"] for v in job.get("variants", []))
    return " ".join(p for p in (job.get("config", ""), labels or job["kind"]) if p)


# ---------------------------------------------------------------------------------------------------- derived numbers
def _ratio(a, b):
    return a / b if a and b else None


def _groups(results):
    groups = {}
    for r in results:
        j = r["job"]
        if j.get("kind") == "train" and "error" not in r:
            groups.setdefault(j["group"], []).append(r)
    return groups


def derive(results):
    """Ratios measured side by side in this run: medians of step times of variants timed interleaved in one
    process (modes, scaling), peak RSS of single-variant processes (memory)."""
    ratios = {}
    for group, rows in _groups(results).items():
        by_label = {r["job"]["label"]: r for r in rows}
        if group.startswith("modes:"):
            base = by_label.get("function")
            if not base:
                continue
            entry = {"function_step_median_s": base["step"]["median_s"]}
            if base.get("peak_fraction") is not None:
                entry["function_peak_fraction"] = base["peak_fraction"]
                entry["function_gflops"] = base["gflops"]
            for label, r in by_label.items():
                if label == "function":
                    continue
                entry[f"{label}_over_function"] = _ratio(r["step"]["median_s"], base["step"]["median_s"])
                entry[f"{label}_over_function_min"] = _ratio(r["step"]["min_s"], base["step"]["min_s"])
                if label == "xla":
                    entry["xla_compile_s"] = r.get("compile_s")
                    entry["function_compile_s"] = base.get("compile_s")
            if "eager" in by_label:
                entry["function_speedup_over_eager"] = entry["eager_over_function"]
                if "xla" in by_label:
                    entry["xla_speedup_over_eager"] = _ratio(
                        by_label["eager"]["step"]["median_s"], by_label["xla"]["step"]["median_s"]
                    )
            ratios[group] = entry
        elif group.startswith("memory:"):
            plain, rc = by_label.get("function"), by_label.get("recompute")
            if plain and rc:
                ratios[group] = {
                    "recompute_step_time_ratio": _ratio(rc["step"]["median_s"], plain["step"]["median_s"]),
                    "recompute_step_rss_increase_ratio": _ratio(
                        rc["step_rss_increase_mb"], plain["step_rss_increase_mb"]
                    ),
                    "recompute_step_peak_rss_ratio": _ratio(rc["step_peak_rss_mb"], plain["step_peak_rss_mb"]),
                    "recompute_process_peak_rss_ratio": _ratio(rc["rss_peak_mb"], plain["rss_peak_mb"]),
                    "step_rss_increase_mb": {
                        "function": plain["step_rss_increase_mb"],
                        "recompute": rc["step_rss_increase_mb"],
                    },
                }
        elif group.startswith("allocator:"):
            by_name = {}
            for r in rows:
                by_name.setdefault(r["allocator"], []).append(r)
            if set(by_name) != {"system", "pooled"}:
                continue

            def med(name, key, by_name=by_name):
                values = [key(r) for r in by_name[name] if key(r) is not None]
                return float(statistics.median(values)) if values else None

            entry = {}
            for name in ("system", "pooled"):
                entry[name] = {
                    "step_median_s": med(name, lambda r: r["step"]["median_s"]),
                    "step_faults": med(name, lambda r: r.get("step_faults")),
                    "step_sys_s": med(name, lambda r: r.get("step_sys_s")),
                    "first_step_s": med(name, lambda r: r.get("first_step_s")),
                    "rss_peak_mb": med(name, lambda r: r.get("rss_peak_mb")),
                }
            entry["pooled_over_system_step"] = _ratio(
                entry["pooled"]["step_median_s"], entry["system"]["step_median_s"]
            )
            entry["pooled_over_system_peak_rss"] = _ratio(
                entry["pooled"]["rss_peak_mb"], entry["system"]["rss_peak_mb"]
            )
            ratios[group] = entry
        elif group.startswith("scaling:"):
            rows = sorted(rows, key=lambda r: r["job"]["scale_value"])
            first = rows[0]
            ratios[group] = [
                {
                    "value": r["job"]["scale_value"],
                    "step_median_s": r["step"]["median_s"],
                    "time_ratio_to_smallest": _ratio(r["step"]["median_s"], first["step"]["median_s"]),
                    "flops_ratio_to_smallest": _ratio(r.get("flops"), first.get("flops")),
                    "memory_size": r["memory_size"],
                }
                for r in rows
            ]
    return ratios


# ---------------------------------------------------------------------------------------------------- printing
def _f(x, fmt="{:.2f}"):
    return "-" if x is None else fmt.format(x)


def _pct(fraction):
    return None if fraction is None else 100 * fraction


def table(results):
    lines = []
    head = (
        f"{'config':22s} {'variant':16s} {'N':>3s} {'T=K':>3s} {'mem':>6s} {'trace':>6s} {'1st':>6s} {'step':>7s} "
        f"{'min':>7s} {'ep/s':>6s} {'GFLOP':>7s} {'GF/s':>6s} {'%peak':>6s} {'stepMB':>7s} {'maxMB':>6s}"
    )
    lines += [head, "-" * len(head)]
    for r in results:
        j = r["job"]
        if j.get("kind") != "train":
            continue
        label = j.get("label", "")
        if "error" in r:
            lines.append(f"{j.get('config', ''):22s} {label:16s} ERROR: {r['error']}")
            continue
        flops = r.get("flops")
        lines.append(
            f"{j['config']:22s} {label:16s} {r['num_patterns']:>3d} {r['write_steps']:>3d} {r['memory_size']:>6d} "
            f"{_f(r.get('trace_s'), '{:.1f}'):>6s} {_f(r.get('first_step_s'), '{:.1f}'):>6s} "
            f"{_f(r['step']['median_s'], '{:.3f}'):>7s} {_f(r['step']['min_s'], '{:.3f}'):>7s} "
            f"{_f(r.get('episodes_per_s')):>6s} {_f(flops / 1e9 if flops else None, '{:.1f}'):>7s} "
            f"{_f(r.get('gflops'), '{:.1f}'):>6s} {_f(_pct(r.get('peak_fraction')), '{:.0f}%'):>6s} "
            f"{_f(r.get('step_rss_increase_mb'), '{:.0f}'):>7s} {r['rss_peak_mb']:>6.0f}"
        )
    for r in results:
        j = r["job"]
        if j.get("kind") == "serve":
            if "error" in r:
                lines.append(f"serving: ERROR {r['error']}")
                continue
            lines.append("")
            lines.append(
                f"serving {j.get('config', HEADLINE)} {r['pattern_shape']} batch {r['batch']}: "
                f"load {r['load_s']:.1f} s, peak RSS {r['rss_peak_mb']:.0f} MB"
            )
            for name in ("write", "recall"):
                s = r[name]
                lines.append(
                    f"  {name:7s} p50 {1e3 * s['p50_s']:8.1f} ms  p99 {1e3 * s['p99_s']:8.1f} ms  "
                    f"{s['patterns_per_s']:8.1f} patterns/s"
                )
        elif j.get("kind") == "export" and "error" in r:
            lines.append(f"export: ERROR {r['error']}")
    return "\n".join(lines)


def ratio_lines(ratios):
    lines = []
    for group, entry in ratios.items():
        if group.startswith("modes:"):
            parts = []
            if entry.get("function_speedup_over_eager"):
                parts.append(f"tf.function {entry['function_speedup_over_eager']:.2f}x faster than eager")
            if entry.get("xla_speedup_over_eager"):
                parts.append(f"XLA {entry['xla_speedup_over_eager']:.2f}x faster than eager")
            if entry.get("xla_over_function"):
                parts.append(f"XLA step {entry['xla_over_function']:.2f}x tf.function's")
            if entry.get("first_order_over_function"):
                parts.append(f"first-order step {entry['first_order_over_function']:.2f}x second-order's")
            if entry.get("function_peak_fraction") is not None:
                parts.append(f"tf.function at {100 * entry['function_peak_fraction']:.0f}% of the matmul peak")
            lines.append(f"{group[6:]}: " + "; ".join(parts))
        elif group.startswith("memory:"):
            inc = entry["step_rss_increase_mb"]
            lines.append(
                f"{group[7:]} recompute: step memory {inc['recompute']:.0f} MB vs {inc['function']:.0f} MB "
                f"({entry['recompute_step_rss_increase_ratio']:.2f}x), step time "
                f"{entry['recompute_step_time_ratio']:.2f}x"
            )
        elif group.startswith("allocator:"):
            sy, po = entry["system"], entry["pooled"]
            lines.append(
                f"{group[10:]} allocator: pooled step {_f(po['step_median_s'], '{:.3f}')} s vs system "
                f"{_f(sy['step_median_s'], '{:.3f}')} s "
                f"({_f(entry['pooled_over_system_step'])}x), page faults per step {_f(po['step_faults'], '{:.0f}')} vs "
                f"{_f(sy['step_faults'], '{:.0f}')}, system CPU per step {_f(po['step_sys_s'], '{:.3f}')} vs "
                f"{_f(sy['step_sys_s'], '{:.3f}')} s, peak RSS {_f(po['rss_peak_mb'], '{:.0f}')} vs "
                f"{_f(sy['rss_peak_mb'], '{:.0f}')} MB"
            )
        elif group.startswith("scaling:"):
            lines.append(
                f"{group[8:]}: "
                + ", ".join(
                    f"{row['value']}: {row['step_median_s']:.3f} s ({row['time_ratio_to_smallest']:.2f}x)"
                    for row in entry
                )
            )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- main
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    level = parser.add_mutually_exclusive_group()
    level.add_argument("--quick", action="store_true", help="headline numbers in a few minutes")
    level.add_argument("--smoke", action="store_true", help="tiny models, under a minute (tests)")
    parser.add_argument("--output", default=None, help="JSON file (default: bench_<level>.json in the working dir)")
    parser.add_argument("--only", default=None, help=f"comma-separated sections of {SECTIONS}")
    parser.add_argument(
        "--no-xla-paper",
        dest="xla_paper",
        action="store_false",
        help="full run: skip compiling the paper-scale Omniglot step with XLA (about 2 minutes of compilation)",
    )
    parser.add_argument(
        "--memory-config",
        default="omniglot_conv_cpu",
        help="config of the recompute memory comparison (default omniglot_conv_cpu; omniglot_conv: paper scale)",
    )
    parser.add_argument("--timeout", type=float, default=None, help="per-job timeout in seconds")
    args = parser.parse_args(argv)
    level_name = "smoke" if args.smoke else "quick" if args.quick else "full"
    timeout = args.timeout or {"smoke": 120, "quick": 900, "full": 900}[level_name]
    sections = plan(level_name, xla_paper=args.xla_paper, memory_config=args.memory_config)
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - set(SECTIONS)
        if unknown:
            parser.error(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
        sections = {k: v for k, v in sections.items() if k in wanted}
    output = args.output or f"bench_{level_name}.json"

    started = datetime.datetime.now(datetime.timezone.utc)
    t0 = time.perf_counter()
    machine = {**common.cpu_model(), "platform": platform.platform(), "python": platform.python_version()}
    print(
        f"benchmarks ({level_name}) on {machine['model']} ({machine['cpus']} CPUs), load {common.load_average()}",
        flush=True,
    )
    results = []
    with tempfile.TemporaryDirectory(prefix="ebmm_bench_") as tmp:
        export_dir = os.path.join(tmp, "export", "1")
        for section, jobs in sections.items():
            for job in jobs:
                job = dict(job, section=section)
                if job["kind"] in ("export", "serve"):
                    job["export_dir"] = export_dir
                if job["kind"] == "serve" and not any(
                    r["job"].get("kind") == "export" and "error" not in r for r in results
                ):
                    results.append({"job": job, "error": "skipped: export failed"})
                    continue
                t = time.perf_counter()
                print(f"[{time.perf_counter() - t0:6.0f} s] {section}: {_describe(job)} ...", end=" ", flush=True)
                r = run_job(job, timeout)
                status = r["error"] if "error" in r else f"ok ({time.perf_counter() - t:.0f} s)"
                if "variants" in r:
                    for v in r["variants"]:
                        v["job"]["section"] = section
                        results.append(v)
                    status += ", steps " + ", ".join(
                        f"{v['job']['label']} {v['step']['median_s']:.3f} s" for v in r["variants"]
                    )
                else:
                    results.append(r)
                print(status, flush=True)
                if "error" in r and r.get("stderr_tail"):
                    print("\n".join("    " + line for line in r["stderr_tail"]), flush=True)
    ratios = derive(results)
    report = {
        "level": level_name,
        "command": "python -m benchmarks.run" + ("" if level_name == "full" else f" --{level_name}"),
        "argv": sys.argv[1:] if argv is None else list(argv),
        "started_utc": started.isoformat(timespec="seconds"),
        "wall_s": time.perf_counter() - t0,
        "machine": machine,
        "tensorflow": _versions(),
        "ratios": ratios,
        "results": results,
    }
    with open(output, "w") as f:
        json.dump(report, f, indent=1)
    print()
    print(table(results))
    print()
    print(ratio_lines(ratios))
    print(f"\nwrote {output} in {report['wall_s']:.0f} s")
    return 1 if any("error" in r for r in results) else 0


def _versions():
    out = {}
    for name in ("tensorflow", "keras"):
        try:
            from importlib.metadata import version

            out[name] = version(name if name != "tensorflow" else "tensorflow-cpu")
        except Exception:  # noqa: BLE001 - informational only
            try:
                out[name] = version(name)
            except Exception:  # noqa: BLE001
                out[name] = None
    return out


if __name__ == "__main__":
    from ebmm_tf.cli import guarded

    sys.exit(guarded(main, "python -m benchmarks.run")())
