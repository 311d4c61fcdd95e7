"""Datasets as device-ready tensors: sources, the paper's variants and a device-resident loader.

    >>> from metasam.data import prepare_splits
    >>> splits = prepare_splits("digits", val_fraction=0.1)
    >>> len(splits.train), len(splits.val), len(splits.test)
    (1298, 141, 358)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from metasam.data import sources, variants
from metasam.data.arrays import ArrayData, Splits
from metasam.data.loader import AUGMENTATIONS, DeviceLoader
from metasam.data.sources import DatasetNotFoundError
from metasam.errors import ConfigError


@dataclass(frozen=True)
class DatasetInfo:
    load: Callable[[Path, bool], tuple[ArrayData, ArrayData]]
    augment: str  # the default augmentation ("auto")
    description: str


DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo(lambda root, dl: sources.load_digits_data(), "none",
                          "scikit-learn's bundled 8×8 digits (embedded, offline)"),
    "mnist": DatasetInfo(sources.load_mnist, "none",
                         "MNIST from mnist.npz or torchvision's MNIST/raw"),
    "fashion_mnist": DatasetInfo(lambda root, dl: sources.load_mnist_like(
        "fashion_mnist", root, dl), "none", "Fashion-MNIST from torchvision's FashionMNIST/raw"),
    "mnist1d": DatasetInfo(lambda root, dl: sources.load_mnist1d_archive(root), "none",
                           "MNIST-1D from mnist1d.npz"),
    "cifar10": DatasetInfo(lambda root, dl: sources.load_cifar("cifar10", root, dl),
                           "crop_flip", "CIFAR-10 from torchvision's cifar-10-batches-py"),
    "cifar10-jpeg": DatasetInfo(lambda root, dl: sources.load_cifar10_jpeg_archive(root),
                                "crop_flip", "lossy JPEG copy of CIFAR-10 (cifar10-jpeg.npz)"),
    "cifar100": DatasetInfo(lambda root, dl: sources.load_cifar("cifar100", root, dl),
                            "crop_flip", "CIFAR-100 from torchvision's cifar-100-python"),
    "svhn": DatasetInfo(sources.load_svhn, "crop", "SVHN from torchvision's *_32x32.mat"),
}

# The paper's variant suffixes: NAME-S keeps the first 10%, NAME-C flips 20% of the labels.
VARIANT_SUFFIXES = {"S": {"subset": 0.1}, "C": {"label_noise": 0.2}}


def default_data_dir() -> Path:
    """``$METASAM_DATA`` if set, else ``./data``."""
    return Path(os.environ.get("METASAM_DATA", "data"))


def parse_name(name: str) -> tuple[str, dict[str, float]]:
    """``"cifar10-jpeg-S"`` → ``("cifar10-jpeg", {"subset": 0.1})``."""
    options: dict[str, float] = {}
    base = name
    while base not in DATASETS and "-" in base:
        head, suffix = base.rsplit("-", 1)
        if suffix not in VARIANT_SUFFIXES:
            break
        options.update(VARIANT_SUFFIXES[suffix])
        base = head
    if base not in DATASETS:
        raise ConfigError("dataset", f"unknown dataset {name!r}",
                          f"{', '.join(DATASETS)} (optionally with -S and/or -C)")
    return base, options


def load_dataset(name: str, data_dir: str | os.PathLike[str] | None = None,
                 download: bool = False) -> tuple[ArrayData, ArrayData]:
    """(train, test) of a dataset by name (no variant suffix)."""
    if name not in DATASETS:
        raise ConfigError("dataset", f"unknown dataset {name!r}", DATASETS)
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    return DATASETS[name].load(root.expanduser(), download)


def prepare_splits(name: str, *, data_dir: str | os.PathLike[str] | None = None,
                   download: bool = False, subset: float | None = None,
                   subset_mode: str = "first", subset_seed: int = 0,
                   label_noise: float = 0.0, noise_seed: int = 0,
                   val_fraction: float = 0.1, val_seed: int = 0,
                   val_fold: int | None = None, val_folds: int | None = None,
                   holdout: float = 0.0, holdout_seed: int = 0, val_scope: str = "rest"
                   ) -> Splits:
    """Train / validation / test with the variants applied in this order: subset, label noise
    (on the training pool, so validation labels are as noisy as training labels), then the
    validation split. The test set is never altered.

    With ``val_fold`` the validation split is that fold of the stratified k-fold split of the
    pool seeded ``val_seed``, k = round(1/val_fraction) (the instances of a study's race);
    without, a stratified random ``val_fraction`` of each class. With ``holdout`` > 0 a
    seeded stratified share of the pool is held back for a study's verdict: validation
    examples come from the rest, or with ``val_scope="holdout"`` from a fold of the held-back
    part (:func:`metasam.data.variants.split_with_holdout`); training is always the pool
    without the validation examples."""
    base, implied = parse_name(name)
    subset = implied.get("subset", subset) if subset is None else subset
    label_noise = label_noise or implied.get("label_noise", 0.0)
    train, test = load_dataset(base, data_dir, download)
    description: dict[str, object] = {"dataset": base, "train_pool": len(train)}
    if subset is not None and subset < 1.0:
        train = variants.subset(train, subset, subset_mode, subset_seed)
        description.update(subset=subset, subset_mode=subset_mode, subset_size=len(train))
    if label_noise > 0:
        train, flipped = variants.corrupt_labels(train, label_noise, noise_seed)
        description.update(label_noise=label_noise, flipped=int(flipped.numel()))
    description.update(pool=len(train))
    if holdout > 0 and val_fraction > 0:
        train, val, held = variants.split_with_holdout(
            train, holdout=holdout, holdout_seed=holdout_seed, val_fraction=val_fraction,
            val_seed=val_seed, val_fold=val_fold, val_folds=val_folds, scope=val_scope)
        description.update(holdout=held, val_scope=val_scope)
        if val_fold is not None:
            description.update(val_fold=val_fold)
    elif val_fold is not None and val_fraction > 0:
        train, val = variants.stratified_fold(train, val_folds or variants.fold_count(
            val_fraction), val_fold, val_seed)
        description.update(val_fold=val_fold)
    else:
        train, val = variants.split_validation(train, val_fraction, val_seed)
    description.update(train=len(train), val=0 if val is None else len(val), test=len(test))
    return Splits(train, val, test, description)


__all__ = ["AUGMENTATIONS", "ArrayData", "DATASETS", "DatasetNotFoundError", "DeviceLoader",
           "Splits", "default_data_dir", "load_dataset", "parse_name", "prepare_splits"]
