"""ASHA for studies with reference points: searched trials compete only with each other.

Reference points (presets at their defaults, grids, warm starts) are what the search is compared
against, so they always run the full budget. They also stay out of ASHA's rungs: if they were
in, a searched member would have to beat most of the presets at every rung to go on, and with
six presets in a rung of a dozen trials hardly any did (measured: 0 of 18 searched members
reached the full budget on a noisy-label task). Without them, a rung keeps the best
1/reduction_factor of the *searched* trials that reached it, and the share of searched trials
at full budget is about reduction_factor^−(number of rungs).

Default rungs (``grace_period: auto``): one rung at three quarters of the budget. Measured on
the search benchmark (docs/results.md): with label noise and a cosine schedule, the ranking
after a third of the budget is unrelated or even *opposite* to the final one (Spearman −0.8 to
+0.5: members that fit fast early fit the noise later), and becomes predictive only in the
last quarter (0.7–0.9). A rung there saves less (a stopped trial still ran 75%), but it does
not throw away the members that win at the end.
"""

from __future__ import annotations

import math
from typing import Any

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from metasam.tuning import compat
from metasam.tuning.trials import Label

AUTO_RUNG_FRACTION = 0.75


def auto_grace_period(epochs: int, reduction_factor: float) -> int:
    """⌈0.75·epochs⌉: one rung at three quarters of the budget (the next, at rf times that, is
    past the budget for any reduction factor above 4/3)."""
    return max(1, min(epochs, math.ceil(AUTO_RUNG_FRACTION * epochs - 1e-9)))


def _is_reference(trial: Any) -> bool:
    label = trial.config.get("label")
    return label is not None and Label.from_dict(label).is_point


class ReferencePointsASHA(ASHAScheduler):
    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if _is_reference(trial):
            return TrialScheduler.CONTINUE  # never stopped, never recorded in a rung
        return super().on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        # ASHA records a completed trial's *final* value in every rung it has not been
        # recorded in; for a reference point that would put full-budget values into the
        # early rungs, against which searched trials are judged at a fraction of the budget.
        if _is_reference(trial):
            compat.asha_forget(self, trial.trial_id)
            return
        super().on_trial_complete(tune_controller, trial, result)
