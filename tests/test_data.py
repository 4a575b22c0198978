"""Tests of ebmm_tf.data: loaders (real offline copies and synthetic official layouts), cache,
missing-data errors, samplers and the checkpointable episode pipeline.

Real-data tests read ``$EBMM_DATA_DIR`` or ``<repo>/../shared/data`` and are skipped (with the reason)
when the files are absent. Decoded arrays are cached under the pytest cache directory, so only the
first run on a machine pays the decode (~15 s for Omniglot + CIFAR-10 + the ImageNet stand-in).
"""

import gzip
import io
import os
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageDraw

import gin
from ebmm_tf import data
from ebmm_tf import distortions as D
from ebmm_tf.data import cache as cache_lib
from ebmm_tf.data import common, omniglot

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = Path(os.environ.get("EBMM_DATA_DIR") or REPO.parent / "shared" / "data")


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(request, tmp_path_factory):
    """A stable cache dir under the pytest cache (fresh on a new machine / CI)."""
    cache = getattr(request.config, "cache", None)
    path = cache.mkdir("ebmm_tf_data_cache") if cache is not None else tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(cache_lib.ENV_CACHE_DIR, os.fspath(path))
        yield path


def _require(*relpaths):
    for rel in relpaths:
        if not (REAL_DATA / rel).exists():
            pytest.skip(
                f"real dataset file {REAL_DATA / rel} not found (set EBMM_DATA_DIR to the folder "
                "described in ../shared/data/README.md)"
            )
    return REAL_DATA


@pytest.fixture(scope="session")
def omniglot_raw():
    root = _require("omniglot/images_background.zip", "omniglot/images_evaluation.zip")
    return {s: data.load_raw("omniglot", s, root) for s in ("train", "test")}


@pytest.fixture(scope="session")
def imagenet_raw():
    root = _require("tiny_imagenet_64/tiny_imagenet_val_5000.zip")
    return {s: data.load_raw("imagenet64", s, root) for s in ("train", "test")}


# ----------------------------------------------------------------------------------------- real data


def test_omniglot_real_counts_shapes_values(omniglot_raw):
    root = REAL_DATA
    x, y = data.load_split("omniglot", "train", root)
    assert x.shape == (19280, 32, 32, 1) and x.dtype == np.float32
    assert set(np.unique(x)) == {0.0, 1.0}
    assert 0.03 < x.mean() < 0.2  # ink = 1 is the sparse value
    assert len(np.unique(y)) == 964 and (np.bincount(y) == 20).all()
    t = omniglot_raw["test"]
    assert t.images.shape == (13180, 32, 32, 1) and t.info["num_examples"] == 13180
    assert set(np.unique(t.images)) == {0, 1}
    assert len(np.unique(t.labels)) == 659 and (np.bincount(t.labels) == 20).all()
    assert omniglot_raw["train"].info["class_names"][0] == "Alphabet_of_the_Magi/character01"


def test_omniglot_real_first_image_matches_direct_preprocessing(omniglot_raw):
    with zipfile.ZipFile(REAL_DATA / "omniglot" / "images_background.zip") as zf:
        first = sorted(n for n in zf.namelist() if n.endswith(".png"))[0]
        png = np.asarray(Image.open(io.BytesIO(zf.read(first))).convert("L"), np.float32)
    ink = 1.0 - png / 255.0
    ref = tf.image.resize(ink[None, :, :, None], (32, 32), method="area").numpy()[0] > 0.5
    np.testing.assert_array_equal(omniglot_raw["train"].images[0], ref.astype(np.uint8))


