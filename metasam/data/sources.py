"""Readers: each returns (train, test) :class:`ArrayData` from where the data lives.

- ``digits``: scikit-learn's bundled 8×8 digits (offline, always there). It has no official split:
  metasam fixes a class-stratified 20% test split with seed 0.
- NumPy archives in a data folder: ``mnist.npz``, ``cifar10-jpeg.npz`` (a lossy JPEG copy of
  CIFAR-10, decoded with Pillow and cached), ``mnist1d.npz``.
- torchvision's on-disk formats under a data folder, read directly (no per-image Python objects):
  ``cifar-10-batches-py/``, ``cifar-100-python/``, ``{train,test}_32x32.mat`` (SVHN),
  ``MNIST/raw/`` and ``FashionMNIST/raw/`` (IDX files, optionally gzipped). With
  ``download=True`` torchvision fetches them first.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from metasam.data.arrays import ArrayData


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are not where metasam looked; the message says where and what to do."""

    def __init__(self, name: str, looked: Path, hint: str) -> None:
        self.name = name
        self.looked = looked
        super().__init__(f"dataset {name!r}: not found (looked for {looked}); {hint}")


def _tensor(array: np.ndarray) -> torch.Tensor:
    array = np.ascontiguousarray(array)
    return torch.from_numpy(array if array.flags.writeable else array.copy())


def _labels(array: np.ndarray) -> torch.Tensor:
    return _tensor(np.asarray(array).astype(np.int64).reshape(-1))


def _make(name: str, x: np.ndarray, y: np.ndarray, classes: int, mean, std, scale: float,
          notes: tuple[str, ...] = ()) -> ArrayData:
    return ArrayData(_tensor(x), _labels(y), classes, tuple(mean), tuple(std), scale, name, notes)


# --- scikit-learn digits --------------------------------------------------------------------

