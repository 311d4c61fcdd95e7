"""Datasets: variants, torchvision on-disk formats, the shared archives and the device loader."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from metasam.data import (
    DatasetNotFoundError,
    DeviceLoader,
    load_dataset,
    parse_name,
    prepare_splits,
)
from metasam.data.arrays import ArrayData
from metasam.data.loader import random_crop_flip
from metasam.data.variants import corrupt_labels, split_validation, subset

SHARED = Path(os.environ.get("METASAM_TEST_DATA",
                             Path(__file__).resolve().parents[2] / "shared" / "data"))
needs_shared = pytest.mark.skipif(not (SHARED / "mnist.npz").is_file(),
                                  reason=f"shared data not found at {SHARED}")


def toy(n: int = 1000, classes: int = 10, seed: int = 0) -> ArrayData:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 1, 4, 4), generator=gen, dtype=torch.uint8)
    y = torch.arange(n) % classes
    return ArrayData(x, y, classes, (0.5,), (0.25,), 255.0, "toy")


# --- variants ----------------------------------------------------------------------------------

def test_subset_first_keeps_exactly_the_first_fraction() -> None:
    data = toy(1000)
    part = subset(data, 0.1)
    assert len(part) == 100
    assert torch.equal(part.x, data.x[:100]) and torch.equal(part.y, data.y[:100])


def test_stratified_subset_has_the_fraction_of_every_class_and_is_seeded() -> None:
    data = toy(1000)
    a, b, c = subset(data, 0.1, "stratified", 1), subset(data, 0.1, "stratified", 1), \
        subset(data, 0.1, "stratified", 2)
    assert len(a) == 100
    assert torch.equal(torch.bincount(a.y, minlength=10), torch.full((10,), 10))
    assert torch.equal(a.x, b.x) and not torch.equal(a.x, c.x)


def test_label_corruption_flips_exactly_the_rate_to_other_classes() -> None:
    data = toy(1000)
    noisy, flipped = corrupt_labels(data, 0.2, seed=3)
    changed = torch.nonzero(noisy.y != data.y).flatten()
    assert changed.numel() == 200  # a corrupted label never equals the true one
    assert torch.equal(changed, flipped)
    assert torch.equal(noisy.x, data.x)
    # the new class is uniform over the other classes (χ² over 9 cells, 200 draws)
    shift = (noisy.y[flipped] - data.y[flipped]) % 10
    counts = torch.bincount(shift, minlength=10)[1:].double()
    assert int(torch.bincount(shift, minlength=10)[0]) == 0
    chi2 = float(((counts - 200 / 9) ** 2 / (200 / 9)).sum())
    assert chi2 < 26.1  # the 0.999 quantile of χ²_8
    again, _ = corrupt_labels(data, 0.2, seed=3)
    other, _ = corrupt_labels(data, 0.2, seed=4)
    assert torch.equal(again.y, noisy.y) and not torch.equal(other.y, noisy.y)


def test_validation_split_is_stratified_disjoint_and_seeded() -> None:
    data = toy(1000)
    train, val = split_validation(data, 0.1, seed=0)
    assert len(val) == 100 and len(train) == 900
    assert torch.equal(torch.bincount(val.y, minlength=10), torch.full((10,), 10))
    ids = lambda d: {bytes(row) for row in d.x.reshape(len(d), -1).numpy()}  # noqa: E731
    assert not ids(train) & ids(val)
    _, val2 = split_validation(data, 0.1, seed=1)
    assert not torch.equal(val.x, val2.x)


def test_prepare_splits_applies_variant_suffixes_in_order() -> None:
    base, options = parse_name("digits-S-C")
    assert base == "digits" and options == {"subset": 0.1, "label_noise": 0.2}
    splits = prepare_splits("digits-S-C", val_fraction=0.0)
    full_train, full_test = load_dataset("digits")
    assert len(splits.train) == int(0.1 * len(full_train))
    assert torch.equal(splits.train.x, full_train.x[:len(splits.train)])
    flipped = int((splits.train.y != full_train.y[:len(splits.train)]).sum())
    assert flipped == round(0.2 * len(splits.train)) == splits.description["flipped"]
    assert torch.equal(splits.test.y, full_test.y)  # the test set is never touched
    with pytest.raises(ValueError, match="unknown dataset 'digits-X'"):
        prepare_splits("digits-X")


# --- torchvision on-disk formats, written by the test -----------------------------------------

def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I",
                                                                     *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as fh:
            fh.write(data)
    else:
        path.write_bytes(data)


@pytest.mark.parametrize("name,folder,gz", [("mnist", "MNIST", False),
                                            ("fashion_mnist", "FashionMNIST", True)])
def test_reads_torchvision_mnist_folders(tmp_path, name, folder, gz) -> None:
    rng = np.random.default_rng(0)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (12, 28, 28)),
              "train-labels-idx1-ubyte": rng.integers(0, 10, 12),
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (5, 28, 28)),
              "t10k-labels-idx1-ubyte": rng.integers(0, 10, 5)}
    for stem, array in arrays.items():
        write_idx(tmp_path / folder / "raw" / stem, array, gz)
    train, test = load_dataset(name, tmp_path)
    assert train.x.shape == (12, 1, 28, 28) and train.x.dtype == torch.uint8
    assert np.array_equal(train.x[:, 0].numpy(), arrays["train-images-idx3-ubyte"])
    assert np.array_equal(test.y.numpy(), arrays["t10k-labels-idx1-ubyte"])


def test_reads_torchvision_cifar_folders(tmp_path) -> None:
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    written = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
        labels = list(rng.integers(0, 10, 3))
        with open(folder / name, "wb") as fh:
            pickle.dump({"data": data, "labels": labels}, fh)
        written.append((data, labels))
    train, test = load_dataset("cifar10", tmp_path)
    assert train.x.shape == (15, 3, 32, 32)
    assert np.array_equal(train.x[3].numpy().reshape(-1), written[1][0][0])
    assert test.y.tolist() == [int(v) for v in written[5][1]]
    # CIFAR-100 uses fine labels
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name in ("train", "test"):
        with open(folder / name, "wb") as fh:
            pickle.dump({"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8),
                         "fine_labels": [99, 0, 5, 42], "coarse_labels": [1, 2, 3, 4]}, fh)
    train, _ = load_dataset("cifar100", tmp_path)
    assert train.num_classes == 100 and train.y.tolist() == [99, 0, 5, 42]


def test_reads_torchvision_svhn_files(tmp_path) -> None:
    from scipy.io import savemat

    rng = np.random.default_rng(2)
    for split, n in (("train", 6), ("test", 4)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = np.array([[10], [1], [2], [3], [4], [5]][:n])
        savemat(tmp_path / f"{split}_32x32.mat", {"X": x, "y": y})
        if split == "train":
            written = x
    train, test = load_dataset("svhn", tmp_path)
    assert train.x.shape == (6, 3, 32, 32)
    assert np.array_equal(train.x[2].numpy(), written[:, :, :, 2].transpose(2, 0, 1))
    assert train.y.tolist() == [0, 1, 2, 3, 4, 5]  # label 10 is the digit 0


@pytest.mark.parametrize("name,missing,downloadable", [
    ("cifar10", "cifar-10-batches-py/data_batch_1", True),
    ("cifar100", "cifar-100-python/train", True),
    ("svhn", "train_32x32.mat", True),
    ("mnist", "MNIST/raw/train-images-idx3-ubyte", True),
    ("mnist1d", "mnist1d.npz", False)])
def test_missing_dataset_is_one_line_saying_where_and_how(tmp_path, name, missing,
                                                          downloadable) -> None:
    """torchvision's datasets name --download and the folder; an archive torchvision cannot
    fetch names only the folder (never a --download that would not work)."""
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset(name, tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path / missing) in message
    assert "--data-dir" in message and "METASAM_DATA" in message
    assert ("--download" in message) == downloadable


# --- the shared real archives -----------------------------------------------------------------

@needs_shared
def test_shared_archives_load_with_their_documented_shapes() -> None:
    train, test = load_dataset("mnist", SHARED)
    assert train.x.shape == (60000, 1, 28, 28) and test.x.shape == (10000, 1, 28, 28)
    assert abs(float(train.x.float().mean() / 255) - 0.1307) < 1e-3
    train, test = load_dataset("mnist1d", SHARED)
    assert train.x.shape == (4000, 1, 40) and test.x.shape == (1000, 1, 40)


@needs_shared
def test_shared_cifar10_jpeg_s_is_the_first_tenth() -> None:
    splits = prepare_splits("cifar10-jpeg-S", data_dir=SHARED, val_fraction=0.0)
    train, _ = load_dataset("cifar10-jpeg", SHARED)
    assert len(splits.train) == 5000
    assert torch.equal(splits.train.x, train.x[:5000])
    assert train.x.shape == (50000, 3, 32, 32)
    mean = train.x[:5000].float().mean(dim=(0, 2, 3)) / 255
    torch.testing.assert_close(mean, torch.tensor(train.mean, dtype=torch.float32), atol=0.01,
                               rtol=0)


# --- the device loader ------------------------------------------------------------------------

def test_crop_and_flip_match_a_per_image_reference() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (16, 3, 8, 8), generator=gen, dtype=torch.uint8)
    state = torch.Generator().manual_seed(5)
    out = random_crop_flip(x, 4, True, state)
    replay = torch.Generator().manual_seed(5)
    top = torch.randint(0, 9, (16,), generator=replay)
    left = torch.randint(0, 9, (16,), generator=replay)
    flip = torch.rand(16, generator=replay) < 0.5
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(16):
        want = padded[i, :, top[i]:top[i] + 8, left[i]:left[i] + 8]
        if flip[i]:
            want = want.flip(-1)
        assert torch.equal(out[i], want)
    assert bool(flip.any()) and not bool(flip.all())


def test_loader_covers_a_seeded_permutation_and_resumes() -> None:
    data = toy(100)
    loader = DeviceLoader(data, 32, seed=3)
    seen = torch.cat([y for _, y in loader])
    assert len(loader) == 4 and seen.numel() == 100
    assert torch.equal(torch.sort(seen).values, torch.sort(data.y).values)
    first = [x.clone() for x, _ in DeviceLoader(data, 32, seed=3)]
    other = [x.clone() for x, _ in DeviceLoader(data, 32, seed=4)]
    assert not all(torch.equal(a, b) for a, b in zip(first, other))
    # state_dict: a loader restored mid-run yields the same next epoch
    a = DeviceLoader(data, 32, seed=3)
    list(a)
    state = a.state_dict()
    b = DeviceLoader(data, 32, seed=99)
    b.load_state_dict(state)
    assert all(torch.equal(p[0], q[0]) for p, q in zip(a, b))
    x, _ = next(iter(DeviceLoader(data, 100, shuffle=False)))
    torch.testing.assert_close(x, (data.x.float() / 255 - 0.5) / 0.25)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_cuda_loader_draws_on_the_device_and_resumes() -> None:
    """On a GPU the augmentation's draws come from a CUDA generator (no host→device copy per
    batch); its state travels with the loader's, so a restored loader repeats the epoch."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 3, 8, 8), generator=gen, dtype=torch.uint8)
    data = ArrayData(x, torch.arange(64) % 10, 10, (0.5,) * 3, (0.25,) * 3, 255.0, "toy")
    a = DeviceLoader(data, 16, device="cuda", augment="crop_flip", seed=3)
    assert a.augment_generator.device.type == "cuda"
    list(a)
    state = a.state_dict()
    assert "augment_generator" in state
    b = DeviceLoader(data, 16, device="cuda", augment="crop_flip", seed=99)
    b.load_state_dict(state)
    assert all(torch.equal(p[0], q[0]) for p, q in zip(a, b))


def test_the_loader_builds_its_normalization_once() -> None:
    """The mean and std tensors are made when the loader is, not per batch: an epoch makes
    no new tensor from a Python list (the constants' ``tensor`` calls would show as ops)."""
    from metasam.optim.counting import OpCounter

    data = toy(100)
    loader = DeviceLoader(data, 25, seed=0)
    with OpCounter() as count:
        batches = list(loader)
    assert len(batches) == 4 and "lift_fresh" not in count.by_op
    assert count.by_op["div"] == 2 * 4 and count.by_op["sub"] == 4
    x, _ = next(iter(DeviceLoader(data, 100, shuffle=False)))
    torch.testing.assert_close(x, data.normalize(data.x))
