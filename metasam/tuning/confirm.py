"""The confirmation stage: a study's winner is the best *mean* over fresh seeds, not a lucky run.

When a study's trials are done, its finalists are trained again on ``confirm.seeds`` new seeds
(the same data, the same validation split; the tuning run's seed is left out, so its selection
luck does not count): the top ``confirm.top_k`` trials at full budget, the best preset (the
reference point with the best tuning value) and SGD. The runs are a points-only study
``NAME.confirm`` in the study's own storage, run through Ray Tune like any study (parallel,
resumable: a crash loses no finished run). The winner is the finalist with the best mean; the
verdict says, with its mean ± 95% confidence interval, whether it beats SGD and the best preset
with confidence (one-sided Welch's t-test, p < 0.05 — with three seeds only clear differences
pass).

Example::

    config = StudyConfig.from_yaml("studies/digits-noisy.yaml")
    run_confirmation(config)                    # after `metasam tune`; resumes if interrupted
    verdict = confirmed_verdict(config)
    print("\\n".join(verdict.lines(config.objective)))
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from metasam.family import presets
from metasam.stats import Summary, welch_greater
from metasam.tuning.protocol import Label, Point, Role
from metasam.tuning.record import TrialRecord
from metasam.tuning.runner import tune_study
from metasam.tuning.storage import (
    StudyNotFoundError,
    best_trials,
    census,
    load_study,
    trial_spec,
    trial_train,
)
from metasam.tuning.study import StudyConfig

ALPHA = 0.05
SUFFIX = "confirm"


class Pick(str, Enum):
    """Why a finalist is in the confirmation."""

    TOP = "top"          # one of the top-k full-budget trials
    PRESET = "preset"    # the best reference preset
    SGD = "sgd"          # the SGD reference


@dataclass(frozen=True)
class Finalist:
    """A trial of the study chosen for confirmation (``trial`` −1: SGD added from outside)."""

    trial: int
    name: str
    pick: Pick
    tuning_value: float | None
    spec: dict[str, Any]
    train: dict[str, Any] = field(default_factory=dict)

    @property
    def is_sgd(self) -> bool:
        return self.pick is Pick.SGD or self.spec.get("name") == "sgd"

    def run_label(self, instance: int) -> Label:
        """The label of its confirmation run on ``instance``."""
        return Label(Role.CONFIRM, self.name, self.spec.get("name"), self.trial, instance)


def _is_preset_point(trial: FrozenTrial) -> bool:
    return TrialRecord.of(trial).label.is_reference()


def finalists(config: StudyConfig, study: optuna.Study | None = None) -> list[Finalist]:
    """The study's finalists: the top-k full-budget trials, the best preset and SGD."""
    study = study or config.load_study()
    ranked = best_trials(study, config.mode, len(study.trials))
    chosen: list[tuple[FrozenTrial, Pick]] = [(t, Pick.TOP)
                                              for t in ranked[:config.confirm["top_k"]]]
    preset = next((t for t in ranked if _is_preset_point(t)
                   and not TrialRecord.of(t).label.is_reference("sgd")), None)
    sgd = next((t for t in ranked if TrialRecord.of(t).label.is_reference("sgd")), None)
    for trial, pick in ((preset, Pick.PRESET), (sgd, Pick.SGD)):
        if trial is not None and all(trial.number != t.number for t, _ in chosen):
            chosen.append((trial, pick))
    out = [Finalist(t.number, TrialRecord.of(t).name, pick, t.value,
                    trial_spec(t) or {}, trial_train(t)) for t, pick in chosen]
    if sgd is None:  # a space without the SGD preset: confirm against it anyway
        out.append(Finalist(-1, "sgd", Pick.SGD, None, presets.sgd().to_dict()))
    return out


def confirmation_config(config: StudyConfig, chosen: list[Finalist]) -> StudyConfig:
    """The points-only study of the confirmation runs: every finalist × every fresh seed."""
    points = []
    for s in range(config.confirm["seeds"]):
        for f in chosen:
            points.append(Point(f.run_label(s + 1), f.spec,
                                {**f.train, "seed": config.seed + 1 + s}))
    return config.derived(SUFFIX, points, metric=config.metric, mode=config.mode,
                          train_changes={"test": "none"})


def run_confirmation(config: StudyConfig, *, address: str | None = None,
                     verbose: int = 1) -> StudyConfig | None:
    """Run (or resume) the confirmation runs of a finished study; ``None`` when the study
    confirms nothing (``confirm: false``) or has no full-budget trial."""
    if config.confirm["top_k"] == 0 or config.confirm["seeds"] == 0:
        return None
    chosen = finalists(config)
    if not [f for f in chosen if f.pick is not Pick.SGD]:
        return None
    confirmation = confirmation_config(config, chosen)
    # A study that grew (--trials) may have new finalists: the runs of former ones stay in the
    # storage and count towards the target, so the target grows by their number.
    try:
        runs = census(load_study(config.storage, confirmation.name)).counted
    except StudyNotFoundError:
        runs = []  # no confirmation runs yet
    wanted = {p.label for p in confirmation.space.points}
    confirmation.trials += sum(TrialRecord.of(t).label not in wanted for t in runs)
    tune_study(confirmation, address=address, verbose=verbose, check_data=False)
    return confirmation


