"""Samplers whose draws depend on the study seed and the trial number, not on the process.

Optuna seeds a sampler once, when it is created; a study that several processes (or a resumed
process) work on would either replay the same draws (optuna#3255) or need a per-process salt,
which made ``seed: 0`` irreproducible. Here the random state is re-seeded before every trial
from ``(study seed, trial number)``: the same study seed at concurrency 1 gives the same sampled
trials, run after run and across resumes (the training is deterministic on one device, so TPE
sees the same history). With concurrency > 1 each trial is still a function of its number and of
the history it sees, but which results a trial sees depends on which of its siblings have
finished by then: the sampled trials differ from run to run, as they do in any asynchronous
search.
"""

from __future__ import annotations

import warnings
from typing import Any

import optuna
from optuna.samplers import RandomSampler, TPESampler

from metasam.tuning import compat


def trial_seed(study_seed: int, number: int) -> int:
    """The seed of trial ``number`` of a study seeded ``study_seed``."""
    return (study_seed * 1_000_003 + number * 7_919 + 12_345) % 2**31


class _TrialSeeded:
    """Mixin for an Optuna sampler: seeded with the study seed, and its random state (and that
    of its inner random sampler, TPE's start-up draws) re-seeded from the trial number before
    each trial."""

    def __init__(self, study_seed: int, **kwargs: Any) -> None:
        super().__init__(seed=study_seed, **kwargs)  # type: ignore[call-arg]
        self.study_seed = study_seed

    def before_trial(self, study: optuna.Study, trial: Any) -> None:
        compat.reseed_sampler(self, trial_seed(self.study_seed, trial.number))  # type: ignore[arg-type]
        super().before_trial(study, trial)  # type: ignore[misc]


class TrialSeededTPE(_TrialSeeded, TPESampler):
    pass


class TrialSeededRandom(_TrialSeeded, RandomSampler):
    pass


def make_sampler(kind: str, study_seed: int, startup_trials: int) -> optuna.samplers.BaseSampler:
    """The study's sampler: ``tpe`` (multivariate, grouped for the conditional space, constant
    liar for parallel trials) or ``random``, both trial-seeded."""
    if kind == "random":
        return TrialSeededRandom(study_seed)
    with warnings.catch_warnings():  # multivariate/group/constant_liar are "experimental"
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return TrialSeededTPE(study_seed, n_startup_trials=startup_trials, multivariate=True,
                              group=True, constant_liar=True)
