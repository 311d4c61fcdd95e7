"""The decision stage of a study: its finalists race over paired instances (selection), then
the winner is confirmed on fresh instances (the verdict), its comparisons corrected together.

After the search, the candidates are the top ``race.top_k`` trials at full budget, *every*
reference preset of the space at its default, and SGD and SAM at their defaults (added when the
space lacks them). A share ``race.holdout`` of the training pool is held back (stratified,
seeded by the study's seed): the tuning trials validate on a split of the rest, and so does the
race. Race instance i trains with seed ``seed + 1 + i`` and validates on fold ``i mod k`` of
the stratified k-fold split of the rest seeded ``seed + 1 + i div k`` (k =
round((1 − holdout)/val_fraction): folds as large as the tuning split). Every candidate sees the
same instances, so every comparison is paired; SGD and SAM run every instance but take no part
in the eliminations (:mod:`metasam.decision.racing`). The runs are a points-only study
``NAME.race`` in the study's own storage, run through Ray Tune like any study (parallel within
a round, resumable: a race replays its stored runs).

Then the confirmation (:mod:`metasam.decision.confirmation`): the race's winner, SGD, SAM at its
default and the best other preset (the one that lasted longest in the race, then by mean) run
on J fresh instances — seeds no earlier run used, validation on fold j of a J-fold split of the
held-back share, training on the pool without that fold — J sized from the race's spread to
reach ``race.detect`` at ``race.power`` within ``race.confirm_budget`` runs, fixed before the
first confirmation run. They are the points-only study ``NAME.verdict``. The verdict states
each difference with its 95% interval by the corrected resampled t-test, its one-sided p-value
and the Holm-adjusted p-value over the family; "with confidence" means the chance that *any* of
the verdict's claims is wrong is at most ``race.alpha``.

Example::

    config = StudyConfig.from_yaml("studies/digits-noisy.yaml")
    run_race(config)                           # after `metasam tune`; resumes if interrupted
    run_confirmation(config)
    print("\\n".join(race_verdict(config).lines(config.objective)))
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

from metasam.data.variants import fold_count
from metasam.decision.budget import StudyCost, study_cost
from metasam.decision.candidate import Candidate, Pick
from metasam.decision.confirmation import (
    Plan,
    Sizes,
    comparisons_of,
    confirm,
    confirm_sequential,
    plan_confirmation,
    quick_comparison,
    race_spread,
    sequential_states,
)
from metasam.decision.outcome import Comparison, Standing, Verdict
from metasam.decision.plan import StudyPlan, check_confirm_budget, quick_plan, thorough_plan
from metasam.decision.prior import shrunk_pick
from metasam.decision.racing import Race, RaceEnd
from metasam.decision.sequential import looks_of, next_look
from metasam.errors import ConfigError
from metasam.family import presets
from metasam.tuning import record
from metasam.tuning.record import TrialRecord
from metasam.tuning.runner import ray_session, tune_study
from metasam.tuning.storage import StudyNotFoundError, best_trials, load_study
from metasam.tuning.study_config import StudyConfig
from metasam.tuning.study_file import RaceSettings
from metasam.tuning.trials import CONFIRM_SUFFIX, RACE_SUFFIX, Label, Point, Role

SUFFIX = RACE_SUFFIX
REFERENCES = ("sgd", "sam")  # always race: the verdict compares the winner with both
_CONFIRM_FOLD_SEED = 7919    # offset of the seed of the held-back share's J-fold split


def race_folds(config: StudyConfig) -> int:
    """The k of the race's k-fold splits of the pool's rest: folds about as large as the
    tuning trials' validation split."""
    return fold_count(config.train.val_fraction, config.train.holdout)


def instance_train(config: StudyConfig, instance: int) -> dict[str, Any]:
    """The training overrides of race instance ``instance``: its seed and its validation fold
    (of the pool's rest)."""
    k = race_folds(config)
    return {"seed": config.seed + 1 + instance, "val_seed": config.seed + 1 + instance // k,
            "val_fold": instance % k, "val_folds": k}


