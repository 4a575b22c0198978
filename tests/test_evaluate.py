"""ebmm_tf.evaluate and ebmm_tf.analysis: eval.json / eval.md / figures from smoke-trained runs, the metric
plumbing against independent numpy computations, generalization overrides (A.5, A.6) and the plots."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from ebmm_tf import analysis, evaluate, rundir
from ebmm_tf import data as data_lib
from ebmm_tf.distortions import BinaryStringProtocol, BlockNoise
from ebmm_tf.memory import MemoryState

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = os.environ.get("EBMM_DATA_DIR", os.path.join(os.path.dirname(ROOT), "shared", "data"))
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "EBMM_DATA_DIR": DATA_DIR}
HAVE_DATA = os.path.isdir(os.path.join(DATA_DIR, "omniglot"))

EVAL_KEYS = {
    "mean": float,
    "p5": float,
    "p95": float,
    "query_mean": float,
    "query_p5": float,
    "query_p95": float,
    "metric": str,
    "memory_size": int,
    "N": int,
    "distortion": str,
    "checkpoint_step": int,
    "num_batches": int,
    "num_patterns": int,
    "seed": int,
    "wall_seconds": float,
    "per_iterate_mean": list,
    "batch_means": list,
    "model": str,
    "model_family": str,
    "source": str,
    "split": str,
    "dataset": dict,
    "hardware": dict,
    "memory_gain": float,
    "memory_gain_p5": float,
    "cross_mean": float,
    "uses_memory": bool,
    "memory_pairs": int,
}


def _train(workdir, gin_file, *params):
    cmd = [sys.executable, "-m", "ebmm_tf.train", f"--gin_file={os.path.join(ROOT, gin_file)}", f"--workdir={workdir}"]
    cmd += [f"--gin_param={p}" for p in params]
    return subprocess.Popen(cmd, env=ENV, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait(proc, timeout=600):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    proc.stderr_text = err
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Smoke runs trained with the train CLI (both at once), plus the evaluate CLI started on the Omniglot run
    (it runs while the in-process tests use the binary-string run)."""
    root = tmp_path_factory.mktemp("runs")
    procs = {"binary": _train(root / "binary", "gin/smoke/binary_strings.gin", "Experiment.num_steps = 6")}
    if HAVE_DATA:
        procs["omniglot"] = _train(
            root / "omniglot",
            "gin/smoke/omniglot_conv.gin",
            "Experiment.num_steps = 2",
            "Experiment.validation_every = 0",  # no best/: evaluate falls back to latest/
            "Experiment.checkpoint_every = 2",
        )
    for proc in procs.values():
        _wait(proc)
    dirs = {k: str(root / k) for k in procs}
    if HAVE_DATA:
        cmd = [sys.executable, "-m", "ebmm_tf.evaluate", f"--workdir={dirs['omniglot']}", "--num_batches=3"]
        cmd += ["--figures", "--figure_batches=1", "--output_prefix=cli", "--noprogress", "--intra_op_threads=1"]
        dirs["cli"] = subprocess.Popen(
            cmd, env=ENV, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    yield dirs
    if "cli" in dirs and dirs["cli"].poll() is None:  # the CLI test was deselected: stop the evaluation
        dirs["cli"].kill()
        dirs["cli"].communicate()


def _check_eval_record(r, num_batches):
    for key, kind in EVAL_KEYS.items():
        assert key in r, key
        assert isinstance(r[key], kind) or (kind is float and isinstance(r[key], int)), (key, r[key])
    assert r["p5"] <= r["mean"] <= r["p95"]
    assert r["query_p5"] <= r["query_mean"] <= r["query_p95"]
    assert r["num_batches"] == num_batches == len(r["batch_means"])
    assert r["num_patterns"] == num_batches * r["N"]
    assert r["split"] == "test" and r["seed"] == evaluate.EVAL_SEED
    assert r["per_iterate_mean"][-1] == pytest.approx(r["mean"], rel=1e-5)


# ====================================================================== eval.json through the API
def test_api_on_binary_strings_matches_an_independent_recomputation(runs):
    workdir = runs["binary"]
    r = evaluate.evaluate(workdir, num_batches=4, progress=False)
    _check_eval_record(r, 4)
    assert os.path.exists(os.path.join(workdir, "eval.json")) and os.path.exists(os.path.join(workdir, "eval.md"))
    assert r["metric"] == "hamming" and r["memory_size"] == 128 * 63 + 63
    assert r["checkpoint_kind"] == "best" and r["checkpoint_step"] == 6
    with open(os.path.join(workdir, "best", "metrics.json")) as f:
        assert r["checkpoint_step"] == json.load(f)["step"]

    # independent recomputation: eager write/recall of the saved model, numpy Hamming distance and percentiles
    model = keras.saving.load_model(os.path.join(workdir, "best", "memory.keras"), compile=False)
    stream = data_lib.make_episodes("binary_strings", "test", 4, BinaryStringProtocol(64), seed=evaluate.EVAL_SEED)
    means, query_means = [], []
    for ep in stream.take(4):
        p, q, clamp = (ep[k].numpy() for k in ("patterns", "queries", "clamp"))
        out = model.recall(model.write(p), q, clamp).numpy()
        np.testing.assert_array_equal(out[clamp > 0], q[clamp > 0])  # the known bits stay clamped
        means.append(np.mean(np.sum((out > 0) != (p > 0), axis=1)))
        query_means.append(np.mean(np.sum((q > 0) != (p > 0), axis=1)))
    assert r["mean"] == pytest.approx(np.mean(means), abs=1e-6)
    assert [r["p5"], r["p95"]] == pytest.approx(list(np.percentile(means, [5, 95])), abs=1e-6)
    assert r["batch_means"] == pytest.approx(means, abs=1e-6)
    assert r["query_mean"] == pytest.approx(np.mean(query_means), abs=1e-6)
    assert 20 < r["query_mean"] < 44  # 64 random bits, half of them wrong


# ====================================================================== metric plumbing
class _Oracle:
    """A perfect memory: write keeps the patterns, read returns them."""

    data_range = (0.0, 1.0)

    def write(self, patterns, first_order=None):
        return MemoryState({"patterns": tf.convert_to_tensor(patterns)})

    def read(self, state, queries, mask=None):
        return [tf.zeros_like(queries), state.weights["patterns"]]

    def memory_size(self):
        return 0


class _NoOp(_Oracle):
    """A memory whose read does nothing: the retrieved pattern is the query."""

    def read(self, state, queries, mask=None):
        return [queries]


def _numpy_errors(source, distortion, n, batches, metric):
    stream = data_lib.make_episodes(source, "test", n, distortion, seed=evaluate.EVAL_SEED)
    means = []
    for ep in stream.take(batches):
        p, q = ep["patterns"].numpy().reshape(n, -1), ep["queries"].numpy().reshape(n, -1)
        err = np.sum((p > 0.5) != (q > 0.5), 1) if metric == "hamming" else np.sum(np.square(p - q), 1)
        means.append(err.mean())
    return np.array(means)


def test_perfect_memory_scores_zero_and_a_no_op_read_scores_the_query_error():
    # "sklearn_digits": scikit-learn's 8x8 digits upscaled to 32x32 and binarized, a stand-in for MNIST (offline)
    protocol = evaluate.Protocol(source="sklearn_digits", num_patterns=8, distortion=BlockNoise(12))
    perfect = evaluate.evaluate_model(_Oracle(), protocol, num_batches=4, progress=False)
    assert perfect["mean"] == perfect["p5"] == perfect["p95"] == 0.0 and perfect["query_mean"] > 10
    assert perfect["per_iterate_mean"][0] > 0 and perfect["metric"] == "hamming" and perfect["num_patterns"] == 32

    noop = evaluate.evaluate_model(_NoOp(), protocol, num_batches=4, progress=False)
    expected = _numpy_errors("sklearn_digits", BlockNoise(12), 8, 4, "hamming")
    for k in ("mean", "p5", "p95"):
        assert noop[k] == pytest.approx(noop[f"query_{k}"])
    assert noop["mean"] == pytest.approx(expected.mean()) and noop["batch_means"] == pytest.approx(list(expected))
    assert [noop["p5"], noop["p95"]] == pytest.approx(list(np.percentile(expected, [5, 95])))

    undistorted = evaluate.Protocol(source="sklearn_digits", num_patterns=8, distortion=None)
    identity = evaluate.evaluate_model(_NoOp(), undistorted, num_batches=2, progress=False)
    assert identity["mean"] == identity["query_mean"] == 0.0


@pytest.mark.skipif(not HAVE_DATA, reason="needs the CIFAR-10 data")
def test_continuous_sources_use_the_squared_error(monkeypatch):
    monkeypatch.setenv("EBMM_DATA_DIR", DATA_DIR)  # in-process loaders read the shared data folder
    distortion = BlockNoise(16, fill="uniform")
    protocol = evaluate.Protocol(source="cifar10", num_patterns=4, distortion=distortion)
    noop = evaluate.evaluate_model(_NoOp(), protocol, num_batches=3, progress=False)
    expected = _numpy_errors("cifar10", distortion, 4, 3, "squared")
    assert noop["metric"] == "squared" and noop["mean"] == pytest.approx(expected.mean(), rel=1e-5)
    assert evaluate.evaluate_model(_Oracle(), protocol, num_batches=1, progress=False)["mean"] == 0.0


def test_missing_model_and_reused_seeds_fail_clearly(runs, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"best/memory.keras.*latest/memory.keras"):
        evaluate.evaluate(str(tmp_path), num_batches=1, progress=False)
    for seed, what in ((0, "training seed"), (10_007, "validation seed")):
        with pytest.raises(ValueError, match=what):
            evaluate.evaluate(runs["binary"], num_batches=1, seed=seed, progress=False)
    bad = ["Experiment.distortion = @SaltAndPepper()", "SaltAndPepper.rate = 2.0"]  # not silently dropped
    with pytest.raises(ValueError, match="rate must be in"):
        evaluate.evaluate(runs["binary"], num_batches=1, gin_params=bad, progress=False)
    with pytest.raises(ValueError, match="num_stepz"):
        evaluate.evaluate(runs["binary"], num_batches=1, gin_params=["Experiment.num_stepz = 1"], progress=False)


# ====================================================================== generalization (A.5, A.6)
def test_gin_overrides_change_the_protocol_and_output_prefixes_keep_results_apart(runs):
    workdir = runs["binary"]
    base = evaluate.evaluate(workdir, num_batches=3, progress=False, output_prefix="eval_default")
    absolute = os.path.join(str(runs["binary"]) + "_out", "sub", "eval_known96")  # an absolute prefix
    harder = evaluate.evaluate(
        workdir,
        num_batches=3,
        progress=False,
        output_prefix=absolute,
        gin_params=["BinaryStringProtocol.num_known = 96"],
    )
    assert "num_known=96" in harder["distortion"] and harder["gin_params"] == ["BinaryStringProtocol.num_known = 96"]
    assert 10 < harder["query_mean"] < 22 < base["query_mean"]  # 32 random bits instead of 64, half wrong
    assert os.path.exists(absolute + ".json") and os.path.exists(absolute + ".md")
    with open(os.path.join(workdir, "eval_default.json")) as f:
        assert json.load(f)["query_mean"] == base["query_mean"]  # not overwritten


@pytest.mark.skipif(not HAVE_DATA, reason="needs the Omniglot data")
def test_omniglot_model_on_other_noise_and_the_mnist_stand_in_without_fine_tuning(runs):
    # A.5 + A.6 in one call: salt-and-pepper noise at 10% on the sklearn digits (the offline MNIST stand-in)
    params = [
        'Experiment.source = "sklearn_digits"',
        "Experiment.distortion = @SaltAndPepper()",
        "SaltAndPepper.rate = 0.1",
    ]
    r = evaluate.evaluate(
        runs["omniglot"], num_batches=2, gin_params=params, output_prefix="digits_sp10", progress=False
    )
    assert r["source"] == "sklearn_digits" and r["dataset"]["standin"] is True
    assert r["distortion_params"] == {"type": "SaltAndPepper", "rate": 0.1, "data_range": [0.0, 1.0]}
    assert 25 < r["query_mean"] < 80  # 10% of 1024 pixels hit, half of them changed: ~51
    with open(os.path.join(runs["omniglot"], "digits_sp10.md")) as f:
        assert "STAND-IN" in f.read()


# ====================================================================== analysis
def _fake_eval(path, family, memory, mean, metric="hamming", **extra):
    record = {"model_family": family, "memory_size": memory, "mean": mean, "p5": mean - 1, "p95": mean + 2}
    record.update(metric=metric, **extra)
    with open(path, "w") as f:
        json.dump(record, f)
    return str(path)


def test_distortion_rate_cli_and_noise_sweep(tmp_path):
    files = [
        _fake_eval(tmp_path / "a.json", "EBMM conv", 9232, 5.0),
        _fake_eval(tmp_path / "b.json", "EBMM conv", 4616, 9.0),
        _fake_eval(tmp_path / "c.json", "MemoryNetwork", 9216, 7.0),
        _fake_eval(tmp_path / "d.json", "DenoisingAutoEncoder", 0, 36.0),
    ]
    out = tmp_path / "dr.png"
    cmd = [sys.executable, "-m", "ebmm_tf.analysis", "distortion_rate", f"--output={out}"]
    cmd += [f"--eval_json={f}" for f in files]
    proc = subprocess.run(cmd, env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with Image.open(out) as im:
        assert 200 < im.size[0] < 1500 and 150 < im.size[1] < 1000
    series = analysis.distortion_rate(files, str(tmp_path / "dr2.png"))
    assert series["EBMM conv"] == [(4616, 9.0, 8.0, 11.0), (9232, 5.0, 4.0, 7.0)]
    assert set(series) == {"EBMM conv", "MemoryNetwork", "DenoisingAutoEncoder"}
    with pytest.raises(ValueError, match="mix metrics"):
        analysis.distortion_rate(files + [_fake_eval(tmp_path / "e.json", "x", 1, 1.0, "squared")], str(out))

    sweep = [
        _fake_eval(tmp_path / f"s{s}.json", "EBMM", 9232, m, workdir="/r/m16", distortion_params={"size": [s, s]})
        for s, m in ((20, 30.0), (12, 3.0), (16, 8.0))
    ]
    result = analysis.noise_sweep(sweep, str(tmp_path / "sweep.png"), "size")
    assert result == {"m16": [(12.0, 3.0, 2.0, 5.0), (16.0, 8.0, 7.0, 10.0), (20.0, 30.0, 29.0, 32.0)]}
    assert os.path.exists(tmp_path / "sweep.png")


def test_energy_stats_auc_equals_a_brute_force_pair_count():
    rng = np.random.default_rng(0)
    levels = {"memories": rng.normal(0, 1, 50), "non-memories": rng.normal(1, 1, 40), "ties": np.zeros(5)}
    levels["memories"][:3] = 0.0  # ties count one half
    stats = analysis.energy_stats(levels, bins=10)
    for other in ("non-memories", "ties"):
        a, b = levels["memories"][:, None], levels[other][None, :]
        brute = np.mean((a < b) + 0.5 * (a == b))
        assert stats["auc_memory_lower"][other] == pytest.approx(brute)
    assert stats["categories"]["memories"]["count"] == 50 and sum(stats["counts"]["non-memories"]) == 40
    assert analysis.to_images(np.zeros((2, 128))).shape == (2, 8, 16)
    assert analysis.to_images(np.zeros((2, 32, 32, 1))).shape == (2, 32, 32)


# ====================================================================== the CLI (last: it ran meanwhile)
@pytest.mark.skipif(not HAVE_DATA, reason="needs the Omniglot data")
def test_cli_on_omniglot_writes_eval_json_markdown_and_figures(runs):
    out = _wait(runs["cli"])
    workdir = runs["omniglot"]
    with open(os.path.join(workdir, "cli.json")) as f:
        r = json.load(f)
    _check_eval_record(r, 3)
    assert r["metric"] == "hamming" and r["source"] == "omniglot" and r["N"] == 8
    assert r["model"] == "EnergyMemory" and r["model_family"] == "EBMM ResNetConvEnergy"
    assert r["memory_size"] == 2 * (9 * 8 * 2 + 2)  # smoke: 2 bottleneck blocks, 2 channels, d = 2
    assert r["checkpoint_kind"] == "latest" and r["checkpoint_step"] == 2  # no validation: no best/
    assert "BlockNoise(size=(16, 16)" in r["distortion"]
    assert r["command"].startswith("python -m ebmm_tf.evaluate")
    assert 100 < r["query_mean"] < 160  # ~128 of the 256 block pixels differ
    md = open(os.path.join(workdir, "cli.md")).read()
    assert "| retrieved |" in md and f"{r['mean']:.3f}" in md and "Evaluation of" in out
    assert "TensorFlow threads: 1 per op, 1 ops at once" in runs["cli"].stderr_text  # --intra_op_threads=1

    rows, cols = 4, 2 + len(r["per_iterate_mean"])  # original, query, K iterates
    with Image.open(r["figures"]["retrieval"]) as im:
        w, h = im.size
    assert 100 < h < 1500 and 100 < w < 1500
    assert 0.5 < (w / h) / (cols / rows) < 2.0
    with Image.open(r["figures"]["energy"]) as im:
        w, h = im.size
    assert 150 < w < 1500 and 100 < h < 1000 and w > h
    with open(r["figures"]["energy_json"]) as f:
        stats = json.load(f)
    cats = stats["categories"]
    assert set(cats) == {"memories", "non-memories", "distorted memories", "out-of-distribution"}
    assert all(c["count"] == 8 for c in cats.values())
    assert "CIFAR-10" in stats["out_of_distribution_source"]
    assert (
        all(sum(v) == 8 for v in stats["counts"].values())
        and len(stats["bins"]) == len(stats["counts"]["memories"]) + 1
    )


def test_evaluating_an_export_equals_evaluating_its_workdir(runs, tmp_path):
    """``ebmm_tf.export`` ships the run's protocol and validation record in ``assets.extra/``; ``evaluate`` on the
    export directory then reproduces the workdir's evaluation and writes beside the export's assets."""
    from ebmm_tf import export as ebmm_export

    export_dir = str(tmp_path / "binary" / "1")
    ebmm_export.export_from_workdir(runs["binary"], export_dir)
    extra = os.path.join(export_dir, "assets.extra")
    assert sorted(os.listdir(extra)) == sorted(
        ["ebmm_tf_export.json", "memory.keras", "operative_config.gin", "train_metrics.json"]
    )
    from_workdir = evaluate.evaluate(runs["binary"], num_batches=3, progress=False, output_prefix="eval_w")
    from_export = evaluate.evaluate(export_dir, num_batches=3, progress=False)
    assert from_export["checkpoint_kind"] == "export" and from_export["checkpoint_step"] == 6
    assert from_export["batch_means"] == pytest.approx(from_workdir["batch_means"], abs=1e-6)
    assert os.path.exists(os.path.join(extra, "eval.json"))
    with pytest.raises(FileNotFoundError, match="extra file"):
        ebmm_export.export_memory(
            rundir.load_saved_model(os.path.join(extra, "memory.keras")),
            str(tmp_path / "other" / "1"),
            extra_files={"notes.txt": str(tmp_path / "missing.txt")},
        )