def test_cifar10_real_train_mean_and_test_count():
    root = _require("cifar10/cifar-10-batches-py/data_batch_1", "cifar10/cifar-10-batches-py/test_batch")
    x, y = data.load_split("cifar10", "train", root)
    assert x.shape == (50000, 32, 32, 3) and x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() <= 1.0
    np.testing.assert_allclose(
        x.mean(axis=(0, 1, 2), dtype=np.float64), np.array([125.307, 122.950, 113.865]) / 255, atol=1e-3
    )
    assert sorted(np.unique(y)) == list(range(10))
    with open(root / "cifar10" / "cifar-10-batches-py" / "test_batch", "rb") as f:
        n_test = len(pickle.load(f, encoding="bytes")[b"labels"])
    info = data.dataset_info("cifar10", "test", root)
    assert info["num_examples"] == n_test == 1000  # the offline copy: 1,000 of the 10,000 test images
    assert "1,000 of the 10,000" in info["description"]


def test_imagenet_standin_split_and_labels(imagenet_raw):
    tr, te = imagenet_raw["train"], imagenet_raw["test"]
    assert tr.images.shape == (4000, 64, 64, 3) and te.images.shape == (1000, 64, 64, 3)
    for r in (tr, te):
        assert r.info["standin"] is True and "STAND-IN" in r.info["description"]
    assert tr.info["num_grayscale_converted"] + te.info["num_grayscale_converted"] == 85
    assert (np.bincount(tr.labels, minlength=200) == 20).all()
    assert (np.bincount(te.labels, minlength=200) == 5).all()
    x, _ = data.load_split("imagenet64", "test", REAL_DATA)
    assert x.dtype == np.float32 and 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.9


def test_omniglot_real_episodes(omniglot_raw):
    ds = data.make_episodes("omniglot", "train", 64, D.BlockNoise(16), seed=1, data_dir=REAL_DATA, with_indices=True)
    ep = next(iter(ds))
    for k in ("patterns", "queries", "corrupted", "clamp"):
        assert ep[k].shape == (64, 32, 32, 1) and ep[k].dtype == tf.float32
    idx = ep["indices"].numpy()
    assert len(set(idx)) == 64
    np.testing.assert_array_equal(ep["patterns"].numpy(), omniglot_raw["train"].images[idx].astype(np.float32))
    m = ep["corrupted"].numpy()
    np.testing.assert_array_equal(m.sum(axis=(1, 2, 3)), 256)
    np.testing.assert_array_equal(ep["queries"].numpy()[m == 0], ep["patterns"].numpy()[m == 0])


def test_omniglot_real_correlated_episodes_have_exactly_k_classes(omniglot_raw):
    labels = omniglot_raw["test"].labels
    for k in (2, 4):
        ds = data.make_episodes(
            "omniglot", "test", 32, seed=7, data_dir=REAL_DATA, sampler="correlated", num_classes=k, with_indices=True
        )
        for ep in ds.take(5):
            idx = ep["indices"].numpy()
            assert ep["patterns"].shape[0] == 32 and len(set(idx)) == 32
            cls, counts = np.unique(labels[idx], return_counts=True)
            assert len(cls) == k and counts.min() >= 32 // k


def test_cifar_and_imagenet_episodes_shapes(imagenet_raw):
    _require("cifar10/cifar-10-batches-py/test_batch")
    ep = next(iter(data.make_episodes("cifar10", "test", 16, D.BlockNoise(16, fill="uniform"), data_dir=REAL_DATA)))
    assert ep["patterns"].shape == (16, 32, 32, 3) and ep["queries"].shape == (16, 32, 32, 3)
    ep = next(iter(data.make_episodes("imagenet64", "train", 32, D.BlockNoise(32, fill="uniform"), data_dir=REAL_DATA)))
    assert ep["patterns"].shape == (32, 64, 64, 3)
    np.testing.assert_array_equal(ep["corrupted"].numpy().sum(axis=(1, 2, 3)), 32 * 32 * 3)


# ------------------------------------------------------------------- synthetic official layouts


