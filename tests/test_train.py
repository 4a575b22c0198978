"""The meta-training CLI: gin files, bindings, checkpoints that resume exactly, NaN handling, strategies."""

import glob
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import gin
from ebmm_tf import run as run_lib
from ebmm_tf import trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIN_FILES = sorted(
    glob.glob(os.path.join(ROOT, "gin", "*.gin")) + glob.glob(os.path.join(ROOT, "gin", "smoke", "*.gin"))
)
SMOKE = os.path.join(ROOT, "gin", "smoke", "binary_strings.gin")
DATA_DIR = os.environ.get("EBMM_DATA_DIR", os.path.join(os.path.dirname(ROOT), "shared", "data"))
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "EBMM_DATA_DIR": DATA_DIR}


def _needs_data(path):
    with open(path) as f:
        text = f.read()
    return 'source = "binary_strings"' not in text and "base/binary_strings.gin" not in text


@pytest.mark.parametrize("path", GIN_FILES, ids=[os.path.relpath(p, ROOT) for p in GIN_FILES])
def test_every_gin_file_parses_strictly_and_builds_model_and_data(path, tmp_path):
    if _needs_data(path) and not os.path.isdir(DATA_DIR):
        pytest.skip(f"dataset folder {DATA_DIR} is absent")
    with open(path) as f:
        header = f.read().split("\n\n")[0]
    for field in ("Reproduces:", "Command:", "Expect:", "Budget:") if "smoke" not in path else ():
        assert field in header, f"{path}: the header must state '{field}'"
    run_lib.parse_gin([path], ["Experiment.validation_episodes = 1", "Experiment.progress = False"])
    exp = trainer.Experiment(workdir=str(tmp_path), data_dir=DATA_DIR)
    assert exp.memory.memory_size() > 0
    episode = next(exp.train_data)
    assert tuple(episode["patterns"].shape) == (exp.current_num_patterns,) + exp.memory.energy_net.pattern_shape
    assert os.path.exists(tmp_path / "operative_config.gin")


def test_unknown_or_misspelt_bindings_fail_before_any_work():
    with pytest.raises(ValueError, match="num_stepz"):
        run_lib.parse_gin([SMOKE], ["Experiment.num_stepz = 3"])
    gin.clear_config()
    with pytest.raises(ValueError, match="hiden_size"):
        run_lib.parse_gin([SMOKE], ["GatedRNNEnergy.hiden_size = 3"])
    gin.clear_config()
    with pytest.raises(FileNotFoundError, match="no_such.gin"):
        run_lib.parse_gin(["gin/no_such.gin"], [])


def test_bindings_land_where_they_should(tmp_path):
    run_lib.parse_gin(
        [os.path.join(ROOT, "gin", "binary_strings_cpu.gin")],
        ["Experiment.num_patterns = 32", "EnergyMemory.read_steps = 3", "Experiment.validation_episodes = 1"],
    )
    exp = trainer.Experiment(workdir=str(tmp_path))
    assert exp.num_patterns == 32 and exp.source == "binary_strings" and exp.clamps
    assert exp.memory.energy_net.hidden_size == 256 and exp.memory.energy_net.dynamic_size == 63
    assert exp.memory.memory_size() == 128 * 63 + 63
    assert exp.memory.write_steps == 5 and exp.memory.read_steps == 3
    assert exp.learner.clip_norm == 1.0
    assert float(exp.learner.optimizer.learning_rate.numpy()) == pytest.approx(1e-3)
    assert exp.memory.data_range == (-1.0, 1.0)
    operative = (tmp_path / "operative_config.gin").read_text()
    assert "Experiment.num_patterns = 32" in operative and "GatedRNNEnergy.hidden_size = 256" in operative


def test_a_warm_start_competes_for_best_so_a_run_that_only_gets_worse_keeps_it(tmp_path):
    def run(name, *params):
        gin.clear_config()
        run_lib.parse_gin([SMOKE], ["Experiment.num_steps = 4", "Experiment.validation_every = 2", *params])
        exp = trainer.Experiment(workdir=str(tmp_path / name))
        real = exp.validate
        key = exp._select_key

        def worse_with_every_step(step):  # the measured validation, made worse by 100 per step
            result = dict(real(step))
            result[key] = result[key] + 100.0 * step
            return result

        exp.validate = worse_with_every_step
        summary = exp.run()
        saved = json.loads((tmp_path / name / "best" / "metrics.json").read_text())
        assert saved["step"] == summary["best"]["step"]
        return summary["best"]["step"]

    assert run("scratch") == 2  # a random start is not a candidate
    start = str(tmp_path / "scratch" / "latest" / "memory.keras")
    assert run("warm", f"Experiment.init_from = '{start}'") == 0  # a warm start is, and here it stays the best


