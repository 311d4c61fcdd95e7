"""What a study cost, in full-run equivalents: one unit is one training run of the study's full
budget (all epochs). A tuning trial counts the epochs it reached over the budget (an ASHA-stopped
trial at 8 of 10 epochs is 0.8, a diverged one what it ran); each race run is one full run."""

from __future__ import annotations

from dataclasses import dataclass

import optuna

from metasam.tuning.record import TrialRecord
from metasam.tuning.storage import StudyNotFoundError, census, load_study
from metasam.tuning.study import StudyConfig


@dataclass(frozen=True)
class StudyCost:
    tuning: float        # full-run equivalents of the search's trials
    tuning_trials: int
    race: float          # full-run equivalents of the decision stage's runs
    race_runs: int

    @property
    def total(self) -> float:
        return self.tuning + self.race

    def line(self) -> str:
        return (f"cost: {self.total:.1f} full-run equivalents (tuning {self.tuning:.1f} over "
                f"{self.tuning_trials} trials, race {self.race:.1f} over {self.race_runs} runs)")

    def to_dict(self) -> dict[str, float]:
        return {"total": self.total, "tuning": self.tuning, "tuning_trials": self.tuning_trials,
                "race": self.race, "race_runs": self.race_runs}


def full_run_equivalents(study: optuna.Study, epochs: int) -> tuple[float, int]:
    """(full-run equivalents, trials) of a study's finished trials that count."""
    state = census(study)
    total, n = 0.0, 0
    for t in state.counted:
        rec = TrialRecord.of(t)
        if rec.status is None:  # still running or waiting: nothing spent that is recorded
            continue
        total += min(1.0, (rec.epochs or 0) / epochs)
        n += 1
    return total, n


def study_cost(config: StudyConfig, race_name: str | None = None) -> StudyCost:
    """The cost of a study and of its race (``race_name``: its study in the same storage)."""
    epochs = config.train.epochs
    tuning, trials = full_run_equivalents(load_study(config.storage, config.name), epochs)
    race, runs = 0.0, 0
    if race_name is not None:
        try:
            race, runs = full_run_equivalents(load_study(config.storage, race_name), epochs)
        except StudyNotFoundError:
            pass
    return StudyCost(tuning, trials, race, runs)