def _omniglot_png(top, left):
    im = Image.new("1", (105, 105), 1)  # white background (True), black ink (False), like the release
    ImageDraw.Draw(im).rectangle([left, top, left + 40, top + 50], fill=0)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _omniglot_members():
    out = {}
    for a, alphabet in enumerate(["Alpha", "Beta"]):
        for c in (1, 2):
            for d in (1, 2, 3):
                out[f"images_background/{alphabet}/character{c:02d}/{c:04d}_{d:02d}.png"] = _omniglot_png(
                    10 + 20 * a, 5 + 30 * (c - 1)
                )
    return out


def _write_omniglot(root: Path, kind: str) -> Path:
    members = _omniglot_members()
    if kind == "extracted":
        for name, payload in members.items():
            p = root / "omniglot" / name
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(payload)
        return root / "omniglot" / "images_background"
    z = root / "omniglot" / "images_background.zip" if kind == "zip_in_subdir" else root / "images_background.zip"
    z.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(z, "w") as zf:
        for name, payload in members.items():
            zf.writestr(name, payload)
    return z


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    path = tmp_path / "cache"
    monkeypatch.setenv(cache_lib.ENV_CACHE_DIR, os.fspath(path))
    monkeypatch.delenv(common.ENV_DATA_DIR, raising=False)
    return path


def test_omniglot_layouts_convention_and_labels(tmp_path, private_cache, monkeypatch):
    results = []
    for kind in ("zip_in_subdir", "zip_in_root", "extracted"):
        root = tmp_path / kind
        _write_omniglot(root, kind)
        raw = data.load_raw("omniglot", "train", root)
        results.append(raw)
        assert raw.images.shape == (12, 32, 32, 1)
        assert raw.info["class_names"] == [
            "Alpha/character01",
            "Alpha/character02",
            "Beta/character01",
            "Beta/character02",
        ]
        np.testing.assert_array_equal(raw.labels, np.repeat(np.arange(4), 3))
    for r in results[1:]:
        np.testing.assert_array_equal(r.images, results[0].images)
    img = results[0].images[0, :, :, 0]  # rectangle rows 10..60, cols 5..45 of 105 -> ink = 1 there
    assert img[int(35 * 32 / 105), int(25 * 32 / 105)] == 1 and img[31, 31] == 0 and img[0, 31] == 0
    assert abs(img.mean() - 41 * 51 / 105**2) < 0.03
    # EBMM_DATA_DIR is used when no data_dir is given.
    monkeypatch.setenv(common.ENV_DATA_DIR, os.fspath(tmp_path / "zip_in_root"))
    np.testing.assert_array_equal(data.load_raw("omniglot", "train").images, results[0].images)


