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


def _stratified_draw(data: ArrayData, fraction: float, seed: int) -> Tensor:
    """Sorted indices of a seeded draw of ⌊fraction·N_c⌋ examples of each class c."""
    gen = torch.Generator().manual_seed(seed)
    chosen = []
    for c in range(data.num_classes):
        members = torch.nonzero(data.y == c).flatten()
        take = int(fraction * members.numel())
        chosen.append(members[torch.randperm(members.numel(), generator=gen)[:take]])
    return torch.sort(torch.cat(chosen)).values


def _fold_index(data: ArrayData, folds: int, fold: int, seed: int) -> Tensor:
    """Sorted indices of fold ``fold`` of the seeded, class-stratified ``folds``-fold split."""
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
    return torch.sort(torch.cat(val)).values


def _apart(data: ArrayData, val_index: Tensor) -> tuple[ArrayData, ArrayData]:
    """(the pool without ``val_index``, the examples at ``val_index``)."""
    mask = torch.ones(len(data), dtype=torch.bool)
    mask[val_index] = False
    return data.subset(torch.nonzero(mask).flatten()), data.subset(val_index)


def split_validation(data: ArrayData, fraction: float, seed: int = 0
                     ) -> tuple[ArrayData, ArrayData | None]:
    """A seeded, class-stratified validation split of ⌊fraction·N_c⌋ examples per class."""
    if fraction <= 0.0:
        return data, None
    if fraction >= 1.0:
        raise ValueError(f"val_fraction must be below 1, got {fraction}")
    return _apart(data, _stratified_draw(data, fraction, seed))


def fold_count(fraction: float, holdout: float = 0.0) -> int:
    """The k of the k-fold splits whose folds are about a ``fraction`` of the pool — of the
    pool's rest when a share ``holdout`` is held back (:func:`held_back`)."""
    share = fraction / (1.0 - holdout) if holdout else fraction
    return max(2, round(1.0 / share))


def stratified_fold(data: ArrayData, folds: int, fold: int, seed: int = 0
                    ) -> tuple[ArrayData, ArrayData]:
    """Fold ``fold`` of a seeded, class-stratified ``folds``-fold split of ``data``: (the other
    folds, this fold). For one ``seed`` the folds are disjoint and together cover the pool;
    each holds ⌊N_c/k⌋ or ⌈N_c/k⌉ examples of each class c. A repeat of the k-fold split is
    another ``seed``."""
    return _apart(data, _fold_index(data, folds, fold, seed))


VAL_SCOPES = ("rest", "holdout")


def held_back(data: ArrayData, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """(the rest, the held-back part) of a pool, as sorted indices: a seeded, class-stratified
    ⌊fraction·N_c⌋ examples of each class c held back for a study's verdict."""
    hold = _stratified_draw(data, fraction, seed)
    mask = torch.ones(len(data), dtype=torch.bool)
    mask[hold] = False
    return torch.nonzero(mask).flatten(), hold


def split_with_holdout(data: ArrayData, *, holdout: float, holdout_seed: int,
                       val_fraction: float, val_seed: int, val_fold: int | None = None,
                       val_folds: int | None = None, scope: str = "rest"
                       ) -> tuple[ArrayData, ArrayData, int]:
    """Train and validation when a share ``holdout`` of the pool is held back (see
    :func:`held_back`): the validation examples come from the rest (``scope="rest"``: the
    tuning trials' split of val_fraction·N examples, or with ``val_fold`` that fold of the
    rest's k-fold split, k = ``val_folds`` or :func:`fold_count`) or, with
    ``scope="holdout"``, fold ``val_fold`` of the held-back part's ``val_folds``-fold split
    (the verdict's instances). Training is the whole pool without the validation examples.
    Returns (train, validation, the number of examples held back)."""
    if scope not in VAL_SCOPES:
        raise ValueError(f"val_scope: unknown value {scope!r}; allowed: {', '.join(VAL_SCOPES)}")
    if not 0.0 < holdout < 1.0:
        raise ValueError(f"holdout must be in (0, 1), got {holdout}")
    if val_fraction >= 1.0 - holdout:
        raise ValueError(f"val_fraction {val_fraction} leaves no training data beside holdout "
                         f"{holdout}: their sum must be below 1")
    rest, hold = held_back(data, holdout, holdout_seed)
    part = rest if scope == "rest" else hold
    pool = data.subset(part)
    if scope == "holdout":
        if val_fold is None or val_folds is None:
            raise ValueError("val_scope holdout needs val_fold and val_folds")
        local = _fold_index(pool, val_folds, val_fold, val_seed)
    elif val_fold is not None:
        k = val_folds or fold_count(val_fraction, holdout)
        local = _fold_index(pool, k, val_fold, val_seed)
    else:
        local = _stratified_draw(pool, val_fraction / (1.0 - holdout), val_seed)
    return (*_apart(data, torch.sort(part[local]).values), int(hold.numel()))
