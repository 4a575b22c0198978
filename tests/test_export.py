"""SavedModel export for TensorFlow Serving (ebmm_tf.export / ebmm_tf.serving) and .keras round trips.

Two tiny memories are exported once per module: a binary-string model (GatedRNNEnergy, data range (-1, 1),
clamped reads) and an image model (ResNetConvEnergy on 32x32x1, data range (0, 1)). Their SavedModels are run
in fresh processes with ``tf.saved_model.load`` and with ``saved_model_cli run`` (the TF1 session loader, the
kind TF Serving uses) and compared with the in-process model's eager ``write`` / ``read`` / ``energy``.
Subprocesses start when a model is built and run in a small thread pool while the in-process tests go on.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2

import ebmm_tf
from ebmm_tf import export as ebmm_export
from ebmm_tf.serving import SERVING_DEFAULT, SIGNATURES, memory_name_of, state_key

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
ATOL = RTOL = 1e-5
_POOL = ThreadPoolExecutor(max_workers=3)


def _env():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _saved_model_cli():
    script = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    return [script] if os.path.exists(script) else [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]


def _submit(args, cwd=ROOT):
    """Runs ``args`` in the background; ``.result()`` gives the CompletedProcess (text stdout/stderr)."""
    return _POOL.submit(subprocess.run, args, capture_output=True, text=True, env=_env(), cwd=cwd, timeout=300)


def _assert_close(got, expected, atol=ATOL, rtol=RTOL):
    assert set(got) == set(expected), (sorted(got), sorted(expected))
    for key, value in expected.items():
        np.testing.assert_allclose(np.asarray(got[key]), value, atol=atol, rtol=rtol, err_msg=key)


# ---------------------------------------------------------------------------------------------------- models
def _perturb(memory, seed):
    """Moves every variable off its initial value, so a variable that is not restored shows up."""
    rng = np.random.default_rng(seed)
    for v in memory.variables:
        v.assign(v.numpy() + rng.normal(scale=0.05, size=v.shape).astype(np.float32))


def _binary_memory():
    keras.utils.set_random_seed(11)
    memory = ebmm_tf.EnergyMemory(
        ebmm_tf.GatedRNNEnergy(input_size=16, hidden_size=16, hops=2, dynamic_size=6),
        write_steps=2,
        read_steps=3,
        data_range=(-1.0, 1.0),
        write_rate_init=0.05,
        read_step_init=0.5,
    )
    _perturb(memory, 11)
    rng = np.random.default_rng(0)
    patterns = rng.choice([-1.0, 1.0], size=(5, 16)).astype(np.float32)
    mask = np.zeros((3, 16), np.float32)
    for row in mask:
        row[rng.choice(16, 8, replace=False)] = 1.0
    queries = np.where(mask == 1, patterns[:3], rng.choice([-1.0, 1.0], size=(3, 16))).astype(np.float32)
    return memory, patterns, queries, mask


def _image_memory():
    keras.utils.set_random_seed(12)
    memory = ebmm_tf.EnergyMemory(
        ebmm_tf.ResNetConvEnergy(
            pattern_shape=(32, 32, 1),
            channels=2,
            hidden_size=3,
            dynamic_size=2,
            bottleneck_downscale=(True,),
            hops=1,
            head_size=4,
        ),
        write_steps=1,
        read_steps=2,
        data_range=(0.0, 1.0),
        write_rate_init=0.05,
        read_step_init=0.5,
    )
    _perturb(memory, 12)
    rng = np.random.default_rng(1)
    patterns = (rng.uniform(size=(3, 32, 32, 1)) > 0.5).astype(np.float32)
    queries = patterns[:2].copy()
    queries[:, 8:24, 8:24, :] = rng.uniform(size=(2, 16, 16, 1)) > 0.5  # a 16x16 block replaced by noise
    return memory, patterns, queries, None


def _reference(memory, patterns, queries, mask):
    """In-process, eager: the expected outputs of every signature, and the inputs that produce them."""
    state = memory.write(patterns)
    st = {state_key(n): t.numpy() for n, t in state.weights.items()}
    suffix = "" if mask is None else "_clamped"
    iterates = memory.read(state, queries, mask)
    stacked = np.stack([it.numpy() for it in iterates])
    energies = np.stack([memory.energy(state, it).numpy() for it in iterates])
    read_feed = {"queries": queries} if mask is None else {"queries": queries, "mask": mask}
    feeds = {
        "write": {"patterns": patterns},
        "recall" + suffix: {**st, **read_feed},
        "write_and_recall" + suffix: {"patterns": patterns, **read_feed},
        "energy": {**st, "patterns": patterns},
    }
    expected = {
        "write": st,
        "recall" + suffix: {
            "retrieved": stacked[-1],
            "energy": energies[-1],
            "iterates": stacked,
            "energies": energies,
        },
        "write_and_recall" + suffix: {"retrieved": stacked[-1], "energy": energies[-1]},
        "energy": {"energy": memory.energy(state, patterns).numpy()},
    }
    return feeds, expected


def _build(name, tmp_path_factory):
    memory, patterns, queries, mask = {"binary": _binary_memory, "image": _image_memory}[name]()
    base = tmp_path_factory.mktemp(f"export_{name}")
    keras_file = str(base / "memory.keras")
    memory.save(keras_file)
    export_dir = ebmm_export.export_memory(memory, base / "models" / name / "1")
    feeds, expected = _reference(memory, patterns, queries, mask)
    if mask is not None:  # the unclamped signatures too
        more_feeds, more_expected = _reference(memory, patterns, queries, None)
        for sig in ("recall", "write_and_recall"):
            feeds[sig], expected[sig] = more_feeds[sig], more_expected[sig]
    case = SimpleNamespace(
        name=name,
        memory=memory,
        base=base,
        export_dir=export_dir,
        keras_file=keras_file,
        feeds=feeds,
        expected=expected,
        patterns=patterns,
        queries=queries,
        mask=mask,
        pattern_shape=tuple(memory.energy_net.pattern_shape),
        state_shapes={state_key(n): tuple(s) for n, (s, _) in memory.energy_net.memory_spec().items()},
        jobs={},
    )
    _start_fresh_process(case)
    _start_saved_model_cli(case)
    return case


def _start_fresh_process(case):
    inputs = {f"{sig}:{k}": v for sig, feed in case.feeds.items() for k, v in feed.items()}
    inputs.update({"keras:patterns": case.patterns, "keras:queries": case.queries})
    if case.mask is not None:
        inputs["keras:mask"] = case.mask
    np.savez(case.base / "fresh_inputs.npz", **inputs)
    case.jobs["fresh"] = _submit(
        [
            sys.executable,
            os.path.join(TESTS, "_export_fresh.py"),
            case.export_dir,
            case.keras_file,
            str(case.base / "fresh_inputs.npz"),
            str(case.base / "fresh_outputs.npz"),
        ]
    )


def _cli_inputs(case, sig, feed):
    folder = case.base / "cli" / sig
    folder.mkdir(parents=True, exist_ok=True)
    for key, value in feed.items():
        np.save(folder / f"{key}.npy", value)
    return folder, ";".join(f"{key}={folder / key}.npy" for key in feed)


def _start_saved_model_cli(case):
    cli = _saved_model_cli()
    case.jobs["show"] = _submit(cli + ["show", "--dir", case.export_dir, "--all"])
    # write and recall here; write_and_recall and energy run in the fresh-process test
    run_sigs = ["write", "recall" if case.mask is None else "recall_clamped"]
    for sig in run_sigs:
        folder, inputs = _cli_inputs(case, sig, case.feeds[sig])
        case.jobs[f"run:{sig}"] = _submit(
            cli
            + ["run", "--dir", case.export_dir, "--tag_set", "serve", "--signature_def", sig]
            + ["--inputs", inputs, "--outdir", str(folder / "out"), "--overwrite"]
        )
    if case.name == "binary":  # a bad input through the TF1 session loader: a clear error, not a crash
        bad = case.patterns.copy()
        bad[0, 0] = np.nan
        _, inputs = _cli_inputs(case, "bad_write", {"patterns": bad})
        case.jobs["run:bad"] = _submit(
            cli
            + ["run", "--dir", case.export_dir, "--tag_set", "serve", "--signature_def", "write"]
            + ["--inputs", inputs]
        )


_CASES = {}


def _case(name, tmp_path_factory):
    if name not in _CASES:
        _CASES[name] = _build(name, tmp_path_factory)
    return _CASES[name]


@pytest.fixture(scope="module")
def binary(tmp_path_factory):
    yield _case("binary", tmp_path_factory)


@pytest.fixture(scope="module", params=["binary", "image"])
def case(request, tmp_path_factory):
    yield _case(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def loaded(binary):
    return tf.saved_model.load(binary.export_dir)


def _call(loaded, sig, feed):
    return {k: v.numpy() for k, v in loaded.signatures[sig](**{k: tf.constant(v) for k, v in feed.items()}).items()}


# ---------------------------------------------------------------------------------------------------- fresh processes
def test_saved_model_in_a_fresh_process_reproduces_every_signature(case):
    proc = case.jobs["fresh"].result()
    assert proc.returncode == 0, proc.stderr[-3000:]
    outputs = dict(np.load(case.base / "fresh_outputs.npz"))
    for sig, expected in case.expected.items():
        got = {k.split(":", 1)[1]: v for k, v in outputs.items() if k.startswith(sig + ":")}
        _assert_close(got, expected)


def test_keras_file_in_a_fresh_process_gives_the_same_recalls(case):
    proc = case.jobs["fresh"].result()
    assert proc.returncode == 0, proc.stderr[-3000:]
    outputs = dict(np.load(case.base / "fresh_outputs.npz"))
    sig = "recall_clamped" if case.mask is not None else "recall"
    expected = {**case.expected["write"], **{k: case.expected[sig][k] for k in ("iterates", "energies")}}
    got = {k.split(":", 1)[1]: v for k, v in outputs.items() if k.startswith("keras:")}
    _assert_close(got, expected, atol=1e-6, rtol=1e-6)


def test_saved_model_cli_run_reproduces_write_and_recall_outputs(case):
    runs = {k.split(":", 1)[1]: job for k, job in case.jobs.items() if k.startswith("run:") and k != "run:bad"}
    assert len(runs) == 2
    for sig, job in runs.items():
        proc = job.result()
        assert proc.returncode == 0, (sig, proc.stderr[-3000:])
        out = case.base / "cli" / sig / "out"
        got = {p[: -len(".npy")]: np.load(out / p) for p in os.listdir(out)}
        _assert_close(got, case.expected[sig])


def test_saved_model_cli_run_reports_a_bad_input_clearly(binary):
    proc = binary.jobs["run:bad"].result()
    assert proc.returncode != 0
    assert "InvalidArgumentError" in proc.stderr
    assert "write, input patterns: expected finite values, got 1 NaN and 0 Inf values" in proc.stderr


def _parse_show(text):
    """``{signature: {"inputs": {key: (dtype, shape)}, "outputs": {...}, "method": str}}``."""
    entry = re.compile(r"\['([^']+)'\] tensor_info:\s+dtype: (\w+)\s+shape: ([^\n]+)")

    def shape(s):
        s = s.strip()
        return s if s == "unknown_rank" else tuple(int(d) for d in s.strip("()").split(",") if d.strip())

    out = {}
    for block in text.split("signature_def['")[1:]:
        name, body = block.split("']", 1)
        inputs, _, outputs = body.partition("contains the following output(s):")
        method = re.search(r"Method name is: (\S*)", outputs)
        out[name] = {
            "inputs": {k: (d, shape(s)) for k, d, s in entry.findall(inputs)},
            "outputs": {k: (d, shape(s)) for k, d, s in entry.findall(outputs)},
            "method": method.group(1) if method else "",
        }
    return out


def test_saved_model_cli_show_lists_the_signatures_with_dynamic_batch_dimensions(case):
    proc = case.jobs["show"].result()
    assert proc.returncode == 0, proc.stderr[-3000:]
    sigs = _parse_show(proc.stdout)
    assert set(SIGNATURES) | {"serving_default"} <= set(sigs), sorted(sigs)
    p, k = case.pattern_shape, case.memory.read_steps
    f = "DT_FLOAT"
    batch = (f, (-1,) + p)
    state_in = {key: (f, "unknown_rank") for key in case.state_shapes}  # checked in the graph instead
    state_out = {key: (f, s) for key, s in case.state_shapes.items()}
    recall_out = {"retrieved": batch, "energy": (f, (-1,)), "iterates": (f, (k, -1) + p), "energies": (f, (k, -1))}
    short_out = {"retrieved": batch, "energy": (f, (-1,))}
    expected = {
        "write": ({"patterns": batch}, state_out),
        "recall": ({**state_in, "queries": batch}, recall_out),
        "recall_clamped": ({**state_in, "queries": batch, "mask": batch}, recall_out),
        "write_and_recall": ({"patterns": batch, "queries": batch}, short_out),
        "write_and_recall_clamped": ({"patterns": batch, "queries": batch, "mask": batch}, short_out),
        "energy": ({**state_in, "patterns": batch}, {"energy": (f, (-1,))}),
    }
    expected["serving_default"] = expected[SERVING_DEFAULT]
    for name, (inputs, outputs) in expected.items():
        assert sigs[name]["inputs"] == inputs, (name, sigs[name]["inputs"])
        assert sigs[name]["outputs"] == outputs, (name, sigs[name]["outputs"])
        assert sigs[name]["method"] == "tensorflow/serving/predict", name


# ---------------------------------------------------------------------------------------------------- in-process load
def test_loaded_signatures_match_the_model_and_an_all_zero_mask_clamps_nothing(binary, loaded):
    for sig in binary.expected:
        _assert_close(_call(loaded, sig, binary.feeds[sig]), binary.expected[sig])
    zero = {**binary.feeds["recall_clamped"], "mask": np.zeros_like(binary.mask)}
    unclamped = _call(loaded, "recall", binary.feeds["recall"])
    zero_mask = _call(loaded, "recall_clamped", zero)
    for key, value in unclamped.items():
        np.testing.assert_array_equal(zero_mask[key], value, err_msg=key)
    clamped = binary.expected["recall_clamped"]["retrieved"]
    assert not np.allclose(clamped, unclamped["retrieved"], atol=1e-3)  # the mask does matter
    np.testing.assert_array_equal(clamped[binary.mask == 1], binary.queries[binary.mask == 1])


def _set(index, value):
    def mutate(x):
        x = x.copy()
        x[index] = value
        return x

    return mutate


# (signature, input, mutation, expected message); binary model: P = [16], state memory__kernel [16, 6], memory__bias [6]
N16 = r"expected shape \[N, 16\] with N >= 1"
M16 = r"expected shape \[M, 16\] with M >= 1"
BAD_INPUTS = {  # id: (signature, input, mutation, expected message)
    "pattern_dims": ("write", "patterns", lambda x: x[:, :-1], rf"write, input patterns: {N16}, got \[5, 15\]"),
    "pattern_rank3": ("write", "patterns", lambda x: x[..., None], rf"write, input patterns: {N16}, got \[5, 16, 1\]"),
    "pattern_rank1": ("write", "patterns", lambda x: x[0], rf"write, input patterns: {N16}, got \[16\]"),
    "empty_batch": ("write", "patterns", lambda x: x[:0], rf"write, input patterns: {N16}, got \[0, 16\]"),
    "nan": (
        "write",
        "patterns",
        _set((1, 2), np.nan),
        r"write, input patterns: expected finite values, got 1 NaN and 0 Inf",
    ),
    "inf": (
        "write",
        "patterns",
        _set((0, 0), -np.inf),
        r"write, input patterns: expected finite values, got 0 NaN and 1 Inf",
    ),
    "out_of_range": (
        "write",
        "patterns",
        _set((4, 15), 1.5),
        r"write, input patterns: expected values in the data range \[-1, 1\] \(tolerance 0.002\), "
        r"got values from -1\.0+ to 1\.50+",
    ),
    "energy_out_of_range": (
        "energy",
        "patterns",
        _set((0, 0), -2.0),
        r"energy, input patterns: expected values in the data range \[-1, 1\]",
    ),
    "query_dims": ("recall", "queries", lambda x: x.reshape(6, 8), rf"recall, input queries: {M16}, got \[6, 8\]"),
    "mask_values": (
        "recall_clamped",
        "mask",
        _set((slice(0, 2), 3), 0.5),
        r"recall_clamped, input mask: expected only 0 \(free\) and 1 \(known, clamped to the query\), "
        r"got 2 of 48 values that are neither",
    ),
    "mask_vs_queries": (
        "write_and_recall_clamped",
        "mask",
        lambda x: x[:2],
        r"write_and_recall_clamped, input mask: expected the shape of queries \[3, 16\], got \[2, 16\]",
    ),
    "mask_rank": (
        "recall_clamped",
        "mask",
        lambda x: x[..., None],
        rf"recall_clamped, input mask: {M16}, got \[3, 16, 1\]",
    ),
    "state_dims": (
        "recall",
        "memory__kernel",
        lambda x: x[:-1],
        r"recall, input memory__kernel: expected shape \[16, 6\], got \[15, 6\]",
    ),
    "state_transposed": (
        "recall",
        "memory__kernel",
        lambda x: x.T,
        r"recall, input memory__kernel: expected shape \[16, 6\], got \[6, 16\]",
    ),
    "state_rank2": (
        "energy",
        "memory__bias",
        lambda x: x[None],
        r"energy, input memory__bias: expected shape \[6\], got \[1, 6\]",
    ),
    "state_scalar": (
        "recall",
        "memory__bias",
        lambda x: x[0],
        r"recall, input memory__bias: expected shape \[6\], got \[\]",
    ),
    "state_nan": (
        "recall_clamped",
        "memory__bias",
        _set(0, np.nan),
        r"recall_clamped, input memory__bias: expected finite values",
    ),
}


@pytest.mark.parametrize("sig,key,mutate,message", list(BAD_INPUTS.values()), ids=list(BAD_INPUTS))
def test_bad_inputs_raise_invalid_argument_errors_that_name_the_input(binary, loaded, sig, key, mutate, message):
    feed = dict(binary.feeds[sig])
    feed[key] = mutate(feed[key])
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        _call(loaded, sig, feed)
    _assert_close(_call(loaded, sig, binary.feeds[sig]), binary.expected[sig])  # and the model still works


def test_inputs_within_the_range_tolerance_are_accepted(binary, loaded):
    patterns = binary.patterns * np.float32(1.0015)  # tolerance: 0.1% of the range width = 0.002
    assert set(_call(loaded, "write", {"patterns": patterns})) == set(binary.state_shapes)


def test_a_wrong_dtype_is_rejected_with_a_message_that_identifies_the_input(binary, loaded):
    # Signature functions number their inputs in alphabetical order of the keys (documented in export/README.md).
    feed = {k: tf.constant(v) for k, v in binary.feeds["recall"].items()}
    feed["queries"] = tf.cast(feed["queries"], tf.float64)
    position = sorted(feed).index("queries")
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match=rf"input #{position}\(zero-based\) was expected to be a float tensor but is a double tensor",
    ):
        loaded.signatures["recall"](**feed)
    # The restored functions name the input.
    with pytest.raises(TypeError, match=r"dtype=tf\.float64, name='patterns'\) to TensorSpec\(.*dtype=tf\.float32"):
        loaded.write(tf.constant(binary.patterns, tf.float64))


# ---------------------------------------------------------------------------------------------------- TF1 session
@pytest.fixture(scope="module")
def session(binary):
    graph = tf.Graph()
    with graph.as_default():
        sess = tf.compat.v1.Session(graph=graph)
        meta_graph = tf.compat.v1.saved_model.loader.load(sess, ["serve"], binary.export_dir)
    yield sess, meta_graph
    sess.close()


TF1_CASES = ["pattern_dims", "pattern_rank3", "nan", "mask_vs_queries", "state_dims", "state_rank2", "state_scalar"]


def _session_call(session, sig, feed):
    """Feeds through a session callable: like TF Serving, no Python-side shape or dtype checks of the feeds."""
    sess, meta_graph = session
    signature = meta_graph.signature_def[sig]
    in_keys, out_keys = sorted(feed), sorted(signature.outputs)
    options = config_pb2.CallableOptions()
    options.feed.extend(signature.inputs[k].name for k in in_keys)
    options.fetch.extend(signature.outputs[k].name for k in out_keys)
    run = sess._make_callable_from_options(options)
    return dict(zip(out_keys, run(*[feed[k] for k in in_keys])))


@pytest.mark.parametrize(
    "sig,key,mutate,message",
    [BAD_INPUTS[k] for k in TF1_CASES]
    + [("write", "patterns", lambda x: x.astype(np.float64), r"Type mismatch: actual double vs\. expect float")],
    ids=TF1_CASES + ["dtype"],
)
def test_tf1_session_without_feed_checks_rejects_bad_inputs(binary, session, sig, key, mutate, message):
    feed = dict(binary.feeds[sig])
    feed[key] = mutate(feed[key])
    with pytest.raises(tf.errors.InvalidArgumentError, match=message) as info:
        _session_call(session, sig, feed)
    if "Type mismatch" in message:
        assert f"{sig}_{key}" in str(info.value)  # the placeholder's name
    _assert_close(_session_call(session, sig, binary.feeds[sig]), binary.expected[sig])


# ---------------------------------------------------------------------------------------------------- export API / CLI
def test_export_directory_contents_and_keras_copy(binary):
    meta = json.load(open(os.path.join(binary.export_dir, "assets.extra", ebmm_export.METADATA_FILE)))
    assert meta["signatures"] == list(SIGNATURES) and meta["serving_default"] == SERVING_DEFAULT
    assert meta["pattern_shape"] == [16] and meta["data_range"] == [-1.0, 1.0] and meta["read_steps"] == 3
    assert {k: tuple(v["shape"]) for k, v in meta["state"].items()} == binary.state_shapes
    assert all(memory_name_of(k) == v["memory_name"] for k, v in meta["state"].items())
    copy = keras.saving.load_model(os.path.join(binary.export_dir, "assets.extra", "memory.keras"))
    for a, b in zip(binary.memory.weights, copy.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    hidden = [p for p in os.listdir(os.path.dirname(binary.export_dir)) if p.startswith(".")]
    assert not hidden, hidden  # no temporary directories left next to the version


def test_export_refuses_to_overwrite_unless_asked_and_replaces_when_asked(binary, tmp_path):
    target = tmp_path / "m" / "1"
    target.mkdir(parents=True)
    (target / "stale.txt").write_text("old")
    with pytest.raises(FileExistsError, match="overwrite"):
        ebmm_export.export_memory(binary.memory, target)
    with pytest.raises(TypeError, match="EnergyMemory"):
        ebmm_export.export_memory(binary.memory.energy_net, tmp_path / "x" / "1")
    ebmm_export.export_memory(binary.memory, target, overwrite=True, keras_copy=False)
    assert not (target / "stale.txt").exists() and (target / "saved_model.pb").exists()
    assert sorted(os.listdir(tmp_path / "m")) == ["1"]
    assert ebmm_export.verify_export(binary.memory, str(target)) < 1e-5


def test_verify_export_catches_an_export_of_other_weights(binary):
    target = binary.export_dir  # the fixture's export of binary.memory
    assert ebmm_export.verify_export(binary.memory, str(target)) < 1e-5
    other = keras.saving.load_model(binary.keras_file)
    other.read_step_raw.assign(other.read_step_raw + 1.0)  # a read step size: the write is unchanged
    with pytest.raises(AssertionError, match="recall differs"):
        ebmm_export.verify_export(other, str(target))
    other.theta_bar[0].assign(other.theta_bar[0] + 0.5)
    with pytest.raises(AssertionError, match="write differs"):
        ebmm_export.verify_export(other, str(target))


def test_workdir_prefers_best_then_latest_and_names_both_when_missing(binary, tmp_path):
    workdir = tmp_path / "run"
    with pytest.raises(FileNotFoundError) as info:
        ebmm_export.find_memory_file(workdir)
    assert str(workdir / "best" / "memory.keras") in str(info.value)
    assert str(workdir / "latest" / "memory.keras") in str(info.value)
    (workdir / "latest").mkdir(parents=True)
    shutil.copy(binary.keras_file, workdir / "latest" / "memory.keras")
    assert ebmm_export.find_memory_file(workdir) == str(workdir / "latest" / "memory.keras")
    (workdir / "best").mkdir()
    shutil.copy(binary.keras_file, workdir / "best" / "memory.keras")
    assert ebmm_export.find_memory_file(workdir) == str(workdir / "best" / "memory.keras")


def test_cli_exports_a_workdir_and_reports_errors(binary, tmp_path):
    workdir = tmp_path / "run"
    (workdir / "latest").mkdir(parents=True)
    shutil.copy(binary.keras_file, workdir / "latest" / "memory.keras")
    target = tmp_path / "export" / "binary" / "3"
    cli = [sys.executable, "-m", "ebmm_tf.export"]
    ok = _submit(cli + [f"--workdir={workdir}", f"--export_dir={target}"])
    missing = _submit(cli + [f"--workdir={tmp_path / 'nothing'}", f"--export_dir={tmp_path / 'e' / '1'}"])
    occupied = tmp_path / "export" / "binary" / "2"
    occupied.mkdir(parents=True)
    (occupied / "keep.txt").write_text("an earlier version")
    refused = _submit(cli + [f"--memory_file={binary.keras_file}", f"--export_dir={occupied}"])

    proc = ok.result()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "serving_default = write_and_recall" in proc.stdout
    reloaded = tf.saved_model.load(str(target))
    _assert_close(_call(reloaded, "write", binary.feeds["write"]), binary.expected["write"])

    proc = missing.result()
    assert proc.returncode != 0
    assert "best/memory.keras" in proc.stderr and "latest/memory.keras" in proc.stderr
    proc = refused.result()
    assert proc.returncode != 0 and "not empty" in proc.stderr and "--overwrite" in proc.stderr
    assert os.listdir(occupied) == ["keep.txt"]


# ---------------------------------------------------------------------------------------------------- Keras
def test_readme_keras_example_runs_and_matches_the_memory(binary):
    text = open(os.path.join(ROOT, "export", "README.md")).read()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    (code,) = [b for b in blocks if b.startswith("# keras-example")]
    code, n = re.subn(r'load_model\("[^"]+"\)', f"load_model({binary.keras_file!r})", code)
    assert n == 1
    namespace = {}
    exec(compile(code, "export/README.md", "exec"), namespace)
    memory = binary.memory
    expected = memory.recall(memory.write(namespace["patterns"]), namespace["queries"]).numpy()
    np.testing.assert_allclose(namespace["from_function"], expected, atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(namespace["from_model"], expected, atol=ATOL, rtol=RTOL)