def confirm_train(config: StudyConfig, plan: Plan, instance: int) -> dict[str, Any]:
    """The training overrides of confirmation instance ``instance`` of ``plan``: a seed no
    tuning trial or race run used, and fold ``instance`` of the held-back share's
    ``plan.instances``-fold split."""
    settings = config.race or RaceSettings()
    return {"seed": config.seed + 1 + settings.instances + instance,
            "val_seed": config.seed + _CONFIRM_FOLD_SEED, "val_fold": instance,
            "val_folds": plan.instances, "val_scope": "holdout"}


def race_candidates(config: StudyConfig, study: optuna.Study | None = None) -> list[Candidate]:
    """The top-k full-budget trials (distinct specs), every reference preset of the space, and
    SGD and SAM at their defaults."""
    if config.quick:
        return quick_candidates(config)[0]
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
    if config.population is not None:  # a population runs no presets: they race at defaults
        for point in config.space.points:
            if point.label.is_reference():
                add(Candidate(point.label.method, Pick.PRESET, point.spec, point.train))
    for name in REFERENCES:
        if not any(c.preset == name for c in out):
            add(Candidate(name, Pick.PRESET, presets.get(name).to_dict()))
    return out


# --- a quick study: candidates named in advance, a plan fixed before any run -----------------

