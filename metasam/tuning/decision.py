"""The decision stage of a study: its finalists race over paired instances, and the verdict
states each difference with its confidence interval and its power.

After the search, the candidates are the top ``race.top_k`` trials at full budget, *every*
reference preset of the space at its default, and SGD and SAM at their defaults (added when the
space lacks them). They race (:mod:`metasam.tuning.racing`) over instances: instance i trains
with seed ``seed + 1 + i`` and validates on fold ``i mod k`` of the stratified k-fold split of
the training pool seeded ``seed + 1 + i div k`` (k = round(1/val_fraction): folds as large as
the study's validation split). Every candidate sees the same instances, so every comparison is
paired; the tuning run's own split and seed are not among them (its selection luck does not
count). The runs are a points-only study ``NAME.race`` in the study's own storage, run through
Ray Tune like any study (parallel within a round, resumable: a race replays its stored runs).

The verdict compares the winner with SGD, SAM at its default and the best preset (the preset
that lasted longest in the race, then by mean): the paired difference over their shared
instances, mean ± 95% CI in metric points, the probability of improvement (the share of
instances the winner won), the one-sided paired t-test, and the smallest difference the race
could have detected with 80% power at that level.

Example::

    config = StudyConfig.from_yaml("studies/digits-noisy.yaml")
    run_race(config)                           # after `metasam tune`; resumes if interrupted
    print("\\n".join(race_verdict(config).lines(config.objective)))
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import optuna
from optuna.trial import TrialState

from metasam.data.variants import fold_count
from metasam.family import presets
from metasam.stats import PairedDifference
from metasam.tuning.protocol import Label, Point, Role
from metasam.tuning.racing import Race, RaceEnd
from metasam.tuning.record import TrialRecord
from metasam.tuning.runner import ray_session, tune_study
from metasam.tuning.storage import StudyNotFoundError, best_trials, load_study
from metasam.tuning.study import StudyConfig
from metasam.tuning.study_file import RaceSettings

SUFFIX = "race"
REFERENCES = ("sgd", "sam")  # always race: the verdict compares the winner with both


class Pick(str, Enum):
    """Why a candidate races."""

    TOP = "top"            # one of the top-k full-budget trials of the search
    PRESET = "preset"      # a reference preset at its default


@dataclass(frozen=True)
class Candidate:
    """A member in the race: a trial of the study (``trial``), or a preset at its default the
    space lacks (``trial`` None)."""

    name: str
    pick: Pick
    spec: dict[str, Any]
    train: dict[str, Any] = field(default_factory=dict)
    trial: int | None = None

    @property
    def preset(self) -> str | None:
        """The preset it is at its default (``None`` for a searched member)."""
        return self.spec.get("name") if self.pick is Pick.PRESET else None

    @property
    def id(self) -> str:
        """Its identity in the race and in its runs' labels (written, never parsed)."""
        return f"t{self.trial}" if self.trial is not None else f"preset:{self.preset}"

    def run_label(self, instance: int) -> Label:
        return Label(Role.RACE, self.name, self.spec.get("name"), self.trial, instance)

    def owns(self, label: Label) -> bool:
        """Is ``label`` one of this candidate's runs?"""
        if self.trial is not None:
            return label.trial == self.trial
        return label.trial is None and label.preset == self.preset


def instance_train(config: StudyConfig, instance: int) -> dict[str, Any]:
    """The training overrides of instance ``instance``: its seed and its validation fold."""
    k = fold_count(config.train.val_fraction)
    return {"seed": config.seed + 1 + instance, "val_seed": config.seed + 1 + instance // k,
            "val_fold": instance % k}