def _cli(workdir, *params, timeout=600):
    cmd = [sys.executable, "-m", "ebmm_tf.train", f"--gin_file={SMOKE}", f"--workdir={workdir}"]
    cmd += [f"--gin_param={p}" for p in params]
    return cmd


def _losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}


def test_cli_smoke_run_leaves_checkpoint_tensorboard_and_config(tmp_path):
    out = subprocess.run(_cli(tmp_path / "run"), env=ENV, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    run = tmp_path / "run"
    assert (run / "operative_config.gin").exists()
    assert glob.glob(str(run / "checkpoints" / "ckpt-12.index"))
    assert glob.glob(str(run / "tb" / "train" / "events.out.tfevents.*"))
    assert glob.glob(str(run / "tb" / "validation" / "events.out.tfevents.*"))
    assert (run / "best" / "memory.keras").exists() and (run / "latest" / "memory.keras").exists()
    assert sorted(_losses(run)) == list(range(1, 13))
    assert "Validation hamming error at step 0" in out.stdout and "tensorboard --logdir" in out.stdout
    assert "TensorFlow CPU allocator: pooled" in out.stderr  # the CLI's default (ebmm_tf.cli.use_pooled_allocator)


def test_sigkill_mid_run_then_restart_resumes_with_identical_losses(tmp_path):
    steps = 60
    common = ["Experiment.checkpoint_every = 10", "Experiment.validation_every = 0"]
    reference = tmp_path / "reference"
    ref = subprocess.run(
        _cli(reference, f"Experiment.num_steps = {steps}", *common),
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert ref.returncode == 0, ref.stderr[-3000:]

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        _cli(killed, "Experiment.num_steps = 100000", *common),
        env=ENV,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while time.time() < deadline:  # kill once a checkpoint exists and the run is between two checkpoints
        if glob.glob(str(killed / "checkpoints" / "ckpt-*.index")) and os.path.exists(killed / "metrics.jsonl"):
            if max(_losses(killed), default=0) % 10 != 0:
                break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _losses(killed)
    assert before and 10 < max(before) < steps and max(before) % 10, "kill between two checkpoints, before the end"

    resumed = subprocess.run(
        _cli(killed, f"Experiment.num_steps = {steps}", *common),
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resumed from" in resumed.stderr
    after, expected = _losses(killed), _losses(reference)
    assert sorted(after) == list(range(1, steps + 1))  # steps after the checkpoint were replaced, not duplicated
    np.testing.assert_allclose(
        [after[s] for s in range(1, steps + 1)], [expected[s] for s in range(1, steps + 1)], rtol=1e-6
    )


def test_nan_stops_the_run_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    run_lib.parse_gin([SMOKE], ["Experiment.checkpoint_every = 2", "Experiment.validation_every = 0"])
    exp = trainer.Experiment(workdir=str(tmp_path))
    original = exp.learner.compute_gradients

    def poisoned(episodes):
        grads, metrics = original(episodes)
        if int(exp.learner.iterations.numpy()) == 3:
            metrics = {**metrics, "loss": metrics["loss"] * float("nan")}
        return grads, metrics

    exp.learner.compute_gradients = poisoned
    with pytest.raises(FloatingPointError, match=r"step 4.*ckpt-2"):
        exp.run()
    assert int(exp.learner.iterations.numpy()) == 3  # the poisoned step applied nothing
    assert exp.manager.latest_checkpoint.endswith("ckpt-2")


def test_mirrored_strategy_update_equals_single_device_over_both_episodes():
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tests", "_distributed_check.py"), "mirrored"],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    assert result["max_abs_update"] > 1e-3  # the step moved the weights ...
    assert result["max_abs_diff"] < 1e-6  # ... exactly as the single-device reference did


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.mark.slow
def test_two_worker_multiworker_mirrored_strategy_on_localhost(tmp_path):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for i in range(2):
        env = {**ENV, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})}
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    os.path.join(ROOT, "tests", "_distributed_check.py"),
                    "worker",
                    str(tmp_path / f"worker{i}.json"),
                ],
                env=env,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    results = [json.loads((tmp_path / f"worker{i}.json").read_text()) for i in range(2)]
    assert all(r["replicas"] == 2 for r in results)
    assert results[0]["checksum"] == results[1]["checksum"]
    assert max(r["max_abs_diff"] for r in results) < 1e-6


@pytest.mark.slow
def test_cli_trains_with_two_workers_and_only_the_chief_keeps_checkpoints(tmp_path):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for i in range(2):
        env = {**ENV, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})}
        procs.append(
            subprocess.Popen(
                _cli(tmp_path / "run"), env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    outputs = [p.communicate(timeout=900) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    assert "2 replica(s)" in outputs[0][1]
    assert glob.glob(str(tmp_path / "run" / "checkpoints" / "ckpt-12.index"))
    assert not glob.glob(str(tmp_path / "run" / "scratch" / "*" / "ckpt-*"))
    assert sorted(_losses(tmp_path / "run")) == list(range(1, 13))
