"""MNIST loading: the bundled IDX files, the seed's pickle, Keras' .npz, where data comes from, and the seed's split."""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import threading
from pathlib import Path

import numpy as np
import pytest
from sklearn.model_selection import train_test_split

from search.cli import main
from trainables.data import (
    BUNDLED_DIR,
    DATA_DIR_ENV,
    IDX_FILES,
    MnistSplits,
    download_mnist,
    load_mnist,
    read_idx,
    read_raw,
)
from trainables.errors import DataError

LABELS = "train-labels-idx1-ubyte"  # the smallest bundled file, for the error cases


class Payload:
    """Pickles as a call to os.system: what a malicious data or model file would contain."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def raw() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The bundled 60,000 training and 10,000 test images and labels, unsplit, in file order."""
    return read_raw(BUNDLED_DIR)


def raw_copy(tmp_path: Path, name: str) -> tuple[Path, bytes]:
    """An uncompressed copy of a bundled file, to corrupt."""
    data = gzip.decompress((BUNDLED_DIR / f"{name}.gz").read_bytes())
    path = tmp_path / name
    path.write_bytes(data)
    return path, data


def small_arrays(n_train: int = 120, n_test: int = 30):
    """Deterministic small uint8 images and labels for the file-format tests."""
    rng = np.random.default_rng(1)
    return (
        rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, n_train, dtype=np.int64),
        rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, n_test, dtype=np.int64),
    )


def seed_pickle(path: Path, x, y, xt, yt, n_train: int, protocol: int = pickle.DEFAULT_PROTOCOL) -> Path:
    """Write the seed's format: ((x, y) train, valid, test), x float32 (N, 784) = byte/256, gzipped if *.gz."""

    def floats(a):
        return a.reshape(len(a), 784).astype(np.float32) / 256

    parts = ((floats(x[:n_train]), y[:n_train]), (floats(x[n_train:]), y[n_train:]), (floats(xt), yt))
    with gzip.open(path, "wb", compresslevel=1) if path.suffix == ".gz" else open(path, "wb") as f:
        pickle.dump(parts, f, protocol=protocol)
    return path


def assert_arrays_equal(got, expected):
    for g, e in zip(got, expected, strict=True):
        assert g.dtype == e.dtype and g.shape == e.shape
        np.testing.assert_array_equal(g, e)


# --- the bundled IDX files -----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(IDX_FILES))
def test_bundled_file_matches_published_md5_of_uncompressed_bytes(name):
    md5, _, shape = IDX_FILES[name]
    assert hashlib.md5(gzip.decompress((BUNDLED_DIR / f"{name}.gz").read_bytes())).hexdigest() == md5
    x = read_idx(BUNDLED_DIR / f"{name}.gz")
    assert x.shape == shape and x.dtype == np.uint8


def test_raw_idx_reads_the_same_as_gz(tmp_path):
    path, _ = raw_copy(tmp_path, "t10k-images-idx3-ubyte")
    np.testing.assert_array_equal(read_idx(path), read_idx(BUNDLED_DIR / "t10k-images-idx3-ubyte.gz"))


def test_folder_of_raw_idx_files_loads_like_the_bundled_one(tmp_path, mnist):
    for name in IDX_FILES:
        raw_copy(tmp_path, name)
    loaded = load_mnist(tmp_path)
    for field in MnistSplits.__dataclass_fields__:
        np.testing.assert_array_equal(getattr(loaded, field), getattr(mnist, field))


def test_bundled_labels_and_pixels_are_plausible(raw):
    x, y, xt, yt = raw
    assert x.dtype == xt.dtype == np.uint8 and y.dtype == yt.dtype == np.int64
    assert set(np.unique(y)) == set(np.unique(yt)) == set(range(10))
    assert x.max() == 255 and x.min() == 0


# --- read_idx errors: a DataError naming the file and what is wrong --------------------------------