def race_candidates(config: StudyConfig, study: optuna.Study | None = None) -> list[Candidate]:
    """The top-k full-budget trials (distinct specs), every reference preset of the space, and
    SGD and SAM at their defaults."""
    settings = config.race or RaceSettings()
    study = study or config.load_study()
    ranked = best_trials(study, config.mode, len(study.trials))
    out: list[Candidate] = []
    seen: set[str] = set()

    def add(candidate: Candidate) -> None:
        key = json.dumps([candidate.spec, candidate.train], sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(candidate)

    for t in ranked:
        rec = TrialRecord.of(t)
        if rec.label.is_reference() or rec.spec is None:
            continue
        if sum(c.pick is Pick.TOP for c in out) >= settings.top_k:
            break
        add(Candidate(rec.name, Pick.TOP, rec.spec, rec.train, t.number))
    references = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                  if TrialRecord.of(t).label.is_reference() and TrialRecord.of(t).counts]
    for t in sorted(references, key=lambda t: t.number):
        rec = TrialRecord.of(t)
        add(Candidate(rec.name, Pick.PRESET, rec.spec or {}, rec.train, t.number))
    for name in REFERENCES:
        if not any(c.preset == name for c in out):
            add(Candidate(name, Pick.PRESET, presets.get(name).to_dict()))
    return out


def race_config(config: StudyConfig, points: list[Point]) -> StudyConfig:
    return config.derived(SUFFIX, points, metric=config.metric, mode=config.mode,
                          train_changes={"test": "none"})


def _stored_runs(config: StudyConfig) -> list[optuna.trial.FrozenTrial]:
    try:
        return load_study(config.storage, f"{config.name}.{SUFFIX}").get_trials(deepcopy=False)
    except StudyNotFoundError:
        return []


def _owner(candidates: list[Candidate], label: Label) -> Candidate | None:
    """The candidate a stored run belongs to (``None``: a former candidate's, or not a race
    run)."""
    if label.instance is None:
        return None
    return next((c for c in candidates if c.owns(label)), None)


def _replay(race: Race, candidates: list[Candidate],
            runs: list[optuna.trial.FrozenTrial]) -> None:
    """Record the stored runs that finished (a failed or diverged run as the worst value)."""
    for t in runs:
        rec = TrialRecord.of(t)
        if not rec.counts or t.state not in (TrialState.COMPLETE, TrialState.FAIL):
            continue
        owner = _owner(candidates, rec.label)
        if owner is None:
            continue  # a run of a former candidate (the study grew): not in this race
        value = float(t.value) if t.state == TrialState.COMPLETE and t.value is not None \
            else math.nan
        race.record(owner.id, rec.label.instance, value)


def new_race(config: StudyConfig, candidates: list[Candidate]) -> Race:
    """The race among ``candidates``, SGD and SAM at their defaults its anchors (never dropped:
    the verdict compares the winner with them over every instance it ran)."""
    settings = config.race or RaceSettings()
    anchors = frozenset(c.id for c in candidates if c.preset in REFERENCES)
    return Race([c.id for c in candidates], mode=config.mode, first=settings.first,
                instances=settings.instances, budget=settings.budget, alpha=settings.alpha,
                anchors=anchors)


def run_race(config: StudyConfig, *, address: str | None = None, verbose: int = 1,
             say: Callable[[str], None] | None = None) -> bool:
    """Run (or resume) the race of a tuned study, round by round; ``True`` once it has ended
    (or when the study decides nothing: ``race: false``, no full-budget trial), ``False`` when
    it was interrupted (run again to resume). ``say`` gets the line naming the candidates
    (default: standard error)."""
    if config.race is None:
        return True
    study = config.load_study()
    if not best_trials(study, config.mode, 1):
        return True
    candidates = race_candidates(config, study)
    (say or _to_stderr)(f"study {config.name}: racing {len(candidates)} candidates over paired "
                        f"instances (budget {config.race.budget} runs): "
                        f"{', '.join(c.name for c in candidates)}")
    by_id = {c.id: c for c in candidates}
    asked: dict[str, Point] = {}

    def ask(owner: Candidate, instance: int) -> None:
        label = owner.run_label(instance)
        asked.setdefault(label.key, Point(label, owner.spec,
                                          {**owner.train, **instance_train(config, instance)}))

    for t in _stored_runs(config):  # what earlier rounds asked, finished or not
        rec = TrialRecord.of(t)
        owner = _owner(candidates, rec.label)
        if owner is not None and rec.counts:
            ask(owner, rec.label.instance)
    first = True
    told: set[str] = set()
    with ray_session(address, verbose):
        while True:
            race = new_race(config, candidates)
            _replay(race, candidates, _stored_runs(config))
            batch = race.next_round()
            new = [by_id[c].name for c in race.dropped if c not in told]
            if new and verbose:
                told |= set(race.dropped)
                print(f"study {config.name}: race after {race.tested} instances: dropped "
                      f"{', '.join(new)}; {len(race.alive)} left", file=sys.stderr, flush=True)
            if not batch:
                return True
            for cid, instance in batch:
                ask(by_id[cid], instance)
            result = tune_study(race_config(config, list(asked.values())), address=address,
                                verbose=verbose, check_data=False, announce=first)
            first = False
            if not result.done:
                return False