def quick_candidates(config: StudyConfig) -> tuple[list[Candidate], list[float], list[float]]:
    """A quick study's candidates — the shipped portfolio in its order, then the points its
    search space lists (not its presets) — with each one's prior mean difference to the first
    and the prior's spread (accuracy units; a point the portfolio does not know, or a metric
    that is not an accuracy: no prior, ``math.inf``)."""
    from metasam.decision.portfolio import shipped_portfolio

    portfolio = shipped_portfolio()
    accuracy = config.metric.endswith("acc")
    out: list[Candidate] = []
    means: list[float] = []
    taus: list[float] = []
    seen: set[str] = set()
    extra = [(p, 0.0, math.inf) for p in config.space.points if not p.label.is_reference()]
    for point, gain, tau in [*((p, g, portfolio.tau if accuracy else math.inf)
                               for p, g in zip(portfolio.points, portfolio.gains,
                                               strict=True)), *extra]:
        key = json.dumps([point.spec, point.train], sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        pick = Pick.PRESET if point.label.is_reference() else Pick.POINT
        out.append(Candidate(point.label.method, pick, point.spec, point.train))
        means.append(gain if accuracy else 0.0)
        taus.append(tau)
    return out, means, taus


def portfolio_prior() -> dict[str, Any]:
    """The shipped portfolio's prior, as a quick study records it when it starts."""
    from metasam.decision.portfolio import shipped_portfolio

    portfolio = shipped_portfolio()
    return {"gains": {p.label.method: g for p, g in zip(portfolio.points, portfolio.gains,
                                                         strict=True)},
            "tau": portfolio.tau, "source": "metasam/decision/data/portfolio.yaml "
            f"({', '.join(portfolio.built_from)})"}


def quick_prior(config: StudyConfig, study: optuna.Study | None = None
                ) -> tuple[list[float], list[float]]:
    """The prior of a quick study's pick (each candidate's mean difference to the first and
    its spread, accuracy units): the one recorded in its storage when it started
    (:func:`portfolio_prior`), else the portfolio file's; none with ``meta: none`` or a metric
    that is not an accuracy (``math.inf``: the race alone)."""
    candidates, means, taus = quick_candidates(config)
    if config.cold or not config.metric.endswith("acc"):
        return [0.0] * len(candidates), [math.inf] * len(candidates)
    study = study if study is not None else config.load_study()
    stored = study.user_attrs.get(record.PRIOR)
    if stored is None:
        return means, taus
    prior = json.loads(stored)
    gains, tau = prior["gains"], float(prior["tau"])
    return ([float(gains.get(c.name, 0.0)) for c in candidates],
            [tau if c.name in gains else math.inf for c in candidates])


def study_plan(config: StudyConfig) -> StudyPlan:
    """The study's plan (:mod:`metasam.decision.plan`), from its file and its data sizes: a
    function of both only, so a resumed study plans the same. A budget the stages cannot fit,
    or a confirmation budget below its first look: one line naming the study file's field."""
    try:
        return _study_plan(config)
    except ConfigError as err:
        raise ConfigError(err.field, err.problem, err.allowed, err.source or str(config.path)
                          ) from None


def _study_plan(config: StudyConfig) -> StudyPlan:
    settings = config.race or RaceSettings()
    if config.race is not None:
        check_confirm_budget(settings.confirm_budget, 2)
    sizes = data_sizes(config) if config.race is not None else Sizes(0, 0, 0)
    if not config.quick:
        return thorough_plan(config.trials, settings.budget if config.race else 0,
                             settings.confirm_budget if config.race else 0, sizes,
                             budget=config.budget, detect=settings.detect,
                             alpha=settings.alpha, power=settings.power)
    return quick_plan(config.budget or 10.0, len(quick_candidates(config)[0]), sizes,
                      detect=settings.detect, alpha=settings.alpha, power=settings.power,
                      confirm_cap=settings.confirm_budget)


def race_settings(config: StudyConfig) -> RaceSettings:
    """The race's settings: the study file's, or for a quick study its plan's (a halving race
    of the plan's runs, two opening instances; the confirmation's runs at most)."""
    settings = config.race or RaceSettings()
    if not config.quick:
        return settings
    plan = study_plan(config)
    return dataclasses.replace(settings, budget=max(2, plan.race), first=2, rule="halving",
                               confirm_budget=plan.confirmation)


def _spending(config: StudyConfig) -> Callable[[], str] | None:
    """The progress line's note of a study with a plan: what it spent of what it planned."""
    if not (config.quick or config.budget is not None):
        return None

    def note() -> str:
        cost = planned_cost(config)
        return (f"{cost.total:.1f} of {sum(cost.planned or ())} planned full-run equivalents "
                "spent")
    return note


def planned_cost(config: StudyConfig) -> StudyCost:
    """What the study spent, with its plan's stages beside it when it has a plan (a quick
    study, or one with a ``budget``)."""
    planned = None
    if config.quick or config.budget is not None:
        plan = study_plan(config)
        planned = (plan.tuning, plan.race, plan.confirmation)
    return study_cost(config, planned)


def _derived(config: StudyConfig, suffix: str, points: list[Point]) -> StudyConfig:
    return config.derived(suffix, points, metric=config.metric, mode=config.mode,
                          train_changes={"test": "none"})


def race_config(config: StudyConfig, points: list[Point]) -> StudyConfig:
    return _derived(config, SUFFIX, points)


def _stored_runs(config: StudyConfig, suffix: str = SUFFIX) -> list[optuna.trial.FrozenTrial]:
    try:
        return load_study(config.storage, f"{config.name}.{suffix}").get_trials(deepcopy=False)
    except StudyNotFoundError:
        return []


def _owner(candidates: list[Candidate], label: Label) -> Candidate | None:
    """The candidate a stored run belongs to (``None``: a former candidate's, or not a race
    run)."""
    if label.instance is None:
        return None
    return next((c for c in candidates if c.owns(label)), None)


def _finished(candidates: list[Candidate], runs: list[optuna.trial.FrozenTrial]
              ) -> list[tuple[Candidate, int, float]]:
    """(candidate, instance, value) of the stored runs that finished (a failed or diverged run
    as nan)."""
    out = []
    for t in runs:
        rec = TrialRecord.of(t)
        if not rec.counts or t.state not in (TrialState.COMPLETE, TrialState.FAIL):
            continue
        owner = _owner(candidates, rec.label)
        if owner is None:
            continue  # a run of a former candidate (the study grew): not in this race
        value = float(t.value) if t.state == TrialState.COMPLETE and t.value is not None \
            else math.nan
        out.append((owner, rec.label.instance, value))
    return out


def new_race(config: StudyConfig, candidates: list[Candidate]) -> Race:
    """The race among ``candidates`` by the study's ``race.rule``: under ``halving`` (and
    ``ttts``) every candidate contends, SGD and SAM at their defaults included (SGD's spread
    for the confirmation's sizing comes from the opening instances every candidate runs);
    under ``frace`` SGD and SAM are anchors (they run every instance and are never tested or
    dropped)."""
    settings = race_settings(config)
    anchors = frozenset(c.id for c in candidates if c.preset in REFERENCES) \
        if settings.rule == "frace" else frozenset()
    return Race([c.id for c in candidates], mode=config.mode, first=settings.first,
                instances=settings.instances, budget=settings.budget, alpha=settings.alpha,
                anchors=anchors, rule=settings.rule)


def _replay(race: Race, candidates: list[Candidate],
            runs: list[optuna.trial.FrozenTrial]) -> None:
    """Record the stored runs that finished (a failed or diverged run as the worst value)."""
    for owner, instance, value in _finished(candidates, runs):
        race.record(owner.id, instance, value)


def _replayed(config: StudyConfig, candidates: list[Candidate],
              runs: list[optuna.trial.FrozenTrial] | None = None) -> Race:
    """The race with the stored runs (``runs``, read from the storage if not given) recorded;
    its ``next_round`` runs every elimination test they allow."""
    race = new_race(config, candidates)
    _replay(race, candidates, _stored_runs(config) if runs is None else runs)
    return race


def run_race(config: StudyConfig, *, address: str | None = None, verbose: int = 1,
             say: Callable[[str], None] | None = None) -> bool:
    """Run (or resume) the race of a tuned study, round by round; ``True`` once it has ended
    (or when the study decides nothing: ``race: false``, no full-budget trial), ``False`` when
    it was interrupted (run again to resume). ``say`` gets the line naming the candidates
    (default: standard error)."""
    study = _deciding(config)
    if study is None:
        return True
    candidates = race_candidates(config, study)
    runs: list[optuna.trial.FrozenTrial] | None = _stored_runs(config)   # read once to start
    if not _replayed(config, candidates, runs).next_round():
        return True  # ended before: nothing to run, no Ray to start
    (say or _to_stderr)(f"study {config.name}: racing {len(candidates)} candidates over paired "
                        f"instances (budget {race_settings(config).budget} runs): "
                        f"{', '.join(c.name for c in candidates)}")
    by_id = {c.id: c for c in candidates}
    asked: dict[str, Point] = {}

    def ask(owner: Candidate, instance: int) -> None:
        label = owner.run_label(instance)
        asked.setdefault(label.key, Point(label, owner.spec,
                                          {**owner.train, **instance_train(config, instance)}))

    for t in runs or []:  # what earlier rounds asked, finished or not
        rec = TrialRecord.of(t)
        owner = _owner(candidates, rec.label)
        if owner is not None and rec.counts:
            ask(owner, rec.label.instance)
    first = True
    told: set[str] = set()
    with ray_session(address, verbose):
        while True:
            race = _replayed(config, candidates, runs)   # after a round: read again
            runs = None
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
                                verbose=verbose, check_data=False, announce=first,
                                note=_spending(config))
            first = False
            if not result.done:
                return False


