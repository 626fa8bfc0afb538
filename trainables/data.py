"""MNIST: find, verify, load and split, exactly as the seed notebook did.

Pixels stay uint8 until batch time (a quarter of the memory of float32, and what
goes into Ray's object store); `PIXEL_SCALE` = 1/256 turns them into the seed's
floats, because the seed's `mnist_data.pkl.gz` stores byte/256.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import pickle
import struct
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainables.errors import DataError

PIXEL_SCALE = 1.0 / 256.0
BUNDLED_DIR = Path(__file__).parent / "mnist"
DATA_DIR_ENV = "HPSEARCH_DATA_DIR"
SPLIT_SEED = 42  # the seed notebook's random_state
VAL_FRACTION = 0.2  # the seed notebook's test_size

# name -> (md5 of the uncompressed bytes, IDX magic, shape): the published values.
IDX_FILES = {
    "train-images-idx3-ubyte": ("6bbc9ace898e44ae57da46a324031adb", 2051, (60000, 28, 28)),
    "train-labels-idx1-ubyte": ("a25bea736e30d166cdddb491f175f624", 2049, (60000,)),
    "t10k-images-idx3-ubyte": ("2646ac647ad5339dbf082846283269ea", 2051, (10000, 28, 28)),
    "t10k-labels-idx1-ubyte": ("27ae3e4e09519cfbb04c329615203637", 2049, (10000,)),
}
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)


@dataclass(frozen=True)
class MnistSplits:
    """The seed's split: 48,000 train / 12,000 validation / 10,000 test; x uint8 (N, 28, 28), y int64."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    def subset(self, n: int | None) -> MnistSplits:
        """Keep the first `n` training images (smoke runs); validation and test stay whole."""
        if n is None or n >= len(self.x_train):
            return self
        return MnistSplits(self.x_train[:n], self.y_train[:n], self.x_val, self.y_val, self.x_test, self.y_test)


def read_idx(path: Path, verify: bool = True) -> np.ndarray:
    """Read one IDX file (`.gz` or raw) and check its md5, magic and shape against the published ones."""
    name = path.name.removesuffix(".gz")
    if name not in IDX_FILES:
        raise DataError(f"{path}: not one of the four MNIST IDX files {sorted(IDX_FILES)}")
    md5, magic, shape = IDX_FILES[name]
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"{path}: cannot read ({e})") from None
    header = 4 + 4 * len(shape)
    if len(raw) < header:
        raise DataError(f"{path}: truncated, {len(raw)} bytes is shorter than the {header}-byte header")
    got_magic = struct.unpack(">I", raw[:4])[0]
    if got_magic != magic:
        raise DataError(f"{path}: wrong magic number, expected {magic}, got {got_magic}")
    got_shape = struct.unpack(f">{len(shape)}I", raw[4:header])
    if got_shape != shape:
        raise DataError(f"{path}: wrong shape, expected {shape}, got {got_shape}")
    size = int(np.prod(shape))
    if len(raw) != header + size:
        raise DataError(f"{path}: truncated or padded, expected {header + size} bytes, got {len(raw)}")
    if verify and hashlib.md5(raw).hexdigest() != md5:
        raise DataError(f"{path}: md5 of the uncompressed bytes is {hashlib.md5(raw).hexdigest()}, expected {md5}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and nothing else: a pickle can run any code it names."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),  # arrays pickled with protocol 5
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # array bytes pickled by Python 3 with protocol 2
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise DataError(f"refusing to unpickle {module}.{name}: only numpy arrays are allowed in an MNIST pickle")
        return super().find_class(module, name)