def load_digits_data() -> tuple[ArrayData, ArrayData]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = bunch.images.astype(np.uint8)[:, None]  # values 0..16
    target = bunch.target
    gen = torch.Generator().manual_seed(0)
    test = []
    for c in range(10):
        members = np.flatnonzero(target == c)
        order = torch.randperm(len(members), generator=gen).numpy()
        test.extend(members[order[: len(members) // 5]])
    is_test = np.zeros(len(target), dtype=bool)
    is_test[np.asarray(test)] = True
    train_x = images[~is_test]
    mean = float(train_x.mean() / 16.0)
    std = float((train_x / 16.0).std())
    return (_make("digits", train_x, target[~is_test], 10, [mean], [std], 16.0),
            _make("digits", images[is_test], target[is_test], 10, [mean], [std], 16.0))


# --- NumPy archives -------------------------------------------------------------------------

def _archive(name: str, root: Path, filename: str) -> Path:
    path = root / filename
    if not path.is_file():
        raise DatasetNotFoundError(name, path, f"put {filename} in the data folder (--data-dir "
                                   "or METASAM_DATA)")
    return path


def load_mnist_archive(root: Path) -> tuple[ArrayData, ArrayData]:
    with np.load(_archive("mnist", root, "mnist.npz"), allow_pickle=False) as z:
        return (_make("mnist", z["x_train"][:, None], z["y_train"], 10, [0.1307], [0.3081], 255.0),
                _make("mnist", z["x_test"][:, None], z["y_test"], 10, [0.1307], [0.3081], 255.0))


def load_mnist1d_archive(root: Path) -> tuple[ArrayData, ArrayData]:
    with np.load(_archive("mnist1d", root, "mnist1d.npz"), allow_pickle=False) as z:
        train_x = z["x_train"].astype(np.float32)[:, None]
        test_x = z["x_test"].astype(np.float32)[:, None]
        mean, std = float(train_x.mean()), float(train_x.std())
        return (_make("mnist1d", train_x, z["y_train"], 10, [mean], [std], 1.0),
                _make("mnist1d", test_x, z["y_test"], 10, [mean], [std], 1.0))


def _cache_dir() -> Path:
    return Path(os.environ.get("METASAM_CACHE", Path.home() / ".cache" / "metasam"))


def _decode_jpegs(blob: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    import io

    from PIL import Image

    images = np.empty((len(offsets) - 1, 32, 32, 3), dtype=np.uint8)
    data = blob.tobytes()
    for i in range(len(offsets) - 1):
        with Image.open(io.BytesIO(data[offsets[i]:offsets[i + 1]])) as img:
            images[i] = np.asarray(img.convert("RGB"))
    return images.transpose(0, 3, 1, 2)


def load_cifar10_jpeg_archive(root: Path) -> tuple[ArrayData, ArrayData]:
    path = _archive("cifar10-jpeg", root, "cifar10-jpeg.npz")
    stat = path.stat()
    key = hashlib.sha1(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()
                       ).hexdigest()[:16]
    cache = _cache_dir() / f"cifar10-jpeg-{key}.npz"
    with np.load(path, allow_pickle=False) as z:
        y_train, y_test = z["y_train"], z["y_test"]
        if cache.is_file():
            with np.load(cache, allow_pickle=False) as c:
                x_train, x_test = c["x_train"], c["x_test"]
        else:
            x_train = _decode_jpegs(z["train_jpeg"], z["train_offsets"])
            x_test = _decode_jpegs(z["test_jpeg"], z["test_offsets"])
            try:
                cache.parent.mkdir(parents=True, exist_ok=True)
                tmp = cache.with_suffix(f".{os.getpid()}.tmp.npz")
                np.savez(tmp, x_train=x_train, x_test=x_test)
                os.replace(tmp, cache)
            except OSError:
                pass  # a read-only home only costs the decoding time next run
    mean, std = (0.4913, 0.4821, 0.4465), (0.2452, 0.2428, 0.2606)
    note = ("lossy JPEG (q75) copy of CIFAR-10: compare optimizers on it, not with published "
            "CIFAR-10 numbers",)
    return (_make("cifar10-jpeg", x_train, y_train, 10, mean, std, 255.0, note),
            _make("cifar10-jpeg", x_test, y_test, 10, mean, std, 255.0, note))


# --- torchvision's on-disk formats ----------------------------------------------------------

def _hint(download_name: str) -> str:
    return (f"pass --download (download: true) to fetch it with torchvision.datasets."
            f"{download_name}, or point --data-dir (METASAM_DATA) at the folder that holds it")


def _read_cifar_pickles(files: list[Path], label_key: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for f in files:
        with open(f, "rb") as fh:
            entry = pickle.load(fh, encoding="latin1")
        xs.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(entry[label_key]))
    return np.concatenate(xs), np.concatenate(ys)


def _download(download_name: str, root: Path, **kwargs: object) -> None:
    import torchvision

    cls = getattr(torchvision.datasets, download_name)
    for train in (True, False):
        if download_name == "SVHN":
            cls(str(root), split="train" if train else "test", download=True)
        else:
            cls(str(root), train=train, download=True, **kwargs)


def load_cifar(name: str, root: Path, download: bool) -> tuple[ArrayData, ArrayData]:
    ten = name == "cifar10"
    folder = root / ("cifar-10-batches-py" if ten else "cifar-100-python")
    train_files = ([folder / f"data_batch_{i}" for i in range(1, 6)] if ten
                   else [folder / "train"])
    test_files = [folder / ("test_batch" if ten else "test")]
    download_name = "CIFAR10" if ten else "CIFAR100"
    missing = [f for f in train_files + test_files if not f.is_file()]
    if missing and download:
        _download(download_name, root)
        missing = [f for f in train_files + test_files if not f.is_file()]
    if missing:
        hint = _hint(download_name)
        if ten and (root / "cifar10-jpeg.npz").is_file():
            hint += "; the offline JPEG copy there is dataset 'cifar10-jpeg'"
        raise DatasetNotFoundError(name, missing[0], hint)
    label_key = "labels" if ten else "fine_labels"
    x_train, y_train = _read_cifar_pickles(train_files, label_key)
    x_test, y_test = _read_cifar_pickles(test_files, label_key)
    if ten:
        mean, std, classes = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 10
    else:
        mean, std, classes = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), 100
    return (_make(name, x_train, y_train, classes, mean, std, 255.0),
            _make(name, x_test, y_test, classes, mean, std, 255.0))


def load_svhn(root: Path, download: bool) -> tuple[ArrayData, ArrayData]:
    from scipy.io import loadmat

    files = [root / "train_32x32.mat", root / "test_32x32.mat"]
    if download and not all(f.is_file() for f in files):
        _download("SVHN", root)
    out = []
    for f in files:
        if not f.is_file():
            raise DatasetNotFoundError("svhn", f, _hint("SVHN"))
        mat = loadmat(str(f))
        x = np.asarray(mat["X"], dtype=np.uint8).transpose(3, 2, 0, 1)
        y = np.asarray(mat["y"]).reshape(-1).astype(np.int64) % 10  # label 10 is digit 0
        out.append(_make("svhn", x, y, 10, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970),
                         255.0))
    return out[0], out[1]


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST's format), plain or gzipped."""
    opener: Callable[..., object] = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:  # type: ignore[operator]
        data = fh.read()  # type: ignore[attr-defined]
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _idx_file(raw: Path, stem: str) -> Path | None:
    for candidate in (raw / stem, raw / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def load_mnist_like(name: str, root: Path, download: bool) -> tuple[ArrayData, ArrayData]:
    folder = "MNIST" if name == "mnist" else "FashionMNIST"
    raw = root / folder / "raw"
    stems = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
             "t10k-labels-idx1-ubyte"]
    if download and any(_idx_file(raw, s) is None for s in stems):
        _download(folder, root)
    paths = []
    for stem in stems:
        path = _idx_file(raw, stem)
        if path is None:
            raise DatasetNotFoundError(name, raw / stem, _hint(folder))
        paths.append(path)
    images_train, labels_train, images_test, labels_test = (read_idx(p) for p in paths)
    mean, std = ((0.1307,), (0.3081,)) if name == "mnist" else ((0.2860,), (0.3530,))
    return (_make(name, images_train[:, None], labels_train, 10, mean, std, 255.0),
            _make(name, images_test[:, None], labels_test, 10, mean, std, 255.0))


def load_mnist(root: Path, download: bool) -> tuple[ArrayData, ArrayData]:
    """MNIST from ``mnist.npz`` if present, else torchvision's ``MNIST/raw`` files."""
    if (root / "mnist.npz").is_file():
        return load_mnist_archive(root)
    return load_mnist_like("mnist", root, download)
