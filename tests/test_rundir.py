"""ebmm_tf.rundir: the one place that finds, loads and atomically writes a run's files."""

import os

import keras
import numpy as np
import pytest

from ebmm_tf import rundir
from ebmm_tf.baselines.recurrent import DifferentiablePlasticity


def test_find_saved_model_prefers_best_then_latest_and_names_what_it_looked_for(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        rundir.find_saved_model(tmp_path)
    for kind in ("best", "latest"):
        assert str(tmp_path / kind / "memory.keras") in str(info.value)
    assert "python -m ebmm_tf.train" in str(info.value)
    for kind in ("latest", "best"):
        (tmp_path / kind).mkdir()
        (tmp_path / kind / "memory.keras").write_text("x")
        assert rundir.find_saved_model(tmp_path) == (str(tmp_path / kind / "memory.keras"), kind)
    assert rundir.find_saved_model(tmp_path, "latest")[1] == "latest"
    extra = tmp_path / "1" / "assets.extra"
    extra.mkdir(parents=True)
    (extra / "memory.keras").write_text("x")
    assert rundir.find_saved_model(extra) == (str(extra / "memory.keras"), "export")
    with pytest.raises(ValueError, match="auto, best or latest"):
        rundir.find_saved_model(tmp_path, "newest")


def test_atomic_writes_leave_no_temporary_files(tmp_path):
    path = tmp_path / "sub" / "a.txt"
    rundir.atomic_write_text(str(path), "one")
    rundir.atomic_write_text(str(path), "two")
    assert path.read_text() == "two" and os.listdir(tmp_path / "sub") == ["a.txt"]
    keras.utils.set_random_seed(0)
    model = DifferentiablePlasticity((6,), read_steps=1)
    target = tmp_path / "m" / "memory.keras"
    rundir.atomic_save_keras(model, str(target))
    assert os.listdir(tmp_path / "m") == ["memory.keras"]
    loaded = rundir.load_saved_model(str(target))
    np.testing.assert_array_equal(loaded.w.numpy(), model.w.numpy())
    with pytest.raises(FileNotFoundError, match="does not exist"):
        rundir.load_saved_model(str(tmp_path / "none.keras"))
