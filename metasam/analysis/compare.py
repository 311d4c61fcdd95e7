"""``metasam compare``: the study's best bias against every baseline, several seeds, full budget.

Every method trains on train + validation (the validation split is not needed any more: the
choice was made) with the study's training settings, for each seed, through Ray Tune like
``metasam tune`` (parallel, resumable, shared through the storage). The runs are a points-only
study ``NAME.compare`` in the study's own storage; each keeps its per-epoch history (test
accuracy every epoch, for the plots — the reported value is the *last* epoch, never a best
epoch — and Hessian measures every few epochs), its passes per step and its wall time.

``tune_baselines=True`` first tunes each baseline by its own small grid (the paper's λ/ρ
sweeps for Trace-, Det- and Frob-SAM) on the validation split, one seed, in ``NAME.baselines``.
"""

from __future__ import annotations

from typing import Any

from metasam.family import presets
from metasam.tuning.record import TrialRecord
from metasam.tuning.space import Point
from metasam.tuning.storage import best_trials, load_study, trial_spec
from metasam.tuning.study import StudyConfig

BASELINES = ("sgd", "sam", "asam", "ssam", "trace_sam", "frob_sam", "det_sam")
BASELINE_GRID = {
    "trace_sam": {"lam": [0.01, 0.1, 1.0]},
    "det_sam": {"lam": [0.01, 0.1, 1.0]},
    "frob_sam": {"lam": [1e-4, 1e-3, 5e-3, 0.01, 0.05, 0.1], "rho": [0.005, 0.01]},
}


def baseline_points(config: StudyConfig, tuned: dict[str, Point] | None) -> dict[str, Point]:
    out = {}
    for name in BASELINES:
        if tuned and name in tuned:
            out[name] = tuned[name]
        else:
            out[name] = Point(name, presets.get(name).to_dict())
    return out


def tune_baselines(config: StudyConfig, address: str | None, verbose: int) -> dict[str, Point]:
    """Each baseline's best grid point on the validation split (official defaults included)."""
    import itertools

    points = []
    for name in BASELINES:
        grid = BASELINE_GRID.get(name)
        if not grid:
            points.append(Point(name, presets.get(name).to_dict()))
            continue
        keys = list(grid)
        for combo in itertools.product(*(grid[k] for k in keys)):
            values = dict(zip(keys, combo, strict=True))
            label = name + "".join(f" {k}={v}" for k, v in values.items())
            points.append(Point(label, presets.get(name, **values).to_dict()))
    study = config.derived("baselines", points, metric=config.metric, mode=config.mode,
                           train_changes={"test": "none"})
    from metasam.tuning.runner import tune_study

    tune_study(study, address=address, verbose=verbose)
    chosen: dict[str, Point] = {}
    ranked = best_trials(load_study(study.storage, study.name), study.mode, len(points))
    for trial in ranked:  # best first
        label = TrialRecord.of(trial).label
        method = label.split(" ")[0]
        if method not in chosen:
            chosen[method] = Point(f"{method} (tuned: {label})", trial_spec(trial) or {})
    return chosen


def best_point(config: StudyConfig) -> Point:
    """The study's winner (confirmed when the confirmation runs exist) as a point."""
    from metasam.tuning.export import best_optimizer

    data = best_optimizer(config)
    return Point(f"best (trial {data['trial']}: {data['name']})", data["spec"] or {},
                 {k: v for k, v in data["base_optimizer"].items()
                  if k in ("lr", "weight_decay", "momentum")
                  and getattr(config.train, k) != v})


def compare_config(config: StudyConfig, seeds: int, methods: dict[str, Point],
                   sharpness_every: int | None = None) -> StudyConfig:
    points = []
    for seed in range(seeds):
        for method, point in methods.items():
            points.append(Point(f"{method}/seed{seed}", point.spec,
                                {**point.train, "seed": config.seed + seed}))
    every = sharpness_every if sharpness_every is not None else max(1, config.train.epochs // 4)
    return config.derived("compare", points, metric="test_acc", mode="max", train_changes={
        "val_fraction": 0.0, "test": "epoch", "sharpness_every": every,
        "sharpness_measures": ["trace", "frob", "lmax"]})


def run_compare(config: StudyConfig, seeds: int = 4, *, tuned_baselines: bool = False,
                address: str | None = None, verbose: int = 1,
                sharpness_every: int | None = None) -> StudyConfig:
    """Train the best spec and every baseline for ``seeds`` seeds; returns the comparison
    study's config (its trials hold the results)."""
    tuned = tune_baselines(config, address, verbose) if tuned_baselines else None
    methods = {"best": best_point(config), **baseline_points(config, tuned)}
    comparison = compare_config(config, seeds, methods, sharpness_every)
    from metasam.tuning.runner import tune_study

    tune_study(comparison, address=address, verbose=verbose, record_history=True)
    return comparison


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
        method, _, seed = rec.label.partition("/seed")
        history = rec.history
        last = history[-1] if history else {}
        grad_evals, wall_time = rec.result("grad_evals"), rec.result("wall_time")
        out.setdefault(method, []).append({
            "seed": int(seed or 0), "test_acc": trial.value, "history": history,
            "passes_per_step": rec.passes_per_step,
            "grad_evals": grad_evals if grad_evals is not None else last.get("grad_evals"),
            "wall_time": wall_time if wall_time is not None else last.get("wall_time"),
            "point": rec.point})
    for runs in out.values():
        runs.sort(key=lambda r: r["seed"])
    return out