@dataclass
class Standing:
    """A finalist's confirmation runs."""

    finalist: Finalist
    values: list[float]

    @property
    def summary(self) -> Summary:
        return Summary.of(self.values)

    def text(self, scale: float) -> str:
        s = self.summary
        ci = s.ci_halfwidth()
        ci_text = "" if math.isnan(ci) else f" ± {ci * scale:.2f}"
        return f"{s.mean * scale:.2f}{ci_text} (95% CI, {s.n} seeds)"


@dataclass
class Verdict:
    """The confirmed winner and how it stands against SGD and the best preset."""

    winner: Standing
    standings: list[Standing]  # best mean first
    sgd: Standing | None
    best_preset: Standing | None
    p_vs_sgd: float
    p_vs_preset: float
    mode: str

    @property
    def beats_sgd(self) -> bool:
        return self.p_vs_sgd < ALPHA

    @property
    def beats_best_preset(self) -> bool:
        return self.p_vs_preset < ALPHA

    def to_dict(self) -> dict[str, Any]:
        s = self.winner.summary
        return {"winner": self.winner.finalist.name, "trial": self.winner.finalist.trial,
                "mean": s.mean, "ci95": s.ci_halfwidth(), "seeds": s.n,
                "values": self.winner.values,
                "best_preset": self.best_preset.finalist.name if self.best_preset else None,
                "p_vs_sgd": self.p_vs_sgd, "p_vs_best_preset": self.p_vs_preset,
                "beats_sgd": self.beats_sgd, "beats_best_preset": self.beats_best_preset,
                "standings": {st.finalist.name: st.values for st in self.standings}}

    def lines(self, metric: str) -> list[str]:
        """The verdict for people: the finalists, the winner, and one line on confidence."""
        scale = 100.0 if metric.endswith("acc") else 1.0
        unit = " %" if scale == 100.0 else ""
        out = [f"confirmation ({metric}{unit}, mean ± 95% CI over fresh seeds):"]
        for st in self.standings:
            mark = "  <- winner" if st is self.winner else ""
            out.append(f"  {st.finalist.name:<40} {st.text(scale)}{mark}")
        out.append(f"winner: {self.winner.finalist.name}, {metric} {self.winner.text(scale)}")
        out.append(self.confidence_line())
        return out

    def confidence_line(self) -> str:
        def against(other: Standing | None, p: float, beats: bool) -> str:
            if other is None:
                return "no run to compare with"
            if other is self.winner:
                return "it is the winner itself"
            p_text = "p = nan" if math.isnan(p) else f"p = {p:.3f}"
            return ("beats it with confidence" if beats else
                    "not with confidence") + f" ({p_text})"

        sgd = against(self.sgd, self.p_vs_sgd, self.beats_sgd)
        preset_name = self.best_preset.finalist.name if self.best_preset else "—"
        preset = against(self.best_preset, self.p_vs_preset, self.beats_best_preset)
        return (f"verdict: against SGD: {sgd}; against the best preset ({preset_name}): "
                f"{preset} [one-sided Welch, alpha {ALPHA}]")


def confirmed_verdict(config: StudyConfig, study: optuna.Study | None = None
                      ) -> Verdict | None:
    """The verdict from the finished confirmation runs (``None`` before any finished);
    ``study`` is the study itself when the caller has it loaded already."""
    try:
        confirmation = load_study(config.storage, f"{config.name}.{SUFFIX}")
    except StudyNotFoundError:
        return None
    chosen = {f.trial: f for f in finalists(config, study)}
    values: dict[int, list[float]] = {key: [] for key in chosen}
    for trial in confirmation.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        rec = TrialRecord.of(trial)
        key = rec.label.trial
        if key in values and rec.full_budget and trial.value is not None:
            values[key].append(float(trial.value))
    return verdict_of([Standing(chosen[k], v) for k, v in values.items() if v], config.mode)


def verdict_of(standings: list[Standing], mode: str) -> Verdict | None:
    """The winner (best mean) among ``standings`` and its tests against SGD and the best
    preset (the preset finalist with the best mean)."""
    if not standings:
        return None
    sign = 1.0 if mode == "max" else -1.0
    standings = sorted(standings, key=lambda st: (-sign * st.summary.mean, st.finalist.trial))
    winner = standings[0]  # SGD included: if nothing beats it, SGD is the honest winner
    sgd = next((st for st in standings if st.finalist.is_sgd), None)
    preset = next((st for st in standings if st.finalist.name in presets.NAMES
                   and st.finalist.name != "sgd"), None)

    def p_above(other: Standing | None) -> float:
        if other is None or other is winner:
            return math.nan
        return welch_greater([sign * v for v in winner.values], [sign * v for v in other.values])

    return Verdict(winner, standings, sgd, preset, p_above(sgd), p_above(preset), mode)
