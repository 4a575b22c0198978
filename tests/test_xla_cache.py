"""The persistent XLA compilation cache (ebmm_tf/xla_cache.py): flag handling, machine keys, and that TensorFlow
writes a compiled program there."""

import os
import subprocess
import sys

from ebmm_tf import xla_cache


def test_configure_adds_the_flag_once_and_keeps_a_given_directory(tmp_path):
    env = {"TF_XLA_FLAGS": "--tf_xla_auto_jit=0"}
    path = xla_cache.configure(str(tmp_path / "c"), environ=env)
    assert path == str(tmp_path / "c") and os.path.isdir(path)
    assert env["TF_XLA_FLAGS"] == f"--tf_xla_auto_jit=0 {xla_cache.FLAG}={path}"
    assert xla_cache.configure(str(tmp_path / "other"), environ=env) == path  # the flag already given wins
    assert env["TF_XLA_FLAGS"].count(xla_cache.FLAG) == 1
    empty = {}
    assert xla_cache.configure("", environ=empty) is None and "TF_XLA_FLAGS" not in empty


def test_default_directory_is_keyed_by_machine_and_tensorflow(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    d = xla_cache.default_directory()
    assert d.startswith(str(tmp_path / "ebmm_tf" / "xla")) and len(os.path.basename(d)) == 16
    assert xla_cache.machine_key("2.21.0") == xla_cache.machine_key("2.21.0") != xla_cache.machine_key("2.20.0")


def test_directory_from_argv():
    assert xla_cache.directory_from_argv(["prog"]) == "auto"
    assert xla_cache.directory_from_argv(["p", "--xla_cache_dir=/x", "--xla_cache_dir", "/y"]) == "/y"
    assert xla_cache.directory_from_argv(["p", "--xla_cache_dir="]) == ""


def test_tensorflow_writes_compiled_programs_to_the_cache(tmp_path):
    code = (
        "import tensorflow as tf\n"
        "from ebmm_tf import xla_cache\n"
        f"xla_cache.configure({str(tmp_path / 'cache')!r})\n"
        "f = tf.function(lambda x: tf.sin(x) * 2.0, jit_compile=True)\n"
        "print(float(f(tf.ones([3]))[0]))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TF_XLA_FLAGS"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    files = os.listdir(tmp_path / "cache")
    assert files and all(f.startswith("xla_compile_cache") for f in files)