def _deciding(config: StudyConfig) -> optuna.Study | None:
    """The tuned study, if it decides anything (a race and a full-budget trial)."""
    if config.race is None:
        return None
    study = config.load_study()
    if config.quick:   # its candidates are named in advance: no trial needed
        return study
    return study if best_trials(study, config.mode, 1) else None


def _to_stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --- the confirmation ---------------------------------------------------------------------

@dataclass(frozen=True)
class Selection:
    """What the race chose, what the verdict compares it with, and the confirmation's plan
    (``None`` until the race has ended)."""

    candidates: list[Candidate]
    race: Race
    winner: Candidate | None
    compared: dict[str, Candidate]     # "sgd", "sam", "best_preset" -> candidate
    plan: Plan | None


def data_sizes(config: StudyConfig) -> Sizes:
    """The pool, its held-back share and a race fold, in examples (from the data, read once
    per process and training setup)."""
    from metasam.training.trainer import splits_of

    train = config.train.replace(**instance_train(config, 0))
    key = repr(train)   # the training setup, field by field
    if key not in _SIZES:
        info = splits_of(train).description
        _SIZES[key] = Sizes(int(info.get("pool", 0)), int(info.get("holdout", 0)),
                            int(info.get("val", 0)))
    return _SIZES[key]


_SIZES: dict[str, Sizes] = {}   # per process and training setup