def test_omniglot_cache_hit_key_and_atomic_write(tmp_path, private_cache, monkeypatch):
    z = _write_omniglot(tmp_path, "zip_in_subdir")
    first = data.load_raw("omniglot", "train", tmp_path)
    files = sorted(p.name for p in private_cache.iterdir())
    assert len(files) == 1 and files[0].endswith(".npz")  # no leftover temporary file

    def boom(*args, **kwargs):
        raise AssertionError("decoded again although the cache holds this split")

    monkeypatch.setattr(omniglot, "_decode_local", boom)
    second = data.load_raw("omniglot", "train", tmp_path)  # served by the cache
    np.testing.assert_array_equal(second.images, first.images)
    np.testing.assert_array_equal(second.labels, first.labels)
    st = z.stat()
    os.utime(z, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a changed source invalidates the entry
    with pytest.raises(AssertionError, match="decoded again"):
        data.load_raw("omniglot", "train", tmp_path)


def _cifar_batch(n, offset):
    d = np.zeros((n, 3, 32, 32), np.uint8)
    d[:, 0], d[:, 1], d[:, 2] = 10, 20, 30
    d[:, 0, 0, 1] = 200  # R at row 0, column 1
    d[:, 2, 5, 0] = offset  # B at row 5, column 0 identifies the batch
    return {b"data": d.reshape(n, 3072), b"labels": list(range(n))}


def test_cifar_official_layouts(tmp_path, private_cache):
    folder = tmp_path / "a" / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for i, name in enumerate(names):
        with open(folder / name, "wb") as f:
            pickle.dump(_cifar_batch(3, 40 + i), f)
    x, y = data.load_split("cifar10", "train", tmp_path / "a")
    assert x.shape == (15, 32, 32, 3) and list(y[:3]) == [0, 1, 2]
    np.testing.assert_allclose(x[0, 0, 0] * 255, [10, 20, 30], atol=1e-4)
    np.testing.assert_allclose(x[0, 0, 1, 0] * 255, 200, atol=1e-4)
    np.testing.assert_allclose(x[::3, 5, 0, 2] * 255, [40, 41, 42, 43, 44], atol=1e-4)
    assert data.dataset_info("cifar10", "test", tmp_path / "a")["num_examples"] == 3
    tar_root = tmp_path / "b"
    tar_root.mkdir()
    with tarfile.open(tar_root / "cifar-10-python.tar.gz", "w:gz") as tar:
        for name in names:
            tar.add(folder / name, arcname=f"cifar-10-batches-py/{name}")
    x2, _ = data.load_split("cifar10", "train", tar_root)
    np.testing.assert_array_equal(x2, x)


def _idx(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    return gzip.compress(header + arr.astype(np.uint8).tobytes())


def test_mnist_official_idx_files(tmp_path, private_cache):
    d = tmp_path / "mnist"
    d.mkdir()
    imgs = np.zeros((3, 28, 28), np.uint8)
    imgs[:, 8:20, 8:20] = 255
    for prefix in ("train", "t10k"):
        (d / f"{prefix}-images-idx3-ubyte.gz").write_bytes(_idx(imgs))
        (d / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(_idx(np.array([3, 1, 4])))
    x, y = data.load_split("mnist", "test", tmp_path)
    assert x.shape == (3, 32, 32, 1) and list(y) == [3, 1, 4]
    assert set(np.unique(x)) == {0.0, 1.0}
    assert x[0, 16, 16, 0] == 1 and x[0, 2, 2, 0] == 0  # ink stays 1 after upscaling


@pytest.mark.parametrize(
    "source, shape, num_classes",
    [
        ("mnist", (32, 32, 1), 10),
        ("cifar10", (32, 32, 3), 10),
        ("omniglot", (32, 32, 1), None),
        ("imagenet64", (64, 64, 3), 1000),
    ],
)
def test_loaders_through_tfds_mock(source, shape, num_classes, tmp_path, monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    monkeypatch.setenv(cache_lib.ENV_CACHE_DIR, "off")  # do not cache random mock data
    monkeypatch.delenv(common.ENV_DATA_DIR, raising=False)
    monkeypatch.setattr(common, "find_tfds", lambda name, data_dir, tfds_data_dir: tmp_path)
    monkeypatch.setattr(common, "tfds_fingerprint", lambda name, root: {"mock": name})
    with tfds.testing.mock_data(num_examples=12):
        x, y = data.load_split(source, "train", tmp_path / "nothing_here")
        info = data.dataset_info(source, "train", tmp_path / "nothing_here")
    assert x.shape == (12, *shape) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0 and 0.0 < x.mean() < 1.0
    if source in ("mnist", "omniglot"):
        assert set(np.unique(x)) <= {0.0, 1.0}
    assert y.shape == (12,) and y.min() >= 0 and (num_classes is None or y.max() < num_classes)
    tfds_name = {"imagenet64": "imagenet_resized/64x64"}.get(source, source)
    assert info["origin"] == f"tfds:{tfds_name} in {tmp_path}" and not info["standin"]


def test_sklearn_digits_standin():
    x, y = data.load_split("sklearn_digits", "train")
    info = data.dataset_info("sklearn_digits", "test")
    assert x.shape == (1297, 32, 32, 1) and set(np.unique(x)) == {0.0, 1.0}
    assert info["num_examples"] == 500 and info["standin"] and "STAND-IN" in info["description"]
    assert sorted(np.unique(y)) == list(range(10))


@pytest.mark.parametrize(
    "source,expected",
    [
        ("omniglot", ["omniglot/images_background.zip", "images_evaluation.zip", "tfds build omniglot"]),
        ("cifar10", ["cifar10/cifar-10-batches-py/", "test_batch", "tfds build cifar10"]),
        ("imagenet64", ["tiny_imagenet_val_5000.zip", "tfds build imagenet_resized --config=64x64"]),
        ("mnist", ["train-images-idx3-ubyte.gz", "tfds build mnist", "sklearn_digits"]),
    ],
)
def test_missing_dataset_error_names_both_routes(source, expected, tmp_path, monkeypatch):
    empty_data, empty_tfds = tmp_path / "data", tmp_path / "tfds"
    empty_data.mkdir()
    empty_tfds.mkdir()
    monkeypatch.delenv(common.ENV_DATA_DIR, raising=False)
    monkeypatch.setenv(common.ENV_TFDS_DATA_DIR, os.fspath(empty_tfds))
    with pytest.raises(data.DatasetNotFoundError) as err:
        data.load_split(source, "train", data_dir=empty_data)
    assert isinstance(err.value, FileNotFoundError)
    msg = str(err.value)
    for s in expected + [
        "--data_dir",
        "EBMM_DATA_DIR",
        "TFDS_DATA_DIR",
        "download=False",
        os.fspath(empty_data),
        os.fspath(empty_tfds),
    ]:
        assert s in msg, (s, msg)
    # The same through an explicit tfds_data_dir and no data_dir at all.
    monkeypatch.delenv(common.ENV_TFDS_DATA_DIR)
    with pytest.raises(data.DatasetNotFoundError, match="no data_dir given"):
        data.load_split(source, "test", tfds_data_dir=empty_tfds)


def test_source_metadata_and_binary_strings_not_loadable():
    assert data.data_range("binary_strings") == (-1.0, 1.0)
    assert data.data_range("omniglot") == (0.0, 1.0)
    assert data.pattern_shape("binary_strings") == (128,)
    assert data.pattern_shape("omniglot") == (32, 32, 1)
    assert data.pattern_shape("cifar10") == (32, 32, 3)
    assert data.pattern_shape("imagenet64") == (64, 64, 3)
    assert data.pattern_shape("mnist") == (32, 32, 1)
    with pytest.raises(ValueError):
        data.load_split("binary_strings", "train")
    with pytest.raises(ValueError):
        data.data_range("svhn")


# ------------------------------------------------------------------------- samplers and episodes


def test_uniform_indices_distinct_and_uniform():
    from scipy import stats

    draws = np.stack([data.uniform_indices(tf.constant([i, 1], tf.int64), 10, 3).numpy() for i in range(2000)])
    assert all(len(set(r)) == 3 for r in draws) and draws.min() >= 0 and draws.max() <= 9
    assert stats.chisquare(np.bincount(draws.ravel(), minlength=10)).pvalue > 1e-3
    with pytest.raises(ValueError):
        data.uniform_indices(tf.constant([0, 0], tf.int64), 3, 4)


def test_correlated_sampler_exact_classes_balanced_counts():
    labels = np.repeat(np.arange(6), [5, 5, 5, 5, 5, 2])  # class 5 is too small for ceil(10 / 3) = 4
    sampler = data.CorrelatedSampler(labels, num_patterns=10, num_classes=3)
    seen = set()
    for i in range(50):
        idx = sampler(tf.constant([i, 0], tf.int64)).numpy()
        assert idx.shape == (10,) and len(set(idx)) == 10
        cls, counts = np.unique(labels[idx], return_counts=True)
        assert len(cls) == 3 and sorted(counts) == [3, 3, 4] and 5 not in cls
        seen.update(cls)
    assert seen == {0, 1, 2, 3, 4}
    with pytest.raises(ValueError):
        data.CorrelatedSampler(labels, num_patterns=30, num_classes=5)  # needs 6 per class: none has


def test_binary_string_episodes():
    ds = data.make_episodes("binary_strings", "train", 16, D.BinaryStringProtocol(), seed=4)
    eps = list(ds.take(2))
    for ep in eps:
        assert ep["patterns"].shape == (16, 128) and set(np.unique(ep["patterns"].numpy())) == {-1.0, 1.0}
        np.testing.assert_array_equal(ep["clamp"].numpy().sum(1), 64)
        np.testing.assert_array_equal(ep["corrupted"].numpy(), 1 - ep["clamp"].numpy())
    assert not np.array_equal(eps[0]["patterns"].numpy(), eps[1]["patterns"].numpy())
    plain = next(iter(data.make_episodes("binary_strings", "train", 8, dim=32)))
    assert plain["patterns"].shape == (8, 32)
    np.testing.assert_array_equal(plain["queries"].numpy(), plain["patterns"].numpy())
    assert not plain["corrupted"].numpy().any() and not plain["clamp"].numpy().any()


def _stream(ds, n):
    return [{k: v.numpy() for k, v in ep.items()} for ep in ds.take(n)]


def _assert_same(a, b):
    assert len(a) == len(b)
    for ea, eb in zip(a, b):
        assert ea.keys() == eb.keys()
        for k in ea:
            np.testing.assert_array_equal(ea[k], eb[k])


def test_episodes_deterministic_per_seed():
    mk = lambda seed: data.make_episodes("sklearn_digits", "train", 12, D.BlockNoise(8), seed=seed)
    a, b, c = _stream(mk(5), 3), _stream(mk(5), 3), _stream(mk(6), 3)
    _assert_same(a, b)
    assert not np.array_equal(a[0]["patterns"], c[0]["patterns"])
    assert not np.array_equal(a[0]["corrupted"], c[0]["corrupted"])
    assert not np.array_equal(a[0]["patterns"], a[1]["patterns"])


@pytest.mark.parametrize(
    "source,kwargs",
    [
        ("binary_strings", dict(distortion=D.BinaryStringProtocol())),
        (
            "sklearn_digits",
            dict(distortion=D.SaltAndPepper(0.2), sampler="correlated", num_classes=3, with_indices=True),
        ),
    ],
)
def test_episode_iterator_checkpoint_restores_stream(source, kwargs, tmp_path):
    mk = lambda: data.make_episodes(source, "train", 10, seed=11, **kwargs)
    it = iter(mk())
    for _ in range(3):
        next(it)
    path = tf.train.Checkpoint(it=it).save(os.fspath(tmp_path / "ckpt"))
    expected = [{k: v.numpy() for k, v in next(it).items()} for _ in range(2)]
    it2 = iter(mk())  # a new pipeline, as in a resumed run
    tf.train.Checkpoint(it=it2).restore(path).assert_consumed()
    got = [{k: v.numpy() for k, v in next(it2).items()} for _ in range(2)]
    _assert_same(got, expected)
    first = _stream(mk(), 1)[0]
    assert not np.array_equal(first["patterns"], got[0]["patterns"])  # the restore moved the stream


def test_make_episodes_is_gin_configurable():
    gin.clear_config()
    try:
        gin.parse_config(
            "ebmm_tf.data.make_episodes.num_patterns = 7\n"
            "ebmm_tf.data.make_episodes.distortion = @ebmm_tf.distortions.BinaryStringProtocol()\n"
            "ebmm_tf.distortions.BinaryStringProtocol.num_known = 100"
        )
        ep = next(iter(data.make_episodes("binary_strings", "train")))
    finally:
        gin.clear_config()
    assert ep["patterns"].shape == (7, 128)
    np.testing.assert_array_equal(ep["clamp"].numpy().sum(1), 100)
