"""``metasam compare``: the study's best bias against every baseline, several seeds, full budget.

Every method trains on train + validation (the validation split is not needed any more: the
choice was made) with the study's training settings, for each seed, through Ray Tune like
``metasam tune`` (parallel, resumable, shared through the storage). The runs are a points-only
study ``NAME.compare`` in the study's own storage; each keeps its per-epoch history (test
accuracy every epoch, for the plots — the reported value is the *last* epoch, never a best
epoch — and Hessian measures every few epochs), its passes per step and its wall time.
:func:`metasam.analysis.runs.collect` reads them back.

``tune_baselines=True`` first tunes each baseline over the paper's own λ/ρ sweeps
(:data:`BASELINE_SPACE`) on the validation split, one seed, in ``NAME.baselines``.
"""

from __future__ import annotations

from metasam.decision.export import best_optimizer
from metasam.family import presets
from metasam.tuning.record import TrialRecord
from metasam.tuning.runner import tune_study
from metasam.tuning.space import SearchSpace
from metasam.tuning.storage import best_trials, load_study, trial_spec
from metasam.tuning.study_config import StudyConfig
from metasam.tuning.trials import Label, Point, Role

BASELINES = ("sgd", "sam", "asam", "ssam", "trace_sam", "frob_sam", "det_sam")
# The paper's own sweeps, in the search-space format (search_spaces/paper.yaml holds the same
# points; a test keeps them equal): the grid `--tune-baselines` runs.
BASELINE_SPACE = {
    "presets": ["sgd", "sam", "asam", "ssam"],
    "points": [{"preset": "trace_sam", "lam": [0.01, 0.1, 1.0]},
               {"preset": "det_sam", "lam": [0.01, 0.1, 1.0]},
               {"preset": "frob_sam", "lam": [1e-4, 1e-3, 5e-3, 0.01, 0.05, 0.1],
                "rho": [0.005, 0.01]}],
}


def baseline_points(config: StudyConfig, tuned: dict[str, Point] | None) -> dict[str, Point]:
    out = {}
    for name in BASELINES:
        if tuned and name in tuned:
            out[name] = tuned[name]
        else:
            out[name] = Point(Label(Role.COMPARE, name, preset=name), presets.get(name).to_dict())
    return out


def tune_baselines(config: StudyConfig, address: str | None, verbose: int) -> dict[str, Point]:
    """Each baseline's best point of :data:`BASELINE_SPACE` on the validation split, read by the
    search-space reader like any points-only space."""
    points = SearchSpace.from_dict(BASELINE_SPACE, name="baselines").points
    study = config.derived("baselines", points, metric=config.metric, mode=config.mode,
                           cost_weight=0.0,
                           train_changes={"test": "none"})
    tune_study(study, address=address, verbose=verbose)
    chosen: dict[str, Point] = {}
    ranked = best_trials(load_study(study.storage, study.name), study.mode, len(points))
    for trial in ranked:  # best first
        spec = trial_spec(trial) or {}
        method = spec.get("name")
        if method is not None and method not in chosen:
            label = Label(Role.COMPARE, f"{method} (tuned: {TrialRecord.of(trial).name})",
                          preset=method)
            chosen[method] = Point(label, spec)
    return chosen


def best_point(config: StudyConfig) -> Point:
    """The study's winner (the race's, once its runs exist) as a point."""
    data = best_optimizer(config)
    label = Label(Role.COMPARE, f"best (trial {data['trial']}: {data['name']})",
                  preset=(data["spec"] or {}).get("name"), trial=data["trial"])
    return Point(label, data["spec"] or {},
                 {k: v for k, v in data["base_optimizer"].items()
                  if k in ("lr", "weight_decay", "momentum")
                  and getattr(config.train, k) != v})


def compare_config(config: StudyConfig, seeds: int, methods: dict[str, Point],
                   sharpness_every: int = 0) -> StudyConfig:
    """The points-only study of the comparison: every method × every seed; each run's label
    names its method (the key of ``methods``) and its seed as the instance. With
    ``sharpness_every`` = K > 0 each run measures tr H, ‖H‖_F and λ_max every K epochs (each
    measure costs about an epoch on small data); 0: none."""
    points = []
    for seed in range(seeds):
        for method, point in methods.items():
            label = Label(Role.COMPARE, method, point.label.preset, instance=seed)
            points.append(Point(label, point.spec, {**point.train, "seed": config.seed + seed}))
    return config.derived("compare", points, metric="test_acc", mode="max", cost_weight=0.0,
                          train_changes={
        "val_fraction": 0.0, "test": "epoch", "sharpness_every": sharpness_every,
        "sharpness_measures": ["trace", "frob", "lmax"]})


def run_compare(config: StudyConfig, seeds: int = 4, *, tuned_baselines: bool = False,
                address: str | None = None, verbose: int = 1,
                sharpness_every: int = 0) -> StudyConfig:
    """Train the best spec and every baseline for ``seeds`` seeds (Hessian measures every
    ``sharpness_every`` epochs; 0: none); returns the comparison study's config (its trials
    hold the results)."""
    from metasam.tuning.tracking import check_trackers

    check_trackers(config.tracking, str(config.path))
    tuned = tune_baselines(config, address, verbose) if tuned_baselines else None
    methods = {"best": best_point(config), **baseline_points(config, tuned)}
    comparison = compare_config(config, seeds, methods, sharpness_every)
    tune_study(comparison, address=address, verbose=verbose, record_history=True)
    return comparison
