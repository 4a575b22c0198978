r"""Figures of the paper from evaluation results (matplotlib, Agg backend, small PNGs).

* :func:`retrieval_grid`: Figures 2 / 4 / 10: one row per pattern; columns original, query, then every read
  iterate, each annotated with its energy when the model has one.
* :func:`energy_histogram` (+ :func:`energy_stats`): Figure 6 (Section 4.4): energy distributions of memories,
  non-memories, distorted memories and out-of-distribution patterns; the numbers (summary statistics, shared
  histogram bins, and the probability that a memory has a lower energy than a pattern of another category,
  i.e. the ROC AUC of "energy below threshold" as a memory detector) go to JSON.
* :func:`distortion_rate`: Figure 3 / 5a / 7: error vs memory size from ``eval.json`` files of
  ``ebmm_tf.evaluate``, one line per model family, 5th-95th percentile error bars; models without memory
  (the denoising autoencoder, memory size 0) are drawn as horizontal lines.
* :func:`noise_sweep`: Figure 9 (A.5): error vs a distortion parameter (block size, salt-and-pepper rate), one
  line per evaluated model (workdir).
* :func:`capacity_curve`: error from the own memory and from another batch's, and the memory gain, against the
  number of stored patterns N, from ``eval.json`` files of one model evaluated at several N.
* :func:`training_curve`: validation error (with the query's and the other-memory error) and memory gain vs
  training step from the ``metrics.jsonl`` of one or more runs; curriculum moves are marked.

CLI::

    python -m ebmm_tf.analysis distortion_rate --eval_json=a/eval.json --eval_json=b/eval.json --output=plot.png
    python -m ebmm_tf.analysis noise_sweep --eval_json=DIR/eval_block12.json ... --param=size --output=sweep.png
    python -m ebmm_tf.analysis training_curve --workdir=runs/a --workdir=runs/b --output=curve.png
    python -m ebmm_tf.analysis capacity_curve --eval_json=DIR/eval_n4.json ... --eval_json=DIR/eval.json --output=n.png

``--label`` (repeatable, one per ``--eval_json``) overrides the legend entry of each file.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict

import numpy as np

__all__ = [
    "distortion_rate",
    "energy_histogram",
    "energy_stats",
    "load_evals",
    "noise_sweep",
    "capacity_curve",
    "retrieval_grid",
    "to_images",
    "training_curve",
    "validation_history",
]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path, dpi):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def to_images(x, data_range=(0.0, 1.0)):
    """Patterns -> displayable images in [0, 1]: ``[B, H, W]`` (gray) or ``[B, H, W, 3]``.

    ``[B, H, W, 1]`` is squeezed; vectors ``[B, D]`` (binary strings) are shown as ``h x (D / h)`` images with
    ``h`` the largest divisor of D not above sqrt(D) (128 bits -> 8 x 16).
    """
    x = np.asarray(x, np.float32)
    lo, hi = data_range
    x = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    if x.ndim == 2:
        d = x.shape[1]
        h = max(k for k in range(1, int(math.isqrt(d)) + 1) if d % k == 0)
        return x.reshape(x.shape[0], h, d // h)
    if x.ndim == 4 and x.shape[-1] == 1:
        return x[..., 0]
    if x.ndim in (3, 4):
        return x
    raise ValueError(f"cannot display patterns of shape {x.shape}")


# ====================================================================== Figures 2 / 4
def retrieval_grid(originals, queries, iterates, energies=None, data_range=(0.0, 1.0), path=None, title=None, dpi=80):
    """Writes a retrieval grid PNG to ``path`` and returns ``path``.

    Args:
      originals, queries: ``[R, *pattern_shape]`` (R rows).
      iterates: list of K arrays ``[R, *pattern_shape]`` (the read iterates x_1 .. x_K).
      energies: optional ``[2 + K, R]``: energies of the original, the query and each iterate.
      data_range: ``(lo, hi)`` of the patterns.
    """
    plt = _pyplot()
    columns = [originals, queries] + list(iterates)
    names = ["original", "query"] + [f"read {k + 1}" for k in range(len(iterates))]
    images = [to_images(c, data_range) for c in columns]
    rows, cols = images[0].shape[0], len(images)
    aspect = images[0].shape[2] / images[0].shape[1]
    fig, axes = plt.subplots(
        rows, cols, figsize=(cols * 1.0 * aspect + 0.2, rows * 1.15 + 0.5), squeeze=False, constrained_layout=True
    )
    for c, (name, imgs) in enumerate(zip(names, images)):
        for r in range(rows):
            ax = axes[r][c]
            ax.imshow(imgs[r], cmap="gray" if imgs.ndim == 3 else None, vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=7)
            if energies is not None:
                ax.set_xlabel(f"E = {float(energies[c][r]):.3g}", fontsize=6, labelpad=1)
    if title:
        fig.suptitle(title, fontsize=8)
    return _save(fig, path, dpi)


# ====================================================================== Figure 6
def energy_stats(levels, bins=40):
    """Numbers behind Figure 6.

    Args:
      levels: ``{category: energies [n]}``; the category ``"memories"`` is the reference of the AUCs.
    Returns:
      ``{"categories": {name: {count, mean, std, min, p5, p50, p95, max}}, "bins": edges [bins + 1],
      "counts": {name: [bins]}, "auc_memory_lower": {other: P(E(memory) < E(other))}}``.
    """
    from ebmm_tf.diagnostics import energy_auc  # lazy: diagnostics imports TensorFlow

    levels = {k: np.asarray(v, np.float64).reshape(-1) for k, v in levels.items() if len(v)}
    allv = np.concatenate(list(levels.values()))
    edges = np.histogram_bin_edges(allv, bins=bins)
    out = {"categories": {}, "bins": edges.tolist(), "counts": {}, "auc_memory_lower": {}}
    for k, v in levels.items():
        p5, p50, p95 = np.percentile(v, [5, 50, 95])
        out["categories"][k] = {
            "count": int(v.size),
            "mean": float(v.mean()),
            "std": float(v.std()),
            "min": float(v.min()),
            "p5": float(p5),
            "p50": float(p50),
            "p95": float(p95),
            "max": float(v.max()),
        }
        out["counts"][k] = np.histogram(v, bins=edges)[0].tolist()
    if "memories" in levels:
        for k, v in levels.items():
            if k != "memories":
                out["auc_memory_lower"][k] = energy_auc(levels["memories"], v)
    return out


def energy_histogram(levels, path, title=None, bins=40, dpi=80):
    """Writes the Figure 6 histogram of ``levels = {category: energies}`` to ``path``; returns ``energy_stats``."""
    plt = _pyplot()
    stats = energy_stats(levels, bins)
    edges = np.asarray(stats["bins"])
    fig, ax = plt.subplots(figsize=(5.0, 3.2), constrained_layout=True)
    for k, counts in stats["counts"].items():
        counts = np.asarray(counts, np.float64)
        density = counts / max(counts.sum(), 1.0) / np.diff(edges)
        filled = ax.stairs(density, edges, label=f"{k} (n={int(counts.sum())})", fill=True, alpha=0.3)
        ax.stairs(density, edges, linewidth=1.0, color=filled.get_facecolor(), alpha=1.0)
    ax.set_xlabel("energy")
    ax.set_ylabel("density")
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=8)
    _save(fig, path, dpi)
    return stats


# ====================================================================== Figure 3 / 5a / 7
def load_evals(paths):
    records = []
    for p in paths:
        with open(p) as f:
            r = json.load(f)
        r.setdefault("_path", p)
        records.append(r)
    return records


def _metric(records):
    metrics = {r.get("metric") for r in records}
    if len(metrics) > 1:
        raise ValueError(f"eval files mix metrics {sorted(map(str, metrics))}: plot them separately")
    return metrics.pop()


def _series(eval_jsons, labels, default_label):
    """Loads ``eval_jsons``; returns ``(records, metric, {label: [records]})`` keyed by ``labels`` (one per file)
    or ``default_label(record)``."""
    records = load_evals(eval_jsons)
    if labels is not None and len(labels) != len(records):
        raise ValueError(f"got {len(labels)} labels for {len(records)} eval files")
    metric = _metric(records)
    series = defaultdict(list)
    for i, r in enumerate(records):
        series[labels[i] if labels else default_label(r)].append(r)
    return records, metric, series


def _finish(fig, ax, path, xlabel, metric, title, dpi):
    """The axis labels, legend and title shared by the error plots, then saves ``fig`` to ``path``."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{metric} error per pattern")
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=8)
    _save(fig, path, dpi)


