"""The paper's dataset variants and the validation split, each with its own seed.

- ``-S``: a fraction of the training set — the *first* fraction (the paper's CIFAR10-S keeps the
  first 10%) or a seeded, class-stratified random fraction;
- ``-C``: exactly round(rate·N) training labels, chosen by a seeded permutation, each replaced by
  a *different* class drawn uniformly;
- a validation split carved from the (subset, corrupted) training pool, so tuning never sees the
  test set.
"""

from __future__ import annotations

import torch
from torch import Tensor

from metasam.data.arrays import ArrayData

SUBSET_MODES = ("first", "stratified")


def subset(data: ArrayData, fraction: float, mode: str = "first", seed: int = 0) -> ArrayData:
    """The first ⌊fraction·N⌋ examples, or (``stratified``) ⌊fraction·N_c⌋ random examples of
    each class c (in their original order)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"subset: fraction must be in (0, 1], got {fraction}")
    n = len(data)
    if mode == "first":
        return data.subset(torch.arange(int(fraction * n)))
    if mode != "stratified":
        raise ValueError(f"subset_mode: unknown value {mode!r}; allowed: {', '.join(SUBSET_MODES)}")
    gen = torch.Generator().manual_seed(seed)
    keep = []
    for c in range(data.num_classes):
        members = torch.nonzero(data.y == c).flatten()
        chosen = members[torch.randperm(members.numel(), generator=gen)[:int(fraction *
                                                                             members.numel())]]
        keep.append(chosen)
    return data.subset(torch.sort(torch.cat(keep)).values)


def corrupt_labels(data: ArrayData, rate: float, seed: int = 0) -> tuple[ArrayData, Tensor]:
    """Flip exactly round(rate·N) labels to a different class chosen uniformly.

    Returns the corrupted data and the indices of the flipped examples.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"label_noise: rate must be in [0, 1], got {rate}")
    k = data.num_classes
    if k < 2:
        raise ValueError("label_noise needs at least two classes")
    n = len(data)
    gen = torch.Generator().manual_seed(seed)
    flipped = torch.randperm(n, generator=gen)[:round(rate * n)]
    shift = torch.randint(1, k, (flipped.numel(),), generator=gen)
    y = data.y.clone()
    y[flipped] = (y[flipped] + shift) % k
    return data.with_labels(y), torch.sort(flipped).values


def split_validation(data: ArrayData, fraction: float, seed: int = 0
                     ) -> tuple[ArrayData, ArrayData | None]:
    """A seeded, class-stratified validation split of ⌊fraction·N_c⌋ examples per class."""
    if fraction <= 0.0:
        return data, None
    if fraction >= 1.0:
        raise ValueError(f"val_fraction must be below 1, got {fraction}")
    gen = torch.Generator().manual_seed(seed)
    val = []
    for c in range(data.num_classes):
        members = torch.nonzero(data.y == c).flatten()
        take = int(fraction * members.numel())
        val.append(members[torch.randperm(members.numel(), generator=gen)[:take]])
    val_index = torch.sort(torch.cat(val)).values
    mask = torch.ones(len(data), dtype=torch.bool)
    mask[val_index] = False
    return data.subset(torch.nonzero(mask).flatten()), data.subset(val_index)


def fold_count(fraction: float) -> int:
    """The k of the k-fold splits whose folds are about a ``fraction`` of the pool."""
    return max(2, round(1.0 / fraction))


def stratified_fold(data: ArrayData, folds: int, fold: int, seed: int = 0
                    ) -> tuple[ArrayData, ArrayData]:
    """Fold ``fold`` of a seeded, class-stratified ``folds``-fold split of ``data``: (the other
    folds, this fold). For one ``seed`` the folds are disjoint and together cover the pool;
    each holds ⌊N_c/k⌋ or ⌈N_c/k⌉ examples of each class c. A repeat of the k-fold split is
    another ``seed``."""
    if folds < 2:
        raise ValueError(f"folds: expected at least 2, got {folds}")
    if not 0 <= fold < folds:
        raise ValueError(f"fold: expected 0 to {folds - 1}, got {fold}")
    gen = torch.Generator().manual_seed(seed)
    val = []
    for c in range(data.num_classes):
        members = torch.nonzero(data.y == c).flatten()
        shuffled = members[torch.randperm(members.numel(), generator=gen)]
        val.append(torch.tensor_split(shuffled, folds)[fold])
    val_index = torch.sort(torch.cat(val)).values
    mask = torch.ones(len(data), dtype=torch.bool)
    mask[val_index] = False
    return data.subset(torch.nonzero(mask).flatten()), data.subset(val_index)
