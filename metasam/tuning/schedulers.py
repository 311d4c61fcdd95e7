"""ASHA for studies with reference points: searched trials compete only with each other.

Reference points (presets at their defaults, grids, warm starts) are what the search is compared
against, so they always run the full budget. They also stay out of ASHA's rungs: if they were
in, a searched member would have to beat most of the presets at every rung to go on, and with
six presets in a rung of a dozen trials hardly any did (measured: 0 of 18 searched members
reached the full budget on a noisy-label task). Without them, a rung keeps the best
1/reduction_factor of the *searched* trials that reached it, and the share of searched trials
at full budget is about reduction_factor^−(number of rungs).

Default rungs (``grace_period: auto``): one rung at epochs/reduction_factor, so that a third of
the searched trials (with the default factor 3) reach the full budget and the stop decision is
taken after a third of training, when the ranking has mostly settled (rank correlations with
the full-budget ranking measured in docs/results.md).
"""

from __future__ import annotations

from typing import Any

from ray.tune.schedulers import ASHAScheduler, TrialScheduler


def auto_grace_period(epochs: int, reduction_factor: float) -> int:
    """⌈epochs/reduction_factor⌉: ASHA places rungs at g·rf^k below the full budget, so this
    leaves exactly one (at g)."""
    import math

    return max(1, min(epochs, math.ceil(epochs / reduction_factor - 1e-9)))


def _is_reference(trial: Any) -> bool:
    return trial.config.get("label", "search") != "search"


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
            self._trial_info.pop(trial.trial_id, None)
            return
        super().on_trial_complete(tune_controller, trial, result)
