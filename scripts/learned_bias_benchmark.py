"""Learned-bias benchmark: a bias learned within one run against a study's winner and SAM.

For each task of a finished search benchmark (``scripts/search_benchmark.py --out DIR``, whose
studies and test runs it reuses): the bias learned in one run by hypergradients on the run's
own validation split (``learn``, :mod:`metasam.training.learned`), started from SAM at its
default (θ = λ) and from a universal default (φ(t) = t + 0·t², ψ = identity, Gaussian
perturbations, n = 2, ρ = 0.05, relative λ = 1; θ = λ and φ's coefficients), trained on the
study's training pool without its validation share (``val_fraction`` as the study's) and
scored on test over the same paired seeds as the benchmark's test runs of the race's winner and
SAM at its default (trained on the whole pool), and SAM at its default trained on the learners'
split (the control: what learning did, apart from the data it set aside). Prints, per task:
learned − winner, − SAM and − SAM on the same split (points, paired mean ± 95% CI, two-sided
p), the cost of each in full-run equivalents
(the learned runs' validation passes included) and where θ ended; writes
``OUT/learned-bias.json`` and ``OUT/learned-bias.png`` (θ over training, mean over seeds).

Resumable: the learned runs are the study ``TASK.learned`` in each task's storage.

    python scripts/learned_bias_benchmark.py --from results/search-benchmark \\
        --tasks digits-noisy,mnist1d-noisy,mnist-S-noisy > learned.log 2>&1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LEARN = {"every": 4, "lr": 0.05, "val_batch": 128}
UNIVERSAL = {"phi": {"fn": "polynomial", "coefficients": [0.0, 1.0, 0.0]}, "psi": "identity",
             "measure": {"kind": "gaussian", "scale": "global"}, "n": 2, "rho": 0.05,
             "lam": 1.0, "lam_scale": "relative"}


def learned_points(config: Any) -> dict[str, Any]:
    from metasam.family import presets
    from metasam.tuning.trials import Label, Point, Role

    val = config.train.val_fraction
    return {
        "learned from sam": Point(Label(Role.COMPARE, "learned from sam", "sam"),
                                  presets.get("sam").to_dict(),
                                  {"learn": {**LEARN, "params": ["lam"]}, "val_fraction": val}),
        "learned from universal": Point(Label(Role.COMPARE, "learned from universal"),
                                        UNIVERSAL, {"learn": {**LEARN, "params": ["lam", "phi"]},
                                                    "val_fraction": val}),
        # the control: SAM at its default on the learners' training split, nothing learned —
        # learned − this is what the learning did, apart from the data it set aside
        "sam, learners' split": Point(Label(Role.COMPARE, "sam, learners' split", "sam"),
                                      presets.get("sam").to_dict(), {"val_fraction": val})}


def run_task(name: str, source: Path, seeds: int) -> dict[str, Any]:
    from metasam.analysis.runs import collect
    from metasam.benchmark import pair
    from metasam.decision.budget import study_cost
    from metasam.family.spec import SharpnessSpec
    from metasam.training.learned import replayed
    from metasam.tuning import StudyConfig
    from metasam.tuning.record import TrialRecord
    from metasam.tuning.runner import tune_study
    from metasam.tuning.storage import load_study
    from metasam.tuning.trials import Label, Point, Role

    config = StudyConfig.from_yaml(source / f"{name}.yaml")
    points = learned_points(config)
    runs_points = []
    for seed in range(seeds):
        for method, point in points.items():
            label = point.label.__class__(point.label.role, method, point.label.preset,
                                          instance=seed)
            runs_points.append(point.__class__(label, point.spec,
                                               {**point.train, "seed": config.seed + seed}))
    learned = config.derived("learned", runs_points, metric="test_acc", mode="max",
                             cost_weight=0.0, train_changes={"val_fraction": 0.0,
                                                             "test": "epoch"})
    tune_study(learned, verbose=0, record_history=True)
    acc: dict[str, dict[int, float]] = {}
    theta: dict[str, list[list[dict[str, float]]]] = {}
    extra: dict[str, list[float]] = {}
    final: dict[str, list[str]] = {}
    for trial in load_study(config.storage, f"{config.name}.learned").trials:
        rec = TrialRecord.of(trial)
        if trial.value is None or rec.label.instance is None:
            continue
        method = rec.label.method
        acc.setdefault(method, {})[rec.label.instance] = trial.value
        history = rec.history or []
        theta.setdefault(method, []).append(
            [{k.split(":", 1)[1]: v for k, v in h.items() if k.startswith("learned:")}
             for h in history])
        evals = rec.result("grad_evals") or 1
        extra.setdefault(method, []).append(float((history[-1] if history else {}).get(
            "learn_grad_evals", 0.0)) / float(evals))
        if history and "learned_spec" in history[-1]:
            final.setdefault(method, []).append(history[-1]["learned_spec"])
    # the trajectory learned with seed s, replayed as a schedule (vary phases of λ, one per
    # epoch) on the whole pool with seed s: the learning's data cost undone, at 1 more run
    replay = []
    for trial in load_study(config.storage, f"{config.name}.learned").trials:
        rec = TrialRecord.of(trial)
        if rec.label.method != "learned from sam" or not rec.history:
            continue
        spec = replayed(SharpnessSpec.from_dict(points["learned from sam"].spec),
                        rec.history).to_dict()
        seed = rec.label.instance
        replay.append(Point(Label(Role.COMPARE, "learned from sam, replayed", None,
                                  instance=seed), spec, {"seed": config.seed + seed}))
    if replay:
        tune_study(config.derived("replayed", replay, metric="test_acc", mode="max",
                                  cost_weight=0.0, train_changes={"val_fraction": 0.0,
                                                                  "test": "epoch"}),
                   verbose=0, record_history=True)
        for trial in load_study(config.storage, f"{config.name}.replayed").trials:
            rec = TrialRecord.of(trial)
            if trial.value is not None and rec.label.instance is not None:
                acc.setdefault("learned from sam, replayed", {})[rec.label.instance] = \
                    trial.value
        points = {**points, "learned from sam, replayed": replay[0]}
        extra["learned from sam, replayed"] = [1.0 + e for e in extra.get("learned from sam",
                                                                          [0.0])]
    tested = collect(config)
    for method in ("winner", "sam"):
        acc[method] = {r["seed"]: r["test_acc"] for r in tested.get(method, [])}
    out: dict[str, Any] = {"task": name, "seeds": seeds, "comparisons": {}, "theta": {},
                           "cost": {"study": study_cost(config).total}}
    for method in points:
        for other in ("winner", "sam", "sam, learners' split"):
            if other == method:
                continue
            figures = pair(acc, method, other)
            if figures is not None:
                out["comparisons"][f"{method} - {other}"] = figures
        out["cost"][method] = 1.0 + statistics.mean(extra.get(method, [0.0]))
        runs = theta.get(method, [])
        if runs:
            keys = sorted({k for run in runs for h in run for k in h})
            epochs = min(len(run) for run in runs)
            out["theta"][method] = {k: [statistics.mean(run[e][k] for run in runs
                                                        if k in run[e])
                                        for e in range(epochs)] for k in keys}
        out.setdefault("final_specs", {})[method] = final.get(method, [])[:3]
    out["mean"] = {m: 100 * statistics.mean(v.values()) for m, v in acc.items() if v}
    return out


def plot(results: list[dict[str, Any]], path: Path) -> None:
    from metasam._plotting import pyplot, save_figure

    plt = pyplot()
    fig, axes = plt.subplots(1, len(results), figsize=(5.2 * len(results), 3.8), dpi=120,
                             squeeze=False, layout="constrained")
    for ax, result in zip(axes[0], results, strict=True):
        for method, series in result["theta"].items():
            for key, values in series.items():
                ax.plot(range(1, len(values) + 1), values, marker="o", ms=3,
                        label=f"{method}: {key}")
        ax.set_title(result["task"])
        ax.set_xlabel("epoch")
        ax.set_ylabel("θ (mean over seeds)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("The bias learned within one run: θ over training")
    save_figure(fig, path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--from", dest="source", type=Path, required=True,
                        help="the search benchmark's --out folder (its studies are reused)")
    parser.add_argument("--tasks", default="digits-noisy,mnist1d-noisy,mnist-S-noisy")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None, help="default: the --from folder")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    out = args.out or args.source
    results = []
    from metasam.benchmark import ci
    from metasam.tuning.runner import ray_session

    with ray_session():
        for name in [t for t in args.tasks.split(",") if t]:
            if not (args.source / f"{name}.yaml").is_file():
                print(f"{name}: no finished search benchmark study in {args.source}",
                      file=sys.stderr)
                return 2
            results.append(run_task(name, args.source, args.seeds))
            print(json.dumps(results[-1]["comparisons"]), flush=True)
    (out / "learned-bias.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, out / "learned-bias.png")
    print("| task | method | − race winner | − SAM (default) | − SAM on the same split | "
          "cost (FRE) | θ at the end |")
    print("|---|---|---|---|---|---|---|")
    def cell(comparisons: dict[str, Any], key: str) -> str:
        return ci(comparisons.get(key), p="p_two_sided")

    for r in results:
        for method in ("learned from sam", "learned from sam, replayed",
                       "learned from universal"):
            c = r["comparisons"]
            ends = ", ".join(f"{k} {v[-1]:.3g}" for k, v in r["theta"].get(method, {}).items())
            print(f"| {r['task']} | {method} | {cell(c, method + ' - winner')} | "
                  f"{cell(c, method + ' - sam')} | "
                  f"{cell(c, method + ' - sam, learners' + chr(39) + ' split')} | "
                  f"{r['cost'].get(method, float('nan')):.2f} | {ends} |")
        print(f"| {r['task']} | (the study) | | | | {r['cost']['study']:.1f} | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
