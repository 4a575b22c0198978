"""ebmm_tf.run: the task and configuration of a run, read once from the Experiment bindings; rundir.RunDir."""

import inspect
import json
import os

import numpy as np
import pytest

import gin
from ebmm_tf import evaluate, rundir, trainer
from ebmm_tf import run as run_lib
from ebmm_tf.data import common as data_common
from ebmm_tf.distortions import BinaryStringProtocol

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(ROOT, "gin", "smoke", "binary_strings.gin")


def test_experiment_takes_its_defaults_from_the_run_module():
    """One owner of the defaults that every job reads: Experiment's signature uses ``run.DEFAULTS``."""
    params = inspect.signature(trainer.Experiment.__init__).parameters
    for name, value in run_lib.DEFAULTS.items():
        assert params[name].default == value, name


def test_config_from_gin_reads_bindings_and_fills_defaults():
    run_lib.parse_gin([SMOKE], ["Experiment.num_patterns = 5", "Experiment.validation_seed = 77"])
    config = run_lib.config_from_gin()
    assert config.task.source == "binary_strings" and config.task.num_patterns == 5
    assert isinstance(config.task.distortion, BinaryStringProtocol) and config.task.clamps
    assert config.task.sampler == run_lib.DEFAULTS["sampler"]
    assert config.validation_seed == 77 and config.seed == run_lib.DEFAULTS["seed"]
    assert config.task.metric == "hamming" and config.task.pattern_shape == (128,)
    assert config.task.with_num_patterns(9).num_patterns == 9 and config.task.num_patterns == 5
    ep = next(iter(config.task.episodes("train", seed=3)))
    assert ep["patterns"].shape == (5, 128) and "clamp" in ep
    with pytest.raises(ValueError, match="binds no Experiment.nothing_like_this"):
        run_lib.bound("nothing_like_this")


def test_the_evaluation_protocol_is_the_runs_task(tmp_path):
    """evaluate.load_protocol rebuilds the task that training used, from the run's operative config."""
    run_lib.parse_gin([SMOKE], ["Experiment.num_patterns = 6"])
    expected = run_lib.config_from_gin()
    (tmp_path / "operative_config.gin").write_text(gin.config_str())
    gin.clear_config()
    protocol = evaluate.load_protocol(str(tmp_path), ["Experiment.num_patterns = 6"])
    assert isinstance(protocol, run_lib.Task)
    assert (protocol.source, protocol.num_patterns, protocol.clamps) == ("binary_strings", 6, True)
    assert protocol.validation_seed == expected.validation_seed and protocol.train_seed == expected.seed
    (tmp_path / "operative_config.gin").write_text("import ebmm_tf.trainer\nExperiment.num_steps = 1\n")
    with pytest.raises(ValueError, match="binds no Experiment.source"):
        evaluate.load_protocol(str(tmp_path))


def test_task_rejects_unknown_sources_and_empty_episodes():
    with pytest.raises(ValueError, match="Unknown source 'mnits'"):
        run_lib.Task("mnits", 4)
    with pytest.raises(ValueError, match="num_patterns must be >= 1"):
        run_lib.Task("binary_strings", 0)


def test_build_memory_checks_the_contract():
    task = run_lib.Task("binary_strings", 4)
    with pytest.raises(ValueError, match="Experiment.energy is required"):
        run_lib.build_memory(task)

    class NotAMemory:
        def __init__(self, net, pattern_shape, data_range):
            pass

    with pytest.raises(TypeError, match="not an associative memory"):
        run_lib.build_memory(task, model=NotAMemory)


def test_run_dir_owns_the_layout(tmp_path):
    d = rundir.RunDir(tmp_path)
    assert d.config == str(tmp_path / "operative_config.gin")
    assert d.best_model == str(tmp_path / "best" / "memory.keras")
    assert d.latest_model == str(tmp_path / "latest" / "memory.keras")
    assert d.best_metrics == str(tmp_path / "best" / "metrics.json")
    assert d.metrics_log == str(tmp_path / "metrics.jsonl") and d.checkpoints == str(tmp_path / "checkpoints")
    assert d.summaries("train") == str(tmp_path / "tb" / "train")
    with pytest.raises(FileNotFoundError, match="best validated model"):
        d.find_model()
    rundir.atomic_write_json(d.best_metrics, {"step": np.int64(7), "mean": np.float32(1.5), "v": np.arange(2)})
    assert json.loads(open(d.best_metrics).read()) == {"step": 7, "mean": 1.5, "v": [0, 1]}
    assert rundir.checkpoint_step(str(tmp_path), "best") == 7
    extra = tmp_path / "export" / "1" / "assets.extra"
    extra.mkdir(parents=True)
    (extra / "operative_config.gin").write_text("")
    assert rundir.resolve_run_dir(str(tmp_path / "export" / "1")) == str(extra)
    assert rundir.resolve_run_dir(str(tmp_path)) == str(tmp_path)


def test_raw_split_build_counts_and_keeps_the_provenance():
    images = np.zeros((3, 2, 2, 1), np.uint8)
    split = data_common.RawSplit.build(
        images, None, 1.0, source="x", split="train", origin="o", num_classes=2, standin=True, description="d", k=1
    )
    assert split.info == {
        "source": "x",
        "split": "train",
        "origin": "o",
        "num_examples": 3,
        "num_classes": 2,
        "standin": True,
        "description": "d",
        "k": 1,
    }