def test_missing_file(tmp_path):
    path = tmp_path / f"{LABELS}.gz"
    with pytest.raises(DataError, match="file not found") as e:
        read_idx(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize(
    ("keep", "expected"),
    [(5, "truncated, 5 bytes is shorter than the 8-byte header"), (1000, "truncated or padded, expected 60008")],
)
def test_truncated_raw_file(tmp_path, keep, expected):
    path, data = raw_copy(tmp_path, LABELS)
    path.write_bytes(data[:keep])
    with pytest.raises(DataError, match=expected) as e:
        read_idx(path)
    assert str(path) in str(e.value)


def test_truncated_gz_file(tmp_path):
    path = tmp_path / f"{LABELS}.gz"
    blob = (BUNDLED_DIR / f"{LABELS}.gz").read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match="cannot read") as e:
        read_idx(path)
    assert str(path) in str(e.value)


def test_wrong_magic(tmp_path):
    path, data = raw_copy(tmp_path, LABELS)
    path.write_bytes((2051).to_bytes(4, "big") + data[4:])
    with pytest.raises(DataError, match="wrong magic number, expected 2049, got 2051") as e:
        read_idx(path)
    assert str(path) in str(e.value)


def test_wrong_shape_header(tmp_path):
    path, data = raw_copy(tmp_path, LABELS)
    path.write_bytes(data[:4] + (59999).to_bytes(4, "big") + data[8:])
    with pytest.raises(DataError, match=r"wrong shape, expected \(60000,\), got \(59999,\)") as e:
        read_idx(path)
    assert str(path) in str(e.value)


def test_md5_mismatch_from_one_flipped_pixel(tmp_path):
    path, data = raw_copy(tmp_path, "t10k-images-idx3-ubyte")
    corrupt = bytearray(data)
    corrupt[16 + 5000] ^= 0xFF
    path.write_bytes(bytes(corrupt))
    with pytest.raises(DataError, match="md5 of the uncompressed bytes") as e:
        read_idx(path)
    assert str(path) in str(e.value)
    assert read_idx(path, verify=False)[6, 10, 16] == data[16 + 5000] ^ 0xFF  # 5000 = 6*784 + 10*28 + 16


def test_non_mnist_file_name(tmp_path):
    path = tmp_path / "emnist-letters-idx3-ubyte.gz"
    path.write_bytes((BUNDLED_DIR / f"{LABELS}.gz").read_bytes())
    with pytest.raises(DataError, match="not one of the four MNIST IDX files") as e:
        read_idx(path)
    assert str(path) in str(e.value)


def test_folder_missing_a_file(tmp_path):
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte"):
        (tmp_path / f"{name}.gz").write_bytes((BUNDLED_DIR / f"{name}.gz").read_bytes())
    with pytest.raises(DataError, match="missing MNIST file t10k-labels-idx1-ubyte"):
        load_mnist(tmp_path)


def test_missing_path_and_unknown_format(tmp_path):
    with pytest.raises(DataError, match="no such file or folder"):
        load_mnist(tmp_path / "nowhere.bin")
    (tmp_path / "mnist.csv").write_text("label,pixels\n")
    with pytest.raises(DataError, match="unknown MNIST format"):
        load_mnist(tmp_path / "mnist.csv")


# --- the seed's mnist_data.pkl.gz ------------------------------------------------------------------


def test_seed_pickle_gives_the_same_arrays_and_split_as_idx(tmp_path, raw, mnist):
    x, y, xt, yt = raw
    path = seed_pickle(tmp_path / "mnist_data.pkl.gz", x, y, xt, yt, n_train=50_000)
    assert_arrays_equal(read_raw(path), raw)
    from_pickle = load_mnist(data_dir=path)
    for field in MnistSplits.__dataclass_fields__:
        got, expected = getattr(from_pickle, field), getattr(mnist, field)
        assert got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("name", ["mnist_data.pkl.gz", "mnist_data.pkl"])
def test_seed_pickle_any_protocol_compressed_or_not(tmp_path, protocol, name):
    x, y, xt, yt = small_arrays()
    path = seed_pickle(tmp_path / name, x, y, xt, yt, n_train=100, protocol=protocol)
    assert_arrays_equal(read_raw(path), (x, y, xt, yt))


def test_pickle_that_runs_code_is_refused_not_run(tmp_path):
    marker = tmp_path / "pwned"
    y = np.zeros(3, dtype=np.int64)
    path = tmp_path / "mnist_data.pkl.gz"
    with gzip.open(path, "wb") as f:
        pickle.dump(((Payload(marker), y), (Payload(marker), y), (Payload(marker), y)), f)
    with pytest.raises(DataError, match="refusing to unpickle posix.system") as e:
        load_mnist(path)
    assert str(path) in str(e.value)
    assert not marker.exists()