def selection(config: StudyConfig, study: optuna.Study | None = None,
              runs: list[optuna.trial.FrozenTrial] | None = None) -> Selection:
    """The race replayed from its stored runs (``runs``: already read) and, once it has
    ended, the confirmation's plan (a function of the race's runs and the data: a resumed
    study plans the same)."""
    settings = race_settings(config)
    candidates = race_candidates(config, study)
    race = _replayed(config, candidates, runs)
    race.next_round()  # every elimination test the stored runs allow
    if race.end() is RaceEnd.RUNNING or not any(race.scores[c.id] for c in candidates):
        return Selection(candidates, race, None, {}, None)
    by_id = {c.id: c for c in candidates}
    if config.quick:
        return _quick_selection(config, candidates, race, settings, study)
    winner = by_id[race.winner()]
    ids = {p: next((c.id for c in candidates if c.preset == p), None) for p in REFERENCES}
    pool = [c.id for c in candidates if c.pick is Pick.PRESET]
    compared = {k: by_id[c] for k, c in comparisons_of(race, winner.id, ids["sgd"], ids["sam"],
                                                        pool).items()}
    plan = plan_confirmation(
        race_spread(race, winner.id, [c.id for c in compared.values()]), data_sizes(config),
        comparisons=len(compared), per_instance=len(compared) + 1,
        budget=settings.confirm_budget, detect=settings.detect, power=settings.power,
        alpha=settings.alpha)
    return Selection(candidates, race, winner, compared, plan)


def _quick_selection(config: StudyConfig, candidates: list[Candidate], race: Race,
                     settings: RaceSettings, study: optuna.Study | None) -> Selection:
    """A quick study's pick by posterior mean (:mod:`metasam.decision.prior`), compared with
    SAM at its default (or, when SAM is the pick, the candidate that lasted longest), and its
    sequential confirmation's plan (none when the study's plan has no confirmation runs)."""
    by_id = {c.id: c for c in candidates}
    means, taus = quick_prior(config, study)
    winner = by_id[shrunk_pick(race, means, taus)]
    sam = next((c.id for c in candidates if c.preset == "sam" and c.pick is Pick.PRESET), None)
    compared = {k: by_id[c] for k, c in quick_comparison(race, winner.id, sam,
                                                          [c.id for c in candidates]).items()}
    budgeted = study_plan(config)
    if budgeted.confirmation == 0 or not compared:
        note = ("hopeless" if budgeted.hopeless else "budget") if compared else \
            "nothing to compare"
        plan = Plan(0, 0, 0.0, math.nan, budgeted.detectable, settings.detect, settings.power,
                    True, (), note)
        return Selection(candidates, race, winner, compared, plan)
    plan = plan_confirmation(
        race_spread(race, winner.id, [c.id for c in compared.values()]), data_sizes(config),
        comparisons=len(compared), per_instance=len(compared) + 1,
        budget=budgeted.confirmation, detect=settings.detect, power=settings.power,
        alpha=settings.alpha)
    if plan.instances >= 2:
        plan = dataclasses.replace(plan, looks=looks_of(plan.instances))
    return Selection(candidates, race, winner, compared, plan)


def _confirmed(chosen: Selection, runs: list[optuna.trial.FrozenTrial]
               ) -> dict[str, dict[int, float]]:
    """candidate id -> instance -> value of the confirmation runs that finished."""
    assert chosen.winner is not None and chosen.plan is not None
    out: dict[str, dict[int, float]] = {}
    for owner, instance, value in _finished([chosen.winner, *chosen.compared.values()], runs):
        if instance < chosen.plan.instances:
            out.setdefault(owner.id, {})[instance] = value
    return out