def _to_stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --- the verdict ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Standing:
    """A candidate's runs in the race, by instance, and when it dropped out (None: it
    survived)."""

    candidate: Candidate
    values: dict[int, float]
    dropped_after: int | None

    def mean(self, upto: int | None = None) -> float:
        """Its mean over its first ``upto`` instances (default: all of them)."""
        values = [self.values[i] for i in sorted(self.values)[:upto]]
        return sum(values) / len(values) if values else math.nan


@dataclass(frozen=True)
class Comparison:
    """The winner against one other candidate over their shared instances (in the metric's
    direction: positive means the winner is better)."""

    other: Standing
    difference: PairedDifference | None   # None: the other is the winner itself
    alpha: float

    @property
    def confident(self) -> bool:
        d = self.difference
        return d is not None and not math.isnan(d.p_greater) and d.p_greater < self.alpha

    def to_dict(self, scale: float) -> dict[str, Any]:
        d = self.difference
        base: dict[str, Any] = {"name": self.other.candidate.name}
        if d is None:
            return {**base, "is_winner": True}
        return {**base, "is_winner": False, "mean": d.mean * scale, "ci95": d.ci95 * scale,
                "instances": d.n, "p_improvement": d.p_improvement, "p_value": d.p_greater,
                "detectable_80": d.detectable * scale, "confident": self.confident}

    def text(self, scale: float, unit: str) -> str:
        d = self.difference
        name = self.other.candidate.name
        if d is None:
            return f"{name}: it is the winner itself"
        ci = "" if math.isnan(d.ci95) else f" ± {d.ci95 * scale:.2f}"
        p = "nan" if math.isnan(d.p_greater) else f"{d.p_greater:.3f}"
        mde = "n/a" if math.isnan(d.detectable) else f"{d.detectable * scale:.2f}{unit}"
        verdict = "beats it with confidence" if self.confident else "not with confidence"
        return (f"{name}: {d.mean * scale:+.2f}{ci}{unit} (95% CI, {d.n} shared instances), "
                f"P(improvement) {d.p_improvement:.2f}, p = {p}: {verdict}; detectable at 80% "
                f"power: {mde}")