def test_pickle_that_is_not_a_pickle(tmp_path):
    path = tmp_path / "mnist_data.pkl.gz"
    path.write_bytes(b"definitely not gzip")
    with pytest.raises(DataError, match="not a readable"):
        load_mnist(path)


# --- Keras-style mnist.npz -------------------------------------------------------------------------


@pytest.mark.parametrize("as_floats", [False, True])
def test_npz(tmp_path, as_floats):
    x, y, xt, yt = small_arrays()
    path = tmp_path / "mnist.npz"
    if as_floats:
        np.savez(path, x_train=x.reshape(-1, 784) / 256, y_train=y, x_test=xt.reshape(-1, 784) / 256, y_test=yt)
    else:
        np.savez(path, x_train=x, y_train=y, x_test=xt, y_test=yt)
    assert_arrays_equal(read_raw(path), (x, y, xt, yt))
    splits = load_mnist(path)
    assert (len(splits.x_train), len(splits.x_val), len(splits.x_test)) == (96, 24, 30)


def test_npz_missing_a_key(tmp_path):
    x, y, xt, _ = small_arrays()
    path = tmp_path / "mnist.npz"
    np.savez(path, x_train=x, y_train=y, x_test=xt)
    with pytest.raises(DataError, match="missing array .*y_test.*needs x_train, y_train, x_test, y_test") as e:
        load_mnist(path)
    assert str(path) in str(e.value)


def test_npz_object_arrays_are_not_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    x, y, xt, yt = small_arrays()
    path = tmp_path / "mnist.npz"
    np.savez(path, x_train=np.array([Payload(marker)], dtype=object), y_train=y, x_test=xt, y_test=yt)
    with pytest.raises(DataError, match="not a readable .npz"):
        load_mnist(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"x_train": np.zeros((120, 10), np.uint8)}, r"images must have shape .* got \(120, 10\)"),
        ({"x_test": np.full((30, 784), 2.0)}, r"float pixels must lie in \[0, 1\)"),
        ({"y_train": np.full(120, 10)}, r"training labels must be digits 0-9, got range \[10, 10\]"),
        ({"y_test": np.zeros(29, np.int64)}, "test images and labels differ in count, 30 != 29"),
    ],
)
def test_npz_with_bad_contents(tmp_path, change, expected):
    x, y, xt, yt = small_arrays()
    path = tmp_path / "mnist.npz"
    np.savez(path, **({"x_train": x, "y_train": y, "x_test": xt, "y_test": yt} | change))
    with pytest.raises(DataError, match=expected):
        load_mnist(path)


# --- where the data comes from ---------------------------------------------------------------------


def test_data_dir_env_var_is_honoured_and_argument_wins(tmp_path, monkeypatch):
    from_env, from_arg = tmp_path / "env.npz", tmp_path / "arg.npz"
    x, y, xt, yt = small_arrays()
    np.savez(from_env, x_train=x, y_train=y, x_test=xt, y_test=yt)
    np.savez(from_arg, x_train=x[:50], y_train=y[:50], x_test=xt, y_test=yt)
    monkeypatch.setenv(DATA_DIR_ENV, str(from_env))
    assert len(load_mnist().x_train) == 96
    assert len(load_mnist(data_dir=from_arg).x_train) == 40


def test_env_var_pointing_nowhere_is_an_error_not_a_fallback(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "missing"))
    with pytest.raises(DataError, match="no such file or folder"):
        load_mnist()


def test_bundled_copy_is_the_default(monkeypatch, raw):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    assert_arrays_equal(read_raw(), raw)


# --- the seed's split ------------------------------------------------------------------------------


def test_split_sizes_and_dtypes(mnist):
    assert mnist.x_train.shape == (48_000, 28, 28) and mnist.y_train.shape == (48_000,)
    assert mnist.x_val.shape == (12_000, 28, 28) and mnist.y_val.shape == (12_000,)
    assert mnist.x_test.shape == (10_000, 28, 28) and mnist.y_test.shape == (10_000,)
    for field in MnistSplits.__dataclass_fields__:
        assert getattr(mnist, field).dtype == (np.uint8 if field.startswith("x") else np.int64)