def _yerr(points):
    return np.array([[max(p["mean"] - p["p5"], 0.0) for p in points], [max(p["p95"] - p["mean"], 0.0) for p in points]])


def distortion_rate(eval_jsons, path, labels=None, title=None, logx=True, dpi=80):
    """Error vs memory size (Figure 3) from ``eval.json`` files; one line per model family (or ``labels``).

    Returns ``{label: [(memory_size, mean, p5, p95), ...]}`` (sorted by memory size).
    """
    plt = _pyplot()
    records, metric, series = _series(eval_jsons, labels, lambda r: r.get("model_family", r.get("model", "?")))
    fig, ax = plt.subplots(figsize=(5.0, 3.4), constrained_layout=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    color_of = {name: colors[i % len(colors)] for i, name in enumerate(sorted(series))}
    out = {}
    flat_lines = []
    for name, points in sorted(series.items()):
        points = sorted(points, key=lambda p: p["memory_size"])
        out[name] = [(p["memory_size"], p["mean"], p["p5"], p["p95"]) for p in points]
        with_memory = [p for p in points if p["memory_size"] > 0]
        if with_memory:
            ax.errorbar(
                [p["memory_size"] for p in with_memory],
                [p["mean"] for p in with_memory],
                yerr=_yerr(with_memory),
                marker="o",
                markersize=4,
                capsize=3,
                label=name,
                color=color_of[name],
            )
        for p in points:
            if p["memory_size"] <= 0:
                flat_lines.append((name, p))
    for name, p in flat_lines:
        ax.axhline(p["mean"], linestyle="--", linewidth=1.0, color=color_of[name], label=f"{name} (no memory)")
        ax.axhspan(p["p5"], p["p95"], color=color_of[name], alpha=0.1)
    if logx and any(r["memory_size"] > 0 for r in records):
        ax.set_xscale("log")
    _finish(fig, ax, path, "memory size (floats)", metric, title, dpi)
    return out


# ====================================================================== Figure 9
def _param_value(record, param):
    params = record.get("distortion_params") or {}
    if param not in params:
        raise ValueError(f"{record.get('_path')}: distortion {record.get('distortion')} has no parameter {param!r}")
    v = params[param]
    return float(v[0] if isinstance(v, (list, tuple)) else v)


def noise_sweep(eval_jsons, path, param, labels=None, title=None, dpi=80):
    """Error vs the distortion parameter ``param`` (e.g. ``size``, ``rate``), one line per model (A.5).

    Lines are keyed by ``labels`` or by the evaluated workdir's name. Returns ``{label: [(value, mean, p5, p95)]}``.
    """
    plt = _pyplot()
    _, metric, series = _series(eval_jsons, labels, lambda r: os.path.basename(str(r.get("workdir", "?")).rstrip("/")))
    fig, ax = plt.subplots(figsize=(5.0, 3.4), constrained_layout=True)
    out = {}
    for name, points in sorted(series.items()):
        points = sorted(points, key=lambda p: _param_value(p, param))
        xs = [_param_value(p, param) for p in points]
        out[name] = [(x, p["mean"], p["p5"], p["p95"]) for x, p in zip(xs, points)]
        ax.errorbar(
            xs, [p["mean"] for p in points], yerr=_yerr(points), marker="o", markersize=4, capsize=3, label=name
        )
    _finish(fig, ax, path, f"distortion {param}", metric, title, dpi)
    return out


# ====================================================================== training curves
def validation_history(workdir):
    """``(validations, moves)`` from ``workdir/metrics.jsonl``: the validation records (with their ``step``) in
    step order, and the curriculum moves ``[(step, from N, to N)]``."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: is {workdir} a workdir of python -m ebmm_tf.train?")
    validations, moves = {}, []
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            r = json.loads(line)
            if "validation" in r:
                validations[r["step"]] = dict(r["validation"], step=r["step"])
            if "curriculum" in r:
                moves.append((r["step"], r["curriculum"]["from"], r["curriculum"]["to"]))
    return [validations[k] for k in sorted(validations)], moves


def training_curve(workdirs, path, labels=None, title=None, dpi=80, logy=False, step_offsets=None):
    """Validation error (solid), error from another batch's memory (dotted), the query's error (dashed, grey)
    and the memory gain (lower panel) vs step, one colour per run; curriculum moves as vertical lines labelled
    with the new N. Returns ``{label: [(step, mean, memory_gain), ...]}``.

    ``logy``: logarithmic error axis (errors near 0 beside the query's 32 bits). ``step_offsets``: one per workdir,
    added to its steps, to draw a run that continued another one's checkpoint (``Experiment.init_from``) after it.
    """
    plt = _pyplot()
    labels = labels or [os.path.basename(os.path.normpath(w)) for w in workdirs]
    if len(labels) != len(workdirs):
        raise ValueError(f"got {len(labels)} labels for {len(workdirs)} workdirs")
    step_offsets = list(step_offsets) if step_offsets else [0] * len(workdirs)
    if len(step_offsets) != len(workdirs):
        raise ValueError(f"got {len(step_offsets)} step offsets for {len(workdirs)} workdirs")
    fig, (ax, ax_gain) = plt.subplots(2, 1, figsize=(6.0, 5.0), sharex=True, constrained_layout=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    out = {}
    metric = "error"
    for i, (workdir, label, offset) in enumerate(zip(workdirs, labels, step_offsets)):
        vals, moves = validation_history(workdir)
        if not vals:
            raise ValueError(f"{workdir} has no validation yet")
        c = colors[i % len(colors)]
        metric = vals[-1].get("metric", metric)
        vals = [dict(v, step=v["step"] + offset) for v in vals]
        moves = [(step + offset, old, new) for step, old, new in moves]
        steps = [v["step"] for v in vals]
        ax.plot(steps, [v["mean"] for v in vals], "-", color=c, label=label)
        gain = [v.get("memory_gain", float("nan")) for v in vals]
        if any(np.isfinite(gain)):
            ax.plot(steps, [v.get("cross_mean", float("nan")) for v in vals], ":", color=c)
            ax_gain.plot(steps, gain, "-", color=c, label=label)
        ax.plot(steps, [v["query_mean"] for v in vals], "--", color="0.6", linewidth=0.8)
        for step, _, new_n in moves:
            for a in (ax, ax_gain):
                a.axvline(step, color=c, alpha=0.3, linewidth=0.8)
            ax_gain.annotate(f"N={new_n}", (step, 0), fontsize=6, color=c, rotation=90, va="bottom")
        out[label] = [(v["step"], v["mean"], v.get("memory_gain")) for v in vals]
    ax.set_ylabel(f"validation {metric} error")
    if logy:
        ax.set_yscale("log")
    ax.legend(fontsize=7, title="solid: own memory, dotted: another batch's, dashed: query", title_fontsize=6)
    ax_gain.axhline(0.0, color="k", linewidth=0.6)
    ax_gain.set_ylabel("memory gain")
    ax_gain.set_xlabel("training step")
    if title:
        ax.set_title(title, fontsize=8)
    _save(fig, path, dpi)
    return out


def capacity_curve(eval_jsons, path, title=None, dpi=80):
    """Own-memory error, other-memory error and the query's (upper panel) and memory gain with its 5-95% band
    (lower panel) against N, from evaluations of one model at several N (``memory_gain`` keys needed).
    Returns ``[(N, mean, p5, p95, cross_mean, memory_gain, memory_gain_p5, memory_gain_p95, energy_auc)]``."""
    plt = _pyplot()
    records = sorted(load_evals(eval_jsons), key=lambda r: r["N"])
    missing = [r.get("workdir", "?") for r in records if "memory_gain" not in r]
    if missing:
        raise ValueError(f"evaluations without memory-use diagnostics (rerun python -m ebmm_tf.evaluate): {missing}")
    metric = _metric(records)
    n = [r["N"] for r in records]
    fig, (ax, ax_gain) = plt.subplots(2, 1, figsize=(5.0, 4.6), sharex=True, constrained_layout=True)
    ax.errorbar(n, [r["mean"] for r in records], yerr=_yerr(records), fmt="o-", capsize=3, label="own memory")
    ax.plot(n, [r["cross_mean"] for r in records], "s:", label="another batch's memory")
    ax.plot(n, [r["query_mean"] for r in records], "--", color="0.6", label="query")
    ax.set_ylabel(f"{metric} error per pattern")
    ax.legend(fontsize=7)
    gains = np.array([[r["memory_gain"], r["memory_gain_p5"], r["memory_gain_p95"]] for r in records])
    ax_gain.fill_between(n, gains[:, 1], gains[:, 2], alpha=0.25)
    ax_gain.plot(n, gains[:, 0], "o-")
    ax_gain.axhline(0.0, color="k", linewidth=0.6)
    ax_gain.set_ylabel("memory gain")
    ax_gain.set_xlabel("stored patterns N")
    ax_gain.set_xscale("log", base=2)
    if title:
        ax.set_title(title, fontsize=8)
    _save(fig, path, dpi)
    keys = ("N", "mean", "p5", "p95", "cross_mean", "memory_gain", "memory_gain_p5", "memory_gain_p95", "energy_auc")
    return [tuple(r.get(k) for k in keys) for r in records]


# ====================================================================== CLI
_COMMANDS = ("distortion_rate", "noise_sweep", "training_curve", "capacity_curve")


def _define_flags():
    from absl import flags

    flags.DEFINE_multi_string("eval_json", [], "eval.json files of python -m ebmm_tf.evaluate (repeatable)")
    flags.DEFINE_multi_string("workdir", [], "training_curve: run directories (repeatable)")
    flags.DEFINE_multi_string("label", None, "legend label per --eval_json / --workdir (repeatable, same order)")
    flags.DEFINE_string("output", None, "PNG to write", required=True)
    flags.DEFINE_string("title", None, "plot title")
    flags.DEFINE_string("param", "size", "noise_sweep: distortion parameter on the x axis (size, rate, ...)")
    flags.DEFINE_bool("logx", True, "distortion_rate: logarithmic memory axis")
    flags.DEFINE_bool("logy", False, "training_curve: logarithmic error axis")
    flags.DEFINE_multi_integer("step_offset", None, "training_curve: added to each --workdir's steps (same order)")


def main(argv):
    from absl import app, flags

    FLAGS = flags.FLAGS
    if len(argv) != 2 or argv[1] not in _COMMANDS:
        raise app.UsageError(
            f"usage: python -m ebmm_tf.analysis {{{','.join(_COMMANDS)}}} --eval_json=... --output=..."
        )
    if argv[1] == "training_curve":
        if not FLAGS.workdir:
            raise app.UsageError("give at least one --workdir")
        out = training_curve(
            FLAGS.workdir,
            FLAGS.output,
            labels=FLAGS.label,
            title=FLAGS.title,
            logy=FLAGS.logy,
            step_offsets=FLAGS.step_offset,
        )
    elif not FLAGS.eval_json:
        raise app.UsageError("give at least one --eval_json")
    elif argv[1] == "capacity_curve":
        out = capacity_curve(FLAGS.eval_json, FLAGS.output, title=FLAGS.title)
    elif argv[1] == "distortion_rate":
        out = distortion_rate(FLAGS.eval_json, FLAGS.output, labels=FLAGS.label, title=FLAGS.title, logx=FLAGS.logx)
    else:
        out = noise_sweep(FLAGS.eval_json, FLAGS.output, FLAGS.param, labels=FLAGS.label, title=FLAGS.title)
    print(json.dumps(out, indent=1))
    print(f"Wrote {FLAGS.output}")


if __name__ == "__main__":
    _define_flags()
    from ebmm_tf.cli import run_absl

    run_absl(main, "python -m ebmm_tf.analysis")
