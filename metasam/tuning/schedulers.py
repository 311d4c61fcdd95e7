"""ASHA that never stops the study's reference points (presets, grids, warm starts).

Reference points are what the search is compared against, so they always get the full budget;
their results still enter ASHA's rungs and inform the decisions about searched trials.
"""

from __future__ import annotations

from typing import Any

from ray.tune.schedulers import ASHAScheduler, TrialScheduler


class ReferencePointsASHA(ASHAScheduler):
    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        if trial.config.get("label", "search") != "search":
            return TrialScheduler.CONTINUE
        return decision