def _read_pickle(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The seed's `mnist_data.pkl.gz`: ((x, y) train 50k, valid 10k, test 10k), x float32 = byte/256."""
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
            train, valid, test = _NumpyOnlyUnpickler(f, encoding="latin1").load()
    except DataError as e:
        raise DataError(f"{path}: {e}") from None
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as e:
        raise DataError(f"{path}: not a readable (train, valid, test) MNIST pickle ({e})") from None
    x = np.concatenate([train[0], valid[0]])
    y = np.concatenate([train[1], valid[1]])
    return _to_uint8(x, path), y, _to_uint8(test[0], path), test[1]


def _to_uint8(x: np.ndarray, path: Path) -> np.ndarray:
    """Undo the pkl's byte/256 scaling so every format yields the same uint8 pixels."""
    x = np.asarray(x)
    if x.shape[1:] not in ((784,), (28, 28)):
        raise DataError(f"{path}: images must have shape (N, 784) or (N, 28, 28), got {x.shape}")
    if x.dtype == np.uint8:
        return x.reshape(-1, 28, 28)
    if x.size and (x.min() < 0 or x.max() >= 1.0 + 1e-6):
        raise DataError(f"{path}: float pixels must lie in [0, 1), got range [{x.min()}, {x.max()}]")
    return np.rint(x * 256).clip(0, 255).astype(np.uint8).reshape(-1, 28, 28)


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Keras-style `mnist.npz` with x_train, y_train, x_test, y_test; never unpickles objects."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = [z[k] for k in ("x_train", "y_train", "x_test", "y_test")]
    except KeyError as e:
        raise DataError(f"{path}: missing array {e}; an MNIST .npz needs x_train, y_train, x_test, y_test") from None
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable .npz ({e})") from None
    return _to_uint8(arrays[0], path), arrays[1], _to_uint8(arrays[2], path), arrays[3]


def _read_idx_dir(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    def find(name: str) -> Path:
        for candidate in (root / f"{name}.gz", root / name):
            if candidate.exists():
                return candidate
        raise DataError(f"{root}: missing MNIST file {name}[.gz]")

    return tuple(read_idx(find(name)) for name in IDX_FILES)  # type: ignore[return-value]


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """Where MNIST comes from: the argument, else $HPSEARCH_DATA_DIR, else the copy bundled with the package."""
    chosen = data_dir or os.environ.get(DATA_DIR_ENV) or BUNDLED_DIR
    return Path(chosen).expanduser()


def read_raw(data_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The 60,000 training and 10,000 test images and labels, from an IDX folder, a .pkl(.gz) or a .npz."""
    path = resolve_data_dir(data_dir)
    if path.is_dir():
        x, y, xt, yt = _read_idx_dir(path)
    elif path.name.endswith((".pkl", ".pkl.gz")):
        x, y, xt, yt = _read_pickle(path)
    elif path.suffix == ".npz":
        x, y, xt, yt = _read_npz(path)
    elif not path.exists():
        raise DataError(f"{path}: no such file or folder")
    else:
        raise DataError(f"{path}: unknown MNIST format; expected an IDX folder, a .pkl(.gz) or a .npz")
    y, yt = np.asarray(y, dtype=np.int64), np.asarray(yt, dtype=np.int64)
    for what, xs, ys in (("training", x, y), ("test", xt, yt)):
        if len(xs) != len(ys):
            raise DataError(f"{path}: {what} images and labels differ in count, {len(xs)} != {len(ys)}")
        if ys.size and (ys.min() < 0 or ys.max() > 9):
            raise DataError(f"{path}: {what} labels must be digits 0-9, got range [{ys.min()}, {ys.max()}]")
    return x, y, xt, yt


def split(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The seed's split: sklearn's train_test_split(test_size=0.2, random_state=42, shuffle=True)."""
    from sklearn.model_selection import train_test_split

    x_train, x_val, y_train, y_val = train_test_split(
        x, y, test_size=VAL_FRACTION, random_state=SPLIT_SEED, shuffle=True
    )
    return x_train, y_train, x_val, y_val


def load_mnist(data_dir: str | os.PathLike | None = None) -> MnistSplits:
    """Read, verify and split MNIST: 48,000 train / 12,000 validation / 10,000 test."""
    x, y, x_test, y_test = read_raw(data_dir)
    x_train, y_train, x_val, y_val = split(x, y)
    return MnistSplits(x_train, y_train, x_val, y_val, x_test, y_test)


def download_mnist(dest: str | os.PathLike, mirrors: tuple[str, ...] = MIRRORS) -> Path:
    """Opt-in: fetch the four IDX files into `dest`, md5-verified, under a file lock (parallel trials race)."""
    import fcntl

    dest = Path(dest).expanduser()
    dest.mkdir(parents=True, exist_ok=True)
    with open(dest / ".download.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        for name in IDX_FILES:
            target = dest / f"{name}.gz"
            with contextlib.suppress(DataError):
                read_idx(target)
                continue
            errors = []
            for mirror in mirrors:
                try:
                    with urllib.request.urlopen(mirror + target.name, timeout=60) as r:
                        blob = r.read()
                    if hashlib.md5(gzip.decompress(blob)).hexdigest() != IDX_FILES[name][0]:
                        raise DataError("md5 of the uncompressed bytes does not match the published one")
                except (OSError, EOFError, DataError) as e:
                    errors.append(f"{mirror}: {e}")
                    continue
                tmp = target.with_suffix(".gz.part")
                tmp.write_bytes(blob)
                os.replace(tmp, target)
                break
            else:
                raise DataError(f"could not download {target.name}: " + "; ".join(errors))
    return dest
