"""The private attributes of Optuna and Ray Tune that metasam relies on, in one place.

Optuna and Ray Tune expose no public way to reach a study's storage object, a trial's storage
id, the Optuna trial behind a Ray trial of ``OptunaSearch``, or the stale trials of a heartbeat
storage. Each access goes through a function here, and :func:`check` verifies them once on the
installed versions (``pyproject.toml`` pins the tested ranges), so that an incompatible release
fails in one line instead of deep inside a study.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage, JournalStorage
from optuna.storages._heartbeat import BaseHeartbeat  # no public home in Optuna

from metasam.errors import ConfigError

__all__ = ["BaseHeartbeat", "asha_forget", "check", "heartbeat_backend", "ray_current_cluster_file",
           "reseed_sampler", "search_study", "search_trials", "stale_trial_ids",
           "study_id", "study_storage", "trial_id"]


def study_storage(study: optuna.Study) -> BaseStorage:
    """The storage object the study writes through (Optuna's cache wrapper for RDB storages)."""
    return study._storage


def study_id(study: optuna.Study) -> int:
    return study._study_id


def trial_id(trial: optuna.Trial | optuna.trial.FrozenTrial) -> int:
    """A trial's id in its storage (unique across the studies of one storage)."""
    return trial._trial_id


def heartbeat_backend(study: optuna.Study) -> BaseHeartbeat | None:
    """The storage that records heartbeats (an RDB storage behind Optuna's cache, or the
    journal itself), or ``None`` when it has none."""
    storage = study_storage(study)
    # a journal storage's own `_backend` is its log file, not a storage
    backend = storage if isinstance(storage, JournalStorage) else getattr(storage, "_backend",
                                                                           storage)
    return backend if isinstance(backend, BaseHeartbeat) else None


def stale_trial_ids(backend: BaseHeartbeat, study: optuna.Study) -> list[int]:
    return list(backend._get_stale_trial_ids(study_id(study)))


def search_study(search: Any) -> optuna.Study:
    """The Optuna study of a ``ray.tune.search.optuna.OptunaSearch``."""
    return search._ot_study


def search_trials(search: Any) -> dict[str, optuna.Trial]:
    """``OptunaSearch``'s live Optuna trials by Ray trial id (it adds and removes them)."""
    return search._ot_trials


def ray_current_cluster_file() -> Path | None:
    """Where ``ray start`` records the cluster that a plain ``ray.init()`` on this machine
    joins (``None`` if this Ray keeps no such record where metasam looks)."""
    try:
        from ray._common.utils import get_ray_address_file
    except ImportError:
        return None
    return Path(get_ray_address_file(None))


def reseed_sampler(sampler: optuna.samplers.BaseSampler, seed: int) -> None:
    """Re-seed an Optuna sampler's random state (and that of its inner random sampler, TPE's
    start-up draws): Optuna seeds a sampler only when it is created."""
    sampler._rng.rng.seed(seed)  # type: ignore[attr-defined]
    inner = getattr(sampler, "_random_sampler", None)
    if inner is not None:
        inner._rng.rng.seed(seed)


def asha_forget(scheduler: Any, trial_id: str) -> None:
    """Drop a trial from Ray's ASHA bookkeeping (its rungs never see it)."""
    scheduler._trial_info.pop(trial_id, None)


_checked = False


def check() -> None:
    """Fail in one line when the installed Optuna or Ray Tune lacks what metasam reaches."""
    global _checked
    if _checked:
        return
    from ray.tune.search.optuna import OptunaSearch

    study = optuna.create_study()
    trial = study.ask()
    missing = [name for obj, name in ((study, "_storage"), (study, "_study_id"),
                                      (trial, "_trial_id"))
               if not hasattr(obj, name)]
    if not hasattr(optuna.storages.RDBStorage, "_get_stale_trial_ids"):
        missing.append("RDBStorage._get_stale_trial_ids")
    search = OptunaSearch(metric="m", mode="max")
    missing += [f"OptunaSearch.{n}" for n in ("_ot_study", "_ot_trials")
                if not hasattr(search, n)]
    from ray.tune.schedulers import ASHAScheduler

    if not hasattr(ASHAScheduler(metric="m", mode="max"), "_trial_info"):
        missing.append("ASHAScheduler._trial_info")
    for cls in (optuna.samplers.TPESampler, optuna.samplers.RandomSampler):
        sampler = cls(seed=0)
        if not hasattr(getattr(sampler, "_rng", None), "rng"):
            missing.append(f"{cls.__name__}._rng.rng")
    inner = getattr(optuna.samplers.TPESampler(seed=0), "_random_sampler", None)
    if not hasattr(getattr(inner, "_rng", None), "rng"):
        missing.append("TPESampler._random_sampler._rng.rng")
    if missing:
        raise ConfigError("installed packages", f"optuna {optuna.__version__} / ray "
                          f"{_ray_version()} lack {', '.join(missing)}",
                          "the versions pyproject.toml names")
    _checked = True


def _ray_version() -> str:
    import ray

    return ray.__version__