def _sequential_state(chosen: Selection, confirmed: dict[str, dict[int, float]],
                      sign: float) -> tuple[list[float], dict[str, list[float]]]:
    """The winner's values and each comparison's, over the leading instances both have (in
    instance order: what a look reads)."""
    assert chosen.winner is not None
    mine = confirmed.get(chosen.winner.id, {})
    winner: list[float] = []
    while len(winner) in mine:
        winner.append(sign * mine[len(winner)])
    others: dict[str, list[float]] = {}
    for key, c in chosen.compared.items():
        theirs = confirmed.get(c.id, {})
        values: list[float] = []
        while len(values) < len(winner) and len(values) in theirs:
            values.append(sign * theirs[len(values)])
        others[key] = values
    return winner, others


def _confirm_point(config: StudyConfig, plan: Plan, owner: Candidate, instance: int) -> Point:
    """``owner``'s run on confirmation instance ``instance``."""
    return Point(owner.run_label(instance, Role.VERDICT), owner.spec,
                 {**owner.train, **confirm_train(config, plan, instance)})


def confirmation_points(config: StudyConfig, chosen: Selection) -> list[Point]:
    assert chosen.winner is not None and chosen.plan is not None
    return [_confirm_point(config, chosen.plan, c, j) for j in range(chosen.plan.instances)
            for c in (chosen.winner, *chosen.compared.values())]


def run_confirmation(config: StudyConfig, *, address: str | None = None, verbose: int = 1,
                     say: Callable[[str], None] | None = None) -> bool:
    """Run (or resume) the confirmation of an ended race; ``True`` once it has finished (or
    when there is nothing to confirm)."""
    study = _deciding(config)
    if study is None:
        return True
    chosen = selection(config, study)
    if chosen.plan is None or chosen.winner is None or chosen.plan.instances < 2:
        return True
    if chosen.plan.sequential:
        return _run_sequential(config, chosen, address=address, verbose=verbose, say=say)
    points = confirmation_points(config, chosen)
    plan = chosen.plan
    involved = [chosen.winner, *chosen.compared.values()]
    done = {(owner.id, instance) for owner, instance, _ in
            _finished(involved, _stored_runs(config, CONFIRM_SUFFIX))
            if instance < plan.instances}
    if len(done) >= len(points):
        return True  # confirmed before: nothing to run, no Ray to start
    (say or _to_stderr)(
        f"study {config.name}: confirming {chosen.winner.name} against "
        f"{', '.join(c.name for c in chosen.compared.values())} on {plan.instances} fresh "
        f"instances ({len(points)} runs; validation folds of {plan.fold} held-back examples)")
    with ray_session(address, verbose):
        result = tune_study(_derived(config, CONFIRM_SUFFIX, points), address=address,
                            verbose=verbose, check_data=False, announce=True)
    return result.done


def _run_sequential(config: StudyConfig, chosen: Selection, *, address: str | None,
                    verbose: int, say: Callable[[str], None] | None) -> bool:
    """A sequential confirmation, look by look: the runs the open comparisons need for the
    next look, then the looks replayed from what is stored (a resumed one asks for the same
    runs and stops where it stopped)."""
    assert chosen.winner is not None and chosen.plan is not None
    plan = chosen.plan
    sign = 1.0 if config.mode == "max" else -1.0
    asked: dict[str, Point] = {}
    first = True
    while True:
        stored = _stored_runs(config, CONFIRM_SUFFIX)
        for t in stored:   # what earlier looks asked, finished or not
            rec = TrialRecord.of(t)
            owner = _owner([chosen.winner, *chosen.compared.values()], rec.label)
            if owner is not None and rec.counts and rec.label.instance < plan.instances:
                point = _confirm_point(config, plan, owner, rec.label.instance)
                asked.setdefault(point.label.key, point)
        winner, others = _sequential_state(chosen, _confirmed(chosen, stored), sign)
        states, _ = sequential_states(winner, others, looks=plan.looks, overlap=plan.overlap,
                                      alpha=chosen.race.alpha)
        upto = next_look(states, plan.looks)
        if upto is None:
            return True
        owners = [chosen.winner] + [chosen.compared[k] for k, st in states.items()
                                    if st is None or st.stopped is None]
        new = 0
        for j in range(upto):
            for owner in owners:
                point = _confirm_point(config, plan, owner, j)
                if point.label.key not in asked:
                    asked[point.label.key] = point
                    new += 1
        (say or _to_stderr)(
            f"study {config.name}: confirming {chosen.winner.name} against "
            f"{', '.join(o.name for o in owners[1:])}: look at {upto} of {plan.instances} "
            f"fresh instances (folds of {plan.fold} held-back examples; {new} new runs)")
        with ray_session(address, verbose):
            result = tune_study(_derived(config, CONFIRM_SUFFIX, list(asked.values())),
                                address=address, verbose=verbose, check_data=False,
                                announce=first, note=_spending(config))
        first = False
        if not result.done:
            return False


