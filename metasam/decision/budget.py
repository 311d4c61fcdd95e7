"""What a study cost, in full-run equivalents: one unit is one training run of the study's full
budget (all epochs). A tuning trial counts the epochs it reached over the budget (an ASHA-stopped
trial at 8 of 10 epochs is 0.8, a diverged one what it ran); a race or confirmation run counts
its epochs the same way (one that finished is one full run)."""

from __future__ import annotations

from dataclasses import dataclass

import optuna

from metasam.tuning.record import TrialRecord
from metasam.tuning.storage import StudyNotFoundError, census, load_study
from metasam.tuning.study_config import StudyConfig
from metasam.tuning.trials import CONFIRM_SUFFIX, RACE_SUFFIX


@dataclass(frozen=True)
class StudyCost:
    tuning: float        # full-run equivalents of the search's trials
    tuning_trials: int
    race: float          # full-run equivalents of the race's runs
    race_runs: int
    confirmation: float = 0.0    # ... of the confirmation's runs
    confirmation_runs: int = 0
    planned: tuple[int, int, int] | None = None   # the plan's (tuning, race, confirmation)

    @property
    def total(self) -> float:
        return self.tuning + self.race + self.confirmation

    def line(self) -> str:
        plan = ""
        if self.planned is not None:
            t, r, c = self.planned
            plan = (f" of {t + r + c} planned (tuning {t}, race {r}, confirmation at most {c};"
                    " a sequential confirmation stops when it is won or hopeless)")
        return (f"cost: {self.total:.1f} full-run equivalents{plan} (tuning {self.tuning:.1f} "
                f"over {self.tuning_trials} trials, race {self.race:.1f} over {self.race_runs} "
                f"runs, confirmation {self.confirmation:.1f} over {self.confirmation_runs} runs)")

    def to_dict(self) -> dict[str, float]:
        return {"total": self.total, "tuning": self.tuning, "tuning_trials": self.tuning_trials,
                "race": self.race, "race_runs": self.race_runs,
                "confirmation": self.confirmation, "confirmation_runs": self.confirmation_runs,
                "planned": list(self.planned) if self.planned is not None else None}


def full_run_equivalents(study: optuna.Study, epochs: int) -> tuple[float, int]:
    """(full-run equivalents, trials) of a study's finished trials that count."""
    state = census(study)
    total, n = 0.0, 0
    for t in state.counted:
        rec = TrialRecord.of(t)
        if rec.status is None:  # still running or waiting: nothing spent that is recorded
            continue
        share = min(1.0, (rec.epochs or 0) / epochs)
        extra, evals = rec.result("learn_grad_evals"), rec.result("grad_evals")
        if extra and evals:   # a learned bias's validation passes, in its own passes' units
            share *= 1.0 + float(extra) / float(evals)
        total += share
        n += 1
    return total, n


def study_cost(config: StudyConfig, planned: tuple[int, int, int] | None = None) -> StudyCost:
    """The cost of a study, its race (``NAME.race``) and its confirmation (``NAME.verdict``);
    ``planned``: its plan's (tuning, race, confirmation), shown beside what was spent
    (:func:`metasam.decision.stage.planned_cost` passes it)."""
    epochs = config.train.epochs
    tuning, trials = full_run_equivalents(load_study(config.storage, config.name), epochs)
    parts = []
    for suffix in (RACE_SUFFIX, CONFIRM_SUFFIX):
        try:
            parts.append(full_run_equivalents(load_study(config.storage,
                                                         f"{config.name}.{suffix}"), epochs))
        except StudyNotFoundError:
            parts.append((0.0, 0))
    (race, runs), (confirmation, confirmation_runs) = parts
    return StudyCost(tuning, trials, race, runs, confirmation, confirmation_runs, planned)
