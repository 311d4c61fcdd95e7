"""The best optimizer of a study as an exportable dict (``metasam best`` writes it as JSON;
:func:`metasam.load_optimizer` turns it into a ready optimizer)."""

from __future__ import annotations

import json
from typing import Any

from metasam.decision.stage import planned_cost, race_verdict
from metasam.errors import ConfigError
from metasam.optim.loading import FORMAT
from metasam.training.trainer import base_of
from metasam.tuning.cost_score import pareto_front, pick
from metasam.tuning.record import TrialRecord
from metasam.tuning.storage import best_trials, trial_spec, trial_train
from metasam.tuning.study_config import StudyConfig


def best_optimizer(config: StudyConfig, max_cost: float | None = None) -> dict[str, Any]:
    """The study's winner as an exportable dict: the spec, the base optimizer and its schedule,
    and where it came from.

    The winner is the race's (:mod:`metasam.decision.stage`) once its runs exist, ``value``
    its mean on the confirmation's fresh instances once they ran (else its race mean, which
    the selection biased upwards), with its verdict against SGD, SAM at its default and the
    best other preset under ``verdict`` (``verdict.meaning`` says what "with confidence"
    means: a family-wise error on instances that did not select the winner);
    before that (or with ``race: false``) the best single-seed trial at full budget, marked
    ``verdict: null``. ``cost`` is the study's cost in full-run equivalents. With ``max_cost``
    it is the best trial of the Pareto front of the metric against gradient evaluations that
    costs at most that many (:mod:`metasam.tuning.cost_score`), under ``front`` the whole front."""
    study = config.load_study()
    verdict = race_verdict(config, study) if max_cost is None else None
    front = None
    if max_cost is not None:
        front = pareto_front(study, config.metric, config.mode)
        chosen = pick(front, max_cost)
        trial = study.trials[chosen.number]
        spec, overrides, number = trial_spec(trial), trial_train(trial), trial.number
        name, value = TrialRecord.of(trial).name, chosen.value
    elif verdict is not None:
        winner = verdict.winner.candidate
        spec, overrides, number, name = winner.spec, winner.train, winner.trial, winner.name
        value: float | None = verdict.value
        trial = study.trials[number] if number is not None else None
    else:
        best = best_trials(study, config.mode, 1)
        if not best:
            raise ConfigError("study", f"{config.name!r} has no trial that finished its full "
                              "budget yet", "a study with a full-budget trial (run `metasam "
                              "tune` first)", str(config.path))
        trial = best[0]
        spec, overrides, number = trial_spec(trial), trial_train(trial), trial.number
        name, value = TrialRecord.of(trial).name, trial.value
    rec = TrialRecord.of(trial) if trial is not None else None
    learned = None
    if "learn" in overrides:    # a bias learned within the run: its member at the end
        start, overrides = spec, {k: v for k, v in overrides.items() if k != "learn"}
        final = rec.result("learned_spec") if rec is not None else None
        learned = {"from": start, "settings": dict(trial_train(trial)).get("learn")
                   if trial is not None else None, "trial": number}
        if final is not None:
            spec = json.loads(final) if isinstance(final, str) else final
    train = config.train.replace(**overrides)
    return {
        "format": FORMAT,
        "name": name,
        "spec": spec,
        "base_optimizer": base_of(train),
        "schedule": {"name": train.schedule, "epochs": train.epochs,
                     "milestones": train.resolved_milestones(), "gamma": train.gamma},
        "batch_size": train.batch_size,
        "study": config.name, "trial": number, "label": rec.name if rec else name,
        "metric": config.metric, "mode": config.mode, "value": value,
        "epochs": rec.epochs if rec and rec.epochs is not None else train.epochs,
        "passes_per_step": rec.passes_per_step if rec else None,
        "dataset": train.dataset, "model": train.model,
        "placement": rec.placement.to_dict() if rec and rec.placement else None,
        "verdict": verdict.to_dict(config.metric) if verdict is not None else None,
        **({"learned": learned} if learned is not None else {}),
        "cost": planned_cost(config).to_dict(),
        **({"max_cost": max_cost, "grad_evals": rec.result("grad_evals") if rec else None,
            "front": [vars(p) for p in front]} if front is not None else {}),
    }