# --- the verdict ----------------------------------------------------------------------------

def race_verdict(config: StudyConfig, study: optuna.Study | None = None) -> Verdict | None:
    """The verdict from the stored race and confirmation (``None`` before any race run
    finished, or with ``race: false``)."""
    runs = _stored_runs(config) if config.race is not None else []
    if not runs:
        return None
    chosen = selection(config, study, runs)
    if not any(chosen.race.scores[c.id] for c in chosen.candidates):
        return None
    confirmed = _confirmed(chosen, _stored_runs(config, CONFIRM_SUFFIX)) \
        if chosen.plan is not None and chosen.winner is not None else {}
    return verdict_of(chosen, confirmed, config.mode)


def verdict_of(chosen: Selection, confirmed: dict[str, dict[int, float]], mode: str) -> Verdict:
    """The verdict of a selection (``chosen``) and the confirmation runs stored so far
    (candidate id -> instance -> value)."""
    race = chosen.race
    # a diverged run at its instance's worst value (as the race compared it), counted apart
    standings = [Standing(c, {i: race.value(c.id, i) for i in race.scores[c.id]},
                          race.dropped.get(c.id), dict(confirmed.get(c.id, {})),
                          sum(not math.isfinite(v) for v in race.scores[c.id].values()))
                 for c in chosen.candidates if race.scores[c.id]]
    by_id = {st.candidate.id: st for st in standings}
    winner_id = chosen.winner.id if chosen.winner is not None else race.winner()
    winner = by_id.get(winner_id, standings[0])
    sign = 1.0 if mode == "max" else -1.0
    # survivors first, then by how long they lasted; within, by mean (stable for ties)
    standings = sorted(standings, key=lambda st: race.standing(st.candidate.id), reverse=True)
    plan = chosen.plan
    against: dict[str, Comparison] = {}
    if plan is not None:
        others = {k: by_id[c.id] for k, c in chosen.compared.items() if c.id in by_id}
        if plan.sequential:
            mine, theirs = _sequential_state(chosen, {st.candidate.id: st.confirmed
                                                      for st in by_id.values()}, sign)
            tests = confirm_sequential(mine, theirs, looks=plan.looks, overlap=plan.overlap,
                                       alpha=race.alpha, power=plan.power)
            against = {k: Comparison(o, tests.get(k)) for k, o in others.items()}
            return Verdict(winner, standings, against, plan, race.end(), race.runs, mode,
                           race.alpha, race.rule)
        complete = [j for j in range(plan.instances)
                    if j in winner.confirmed and all(j in o.confirmed for o in others.values())]
        done = len(complete) == plan.instances and plan.instances >= 2
        tests = confirm([sign * winner.confirmed[j] for j in complete],
                        {k: [sign * o.confirmed[j] for j in complete] for k, o in others.items()},
                        overlap=plan.overlap, alpha=race.alpha,
                        power=plan.power) if done else {}
        against = {k: Comparison(o, tests.get(k)) for k, o in others.items()}
    return Verdict(winner, standings, against, plan, race.end(), race.runs, mode, race.alpha,
                   race.rule)