@dataclass(frozen=True)
class Verdict:
    """The race's winner and how it stands against SGD, SAM at its default and the best
    preset."""

    winner: Standing
    standings: list[Standing]          # the survivors first (by mean), then by when they left
    against: dict[str, Comparison]     # "sgd", "sam", "best_preset"
    end: RaceEnd
    runs: int
    mode: str
    alpha: float

    @property
    def beats_sgd(self) -> bool:
        return "sgd" in self.against and self.against["sgd"].confident

    @property
    def beats_best_preset(self) -> bool:
        return "best_preset" in self.against and self.against["best_preset"].confident

    @staticmethod
    def scale_of(metric: str) -> tuple[float, str]:
        return (100.0, " points") if metric.endswith("acc") else (1.0, "")

    def to_dict(self, metric: str = "val_acc") -> dict[str, Any]:
        scale, _ = self.scale_of(metric)
        w = self.winner
        return {"winner": w.candidate.name, "trial": w.candidate.trial,
                "mean": w.mean(), "instances": len(w.values), "values": [
                    w.values[i] for i in sorted(w.values)],
                "race": {"end": self.end.value, "runs": self.runs, "alpha": self.alpha,
                         "standings": [{"name": s.candidate.name, "mean": s.mean(),
                                        "instances": len(s.values),
                                        "dropped_after": s.dropped_after}
                                       for s in self.standings]},
                "against": {k: c.to_dict(scale) for k, c in self.against.items()},
                "units": "metric points" if scale == 100.0 else "metric units",
                "beats_sgd": self.beats_sgd, "beats_best_preset": self.beats_best_preset}

    def lines(self, metric: str) -> list[str]:
        scale, unit = self.scale_of(metric)
        shown = "%" if scale == 100.0 else ""
        n = len(self.winner.values)
        opening = min(len(st.values) for st in self.standings)
        out = [f"race ({metric}{' ' + shown if shown else ''}; an instance = a training seed and "
               f"a validation fold; {len(self.standings)} candidates, {self.runs} runs; ended: "
               f"{self.end.value}):",
               f"  {'':<40} {'first ' + str(opening):>8}  {'all its instances':<24}"]
        for st in self.standings:
            mark = "  <- winner" if st is self.winner else ""
            left = (f"dropped after {st.dropped_after}" if st.dropped_after is not None
                    else f"{len(st.values)} instances")
            out.append(f"  {st.candidate.name:<40} {st.mean(opening) * scale:8.2f}  "
                       f"{st.mean() * scale:6.2f} ({left}){mark}")
        out.append(f"winner: {self.winner.candidate.name}, {metric} "
                   f"{self.winner.mean() * scale:.2f}{shown} over {n} instances")
        names = {"sgd": "against SGD", "sam": "against SAM at its default",
                 "best_preset": "against the best preset"}
        for key, comparison in self.against.items():
            out.append(f"verdict {names[key]} ({comparison.text(scale, unit)})")
        return out


def race_verdict(config: StudyConfig, study: optuna.Study | None = None) -> Verdict | None:
    """The verdict from the stored race (``None`` before any run finished, or with
    ``race: false``)."""
    if config.race is None:
        return None
    runs = _stored_runs(config)
    if not runs:
        return None
    candidates = race_candidates(config, study)
    race = new_race(config, candidates)
    _replay(race, candidates, runs)
    race.next_round()  # the last elimination test on what is stored
    if not any(race.scores[c.id] for c in candidates):
        return None
    return verdict_of(race, candidates, config.mode)


def verdict_of(race: Race, candidates: list[Candidate], mode: str) -> Verdict:
    """The verdict of a race among ``candidates`` (in the race's order)."""
    standings = [Standing(c, dict(race.scores[c.id]), race.dropped.get(c.id))
                 for c in candidates if race.scores[c.id]]
    by_id = {st.candidate.id: st for st in standings}
    winner = by_id[race.winner()] if race.winner() in by_id else standings[0]
    sign = 1.0 if mode == "max" else -1.0

    def key(st: Standing) -> tuple[float, float]:
        # survivors first, then by how long they lasted; within, by mean
        lasted = math.inf if st.dropped_after is None else st.dropped_after
        return (-lasted, -sign * st.mean())

    standings = sorted(standings, key=key)

    def compare(other: Standing | None) -> Comparison | None:
        if other is None:
            return None
        if other is winner:
            return Comparison(other, None, race.alpha)
        shared = sorted(set(winner.values) & set(other.values))
        a = [sign * winner.values[i] for i in shared]
        b = [sign * other.values[i] for i in shared]
        finite = [(x, y) for x, y in zip(a, b, strict=True)
                  if math.isfinite(x) and math.isfinite(y)]
        diff = PairedDifference.of([x for x, _ in finite], [y for _, y in finite],
                                   alpha=race.alpha)
        return Comparison(other, diff, race.alpha)

    presets_ = [st for st in standings if st.candidate.pick is Pick.PRESET]
    sgd = next((st for st in presets_ if st.candidate.preset == "sgd"), None)
    sam = next((st for st in presets_ if st.candidate.preset == "sam"), None)
    best_preset = next((st for st in presets_ if st.candidate.preset != "sgd"), None)
    against = {k: c for k, c in (("sgd", compare(sgd)), ("sam", compare(sam)),
                                 ("best_preset", compare(best_preset))) if c is not None}
    return Verdict(winner, standings, against, race.end(), race.runs, mode, race.alpha)