def test_split_is_sklearns_with_the_seeds_arguments(mnist, raw):
    x, y, xt, yt = raw
    x_train, x_val, y_train, y_val = train_test_split(x, y, test_size=0.2, random_state=42, shuffle=True)
    for got, expected in [
        (mnist.x_train, x_train), (mnist.y_train, y_train), (mnist.x_val, x_val), (mnist.y_val, y_val),
        (mnist.x_test, xt), (mnist.y_test, yt),
    ]:
        np.testing.assert_array_equal(got, expected)


def test_subset_keeps_first_training_images_and_whole_validation_and_test(mnist):
    small = mnist.subset(1000)
    np.testing.assert_array_equal(small.x_train, mnist.x_train[:1000])
    np.testing.assert_array_equal(small.y_train, mnist.y_train[:1000])
    assert small.x_val is mnist.x_val and small.y_val is mnist.y_val
    assert small.x_test is mnist.x_test and small.y_test is mnist.y_test
    assert mnist.subset(None) is mnist and mnist.subset(48_000) is mnist and mnist.subset(10**6) is mnist


# --- the opt-in download, from local file:// mirrors ---------------------------------------------


def mirror(tmp_path: Path, name: str, corrupt: str | None = None) -> str:
    """A folder holding the bundled .gz files, as a file:// base URL; `corrupt` names a file to replace with other bytes."""
    folder = tmp_path / name
    folder.mkdir()
    for f in IDX_FILES:
        blob = (BUNDLED_DIR / f"{f}.gz").read_bytes()
        (folder / f"{f}.gz").write_bytes(gzip.compress(b"not mnist") if f == corrupt else blob)
    return folder.as_uri() + "/"


def test_download_skips_a_bad_mirror_verifies_and_keeps_what_is_there(tmp_path, raw):
    bad = mirror(tmp_path, "bad", corrupt=LABELS)
    missing = (tmp_path / "nowhere").as_uri() + "/"
    dest = tmp_path / "data"
    assert download_mnist(dest, (missing, bad, mirror(tmp_path, "good"))) == dest
    assert_arrays_equal(read_raw(dest), raw)
    assert sorted(p.name for p in dest.glob("*.gz")) == sorted(f"{f}.gz" for f in IDX_FILES)
    before = {p.name: p.stat().st_mtime_ns for p in dest.glob("*.gz")}
    download_mnist(dest, (missing,))  # every file verified in place: nothing fetched, so no mirror needed
    assert {p.name: p.stat().st_mtime_ns for p in dest.glob("*.gz")} == before


def test_download_that_no_mirror_can_serve_names_each_reason(tmp_path):
    bad = mirror(tmp_path, "bad", corrupt=LABELS)
    with pytest.raises(DataError, match=rf"could not download {LABELS}.gz: .*nowhere.*; .*bad.*md5") as e:
        download_mnist(tmp_path / "data", ((tmp_path / "nowhere").as_uri() + "/", bad))
    assert "md5 of the uncompressed bytes does not match" in str(e.value)
    assert not list((tmp_path / "data").glob(f"{LABELS}*"))  # nothing unverified is left behind


def test_parallel_downloads_into_one_folder_both_succeed(tmp_path, raw):
    """Trials that start together race for the same folder; the file lock serialises them."""
    good, dest, errors = mirror(tmp_path, "good"), tmp_path / "data", []

    def fetch():
        try:
            download_mnist(dest, (good,))
        except Exception as e:  # reported below: an assert in a thread would be lost
            errors.append(e)

    threads = [threading.Thread(target=fetch) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert_arrays_equal(read_raw(dest), raw)


def test_download_command(tmp_path, capsys):
    assert main(["download", str(tmp_path / "data"), "--mirror", mirror(tmp_path, "good")]) == 0
    assert f"MNIST verified in {tmp_path / 'data'}" in capsys.readouterr().out
    code = main(["download", str(tmp_path / "other"), "--mirror", (tmp_path / "nowhere").as_uri() + "/"])
    err = capsys.readouterr().err
    assert code == 3 and err.count("\n") == 1 and err.startswith("hpsearch: error: could not download")
