"""Reliability: same-seed runs are bitwise reproducible across fresh processes; the Python API rejects
non-finite inputs with the signatures' error; every CLI reports a user error as one message with status 2."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from _tiny import OneLayerEnergy

import ebmm_tf
from ebmm_tf import cli
from ebmm_tf.baselines import networks
from ebmm_tf.baselines.autoencoder import DenoisingAutoEncoder
from ebmm_tf.baselines.memnet import MemoryNetwork

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
ENV.pop("EBMM_TRACEBACK", None)


def _metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [(r["step"], r["loss"], r["grad_norm"]) for r in map(json.loads, f) if "loss" in r]


def test_two_fresh_processes_with_the_same_seed_train_identically(tmp_path):
    """The CPU-scale binary-string config (the one `make train` runs, its meta-step compiled by XLA): 150 steps in
    two fresh processes, run side by side, give the same losses and gradient norms to the last bit. (With
    TensorFlow's graph executor instead of XLA, two processes differed from step 3 with its default inter-op
    threads, and from about step 100, or step 27 on a loaded machine, with one.) docs/performance.md,
    "Reproducibility"."""
    assert "MetaLearner.jit_compile = True" in open(os.path.join(ROOT, "gin", "binary_strings_cpu.gin")).read()
    procs = []
    for run in ("a", "b"):
        cmd = [sys.executable, "-m", "ebmm_tf.train", "--gin_file=gin/binary_strings_cpu.gin"]
        cmd += [f"--workdir={tmp_path / run}", "--gin_param=Experiment.num_steps = 150"]
        cmd += ["--gin_param=Experiment.validation_every = 0", "--gin_param=Experiment.progress = False"]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    for p in procs:
        _, err = p.communicate(timeout=900)
        assert p.returncode == 0, err.decode()[-3000:]
    a, b = _metrics(tmp_path / "a"), _metrics(tmp_path / "b")
    assert len(a) == 150 and a == b


# ---------------------------------------------------------------------------------------------------- inputs
def _models():
    keras.utils.set_random_seed(0)
    mem = ebmm_tf.EnergyMemory(OneLayerEnergy(dim=6, hidden=4), write_steps=1, read_steps=1)
    net = lambda: networks.DenseAutoEncoder(pattern_shape=(6,), hidden_size=8, encoding_size=4)
    return {
        "EnergyMemory": mem,
        "DenoisingAutoEncoder": DenoisingAutoEncoder(net()),
        "MemoryNetwork": MemoryNetwork(net(), num_slots=3, slot_size=4),
    }


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_python_entry_points_reject_non_finite_inputs(bad):
    good = np.random.default_rng(0).uniform(size=(3, 6)).astype("float32")
    broken = good.copy()
    broken[1, 2] = bad
    for name, model in _models().items():
        state = model.write(good)
        calls = {
            "write": lambda: model.write(broken),
            "read": lambda: model.read(state, broken),
            "recall": lambda: model.recall(state, broken),
            "mask": lambda: model.recall(state, good, mask=broken),
        }
        if hasattr(model, "energy"):
            calls["energy"] = lambda: model.energy(state, broken)
        for call, fn in calls.items():
            with pytest.raises(tf.errors.InvalidArgumentError, match=r"expected finite values, got \d NaN and \d Inf"):
                fn()
        assert np.all(np.isfinite(model.recall(state, good).numpy())), name


def test_finite_check_adds_nothing_to_compiled_graphs():
    mem = _models()["EnergyMemory"]
    x = tf.constant(np.random.default_rng(1).uniform(size=(3, 6)).astype("float32"))

    @tf.function
    def write_and_recall(x):
        return mem.recall(mem.write(x), x)

    graph = write_and_recall.get_concrete_function(x).graph
    ops = {op.type for op in graph.get_operations()}
    assert not ops & {"IsFinite", "IsNan", "IsInf", "Assert", "CheckNumerics"}, ops


# ---------------------------------------------------------------------------------------------------- CLIs
CLI_ERRORS = {
    "train, missing gin file": (["-m", "ebmm_tf.train", "--gin_file=gin/no_such.gin"], "gin file not found"),
    "train, misspelt binding": (
        ["-m", "ebmm_tf.train", "--gin_file=gin/smoke/binary_strings.gin", "--gin_param=Experiment.num_stepz = 1"],
        "num_stepz",
    ),
    "train, missing dataset": (
        ["-m", "ebmm_tf.train", "--gin_file=gin/smoke/omniglot_conv.gin", "--data_dir={tmp}/empty"]
        + ["--workdir={tmp}/w"],
        "Omniglot (train split) not found",
    ),
    "evaluate, no model": (["-m", "ebmm_tf.evaluate", "--workdir={tmp}/none"], "No saved model"),
    "export, no model": (
        ["-m", "ebmm_tf.export", "--workdir={tmp}/none", "--export_dir={tmp}/out"],
        "memory.keras",
    ),
    "hopfield, bad rule": (["-m", "ebmm_tf.baselines.hopfield", "--rules=hebbian"], "hebbian"),
    "benchmarks, bad section": (["-m", "benchmarks.run", "--smoke", "--only=nothing"], "nothing"),
    "reproducibility benchmark, unknown config": (["-m", "benchmarks.reproducibility", "--config=nope"], "nope"),
    "analysis, missing run": (
        ["-m", "ebmm_tf.analysis", "training_curve", "--workdir={tmp}/none", "--output={tmp}/c.png"],
        "metrics.jsonl",
    ),
}


# Every tool reports through `ebmm_tf.cli.guarded`, whose traceback switch is checked in-process for every error
# kind (below); two absl tools show it end to end in a fresh process, one through EBMM_TRACEBACK=1 and one through
# its --traceback flag (each costs ~7 s, mostly TensorFlow's import). Argparse usage errors have no traceback.
TRACEBACK_CASES = {"train, misspelt binding": "env", "analysis, missing run": "flag"}
assert set(TRACEBACK_CASES) <= set(CLI_ERRORS)


@pytest.mark.parametrize("case", list(CLI_ERRORS), ids=list(CLI_ERRORS))
def test_cli_user_errors_are_one_message_and_status_2(case, tmp_path):
    args, expected = CLI_ERRORS[case]
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    env = {**ENV, "EBMM_DATA_DIR": str(tmp_path / "empty")}
    out = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    assert "Traceback" not in out.stderr, out.stderr[-2000:]
    assert "error: " in out.stderr and expected in out.stderr, out.stderr[-2000:]
    if case in TRACEBACK_CASES:
        by_flag = TRACEBACK_CASES[case] == "flag"
        again = subprocess.run(
            [sys.executable, *args, *(["--traceback"] if by_flag else [])],
            cwd=ROOT,
            env=env if by_flag else {**env, "EBMM_TRACEBACK": "1"},
            capture_output=True,
            text=True,
        )
        assert again.returncode != 0 and "Traceback" in again.stderr


USER_ERRORS = [
    ValueError("bad value"),
    TypeError("bad type"),
    FileNotFoundError("no such file"),
    FileExistsError("already there"),
    NotADirectoryError("not a folder"),
    PermissionError("not allowed"),
    FloatingPointError("diverged"),
    tf.errors.InvalidArgumentError(None, None, "expected finite values"),
]


@pytest.mark.parametrize("error", USER_ERRORS, ids=lambda e: type(e).__name__)
def test_guarded_turns_each_user_error_into_one_message_and_status_2_unless_asked_for_the_traceback(
    error, monkeypatch, capsys
):
    def main():
        raise error

    monkeypatch.delenv("EBMM_TRACEBACK", raising=False)
    with pytest.raises(SystemExit) as exit_:
        cli.guarded(main, "tool")()
    assert exit_.value.code == cli.EXIT_USER_ERROR == 2
    err = capsys.readouterr().err
    assert err.splitlines()[0] == f"tool: error: {getattr(error, 'message', None) or error}"
    assert "Traceback" not in err
    with pytest.raises(type(error)):  # --traceback of the absl tools
        cli.guarded(main, "tool", traceback=True)()
    monkeypatch.setenv("EBMM_TRACEBACK", "1")
    with pytest.raises(type(error)):
        cli.guarded(main, "tool")()
    monkeypatch.setenv("EBMM_TRACEBACK", "0")
    with pytest.raises(SystemExit):
        cli.guarded(main, "tool")()


def test_guarded_keeps_the_traceback_of_a_bug(monkeypatch):
    def main():
        raise KeyError("a bug, not a user error")

    monkeypatch.delenv("EBMM_TRACEBACK", raising=False)

    with pytest.raises(KeyError):
        cli.guarded(main, "tool")()


# ------------------------------------------------------------------------------------- CPU allocator of the CLIs
def test_use_pooled_allocator_sets_the_default_and_leaves_an_explicit_choice():
    env = {}
    assert cli.use_pooled_allocator(env) and env == {cli.ALLOCATOR_ENV: "true"}
    env = {cli.ALLOCATOR_ENV: "false"}
    assert not cli.use_pooled_allocator(env) and env == {cli.ALLOCATOR_ENV: "false"}


_FAULTS_PER_CALL = """
import resource
import ebmm_tf  # TensorFlow is imported, no op has run: the order of the CLIs
from ebmm_tf import cli
import tensorflow as tf
print("pooled" if cli.use_pooled_allocator() else "system")
f = tf.function(lambda x: tf.reduce_sum(tf.tile(x, [64, 1]) * 2.0))  # a 100 MB buffer per call
x = tf.ones([1, 400_000])
f(x)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    f(x)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="page-fault counts of glibc's allocator")
def test_the_pooled_allocator_stops_the_page_faults_of_large_buffers_and_false_restores_them():
    def run(**extra):
        env = {k: v for k, v in ENV.items() if k != cli.ALLOCATOR_ENV} | extra
        proc = subprocess.run(
            [sys.executable, "-c", _FAULTS_PER_CALL], env=env, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        kind, faults = proc.stdout.split()[-2:]
        return kind, float(faults)

    kind, faults = run()
    assert kind == "pooled" and faults < 100  # the 100 MB buffer is reused: ~0 faults
    kind, faults = run(**{cli.ALLOCATOR_ENV: "false"})
    assert kind == "system" and faults > 5_000  # handed back and faulted in again: ~25,000 4 KB pages per call
