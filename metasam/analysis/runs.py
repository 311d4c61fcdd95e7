"""The finished comparison runs of a study (``metasam compare`` writes them, see
:mod:`metasam.decision.compare`), read back for the report."""

from __future__ import annotations

from typing import Any

from metasam.tuning.record import TrialRecord
from metasam.tuning.storage import load_study
from metasam.tuning.study_config import StudyConfig


def collect(config: StudyConfig) -> dict[str, list[dict[str, Any]]]:
    """The finished comparison runs of a study, by method: one dict per seed with ``test_acc``,
    ``history``, ``passes_per_step``, ``grad_evals``, ``wall_time`` and ``label``."""

    from optuna.trial import TrialState

    study = load_study(config.storage, f"{config.name}.compare")
    out: dict[str, list[dict[str, Any]]] = {}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        rec = TrialRecord.of(trial)
        if not rec.full_budget or rec.interrupted:
            continue
        method, seed = rec.label.method, rec.label.instance
        history = rec.history
        last = history[-1] if history else {}
        grad_evals, wall_time = rec.result("grad_evals"), rec.result("wall_time")
        out.setdefault(method, []).append({
            "seed": seed or 0, "test_acc": trial.value, "history": history,
            "passes_per_step": rec.passes_per_step,
            "grad_evals": grad_evals if grad_evals is not None else last.get("grad_evals"),
            "wall_time": wall_time if wall_time is not None else last.get("wall_time"),
            "point": rec.point})
    for runs in out.values():
        runs.sort(key=lambda r: r["seed"])
    return out
