"""Search benchmark: does tuning the family find more than the presets, on tasks where it matters?

For each task: ``metasam tune`` (the search, over ``universal-poly`` by default) → the
confirmation stage → ``metasam compare --seeds S`` (the winner and the seven baselines at their
official defaults, trained on train + validation, test accuracy at the last epoch). Prints, per
task:

- test accuracy (mean ± std over seeds) of SGD, SAM at its default, the best default preset on
  *test* (an oracle no user has) and the tuned winner, with one-sided Welch p-values of the
  winner against each;
- the share of the study's trials that diverged, the share of searched (non-preset) trials that
  reached the full budget, and the first trial whose validation value beat the best default
  preset's;
- how well the ranking at each epoch predicts the ranking at the last epoch (Spearman, over the
  comparison runs, which all train to the end: an unselected sample), the multi-fidelity
  measurement behind the ASHA defaults.

Usage (about an hour on a 2-core CPU for the four default tasks)::

    python scripts/search_benchmark.py --data-dir DIR --out results/search-benchmark \
        > benchmark.log 2>&1

Every stage is a study in ``OUT/TASK.db`` (SQLite): re-running the command resumes where it
stopped and reuses what finished. ``--tasks digits-noisy,mnist1d-noisy`` runs a subset; the
figures land in ``OUT/benchmark.json`` and as a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]

# Tasks where the optimizer matters: label noise and/or limited data. Epochs shrunk to fit the
# 2-core CPU budget; lr and schedule as in the shipped studies.
TASKS: dict[str, dict[str, Any]] = {
    "digits-noisy": {"train": {"dataset": "digits", "label_noise": 0.2, "model": "cnn",
                               "epochs": 10, "batch_size": 64, "lr": 0.05, "val_fraction": 0.2},
                     "trials": 30},
    "mnist-S-noisy": {"train": {"dataset": "mnist-S", "label_noise": 0.2, "model": "mlp",
                                "epochs": 12, "batch_size": 128, "lr": 0.05,
                                "val_fraction": 0.15},
                      "trials": 30},
    "mnist1d-noisy": {"train": {"dataset": "mnist1d", "label_noise": 0.2, "model": "cnn",
                                "epochs": 15, "batch_size": 128, "lr": 0.05,
                                "val_fraction": 0.15},
                      "trials": 30},
    "cifar10-jpeg-S": {"train": {"dataset": "cifar10-jpeg-S", "model": "cnn", "epochs": 5,
                                 "batch_size": 128, "lr": 0.05, "val_fraction": 0.1},
                       "trials": 16, "confirm": {"top_k": 2, "seeds": 3}},
}


def study_file(out: Path, name: str, task: dict[str, Any], space: Path, data_dir: str,
               seed: int, concurrency: int) -> Path:
    train = {"schedule": "cosine", "weight_decay": 5e-4, "data_dir": data_dir, **task["train"]}
    study = {"name": name, "search_space": str(space), "train": train, "metric": "val_acc",
             "trials": task["trials"], "concurrency": concurrency,
             "resources": {"cpu": 1, "gpu": 0},
             "scheduler": {"type": "asha", "grace_period": "auto", "reduction_factor": 3},
             "sampler": {"type": "tpe", "startup_trials": 10},
             "confirm": task.get("confirm", {"top_k": 3, "seeds": 3}), "seed": seed}
    path = out / f"{name}.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def spearman(xs: list[float], ys: list[float]) -> float:
    from scipy import stats

    if len(xs) < 3 or len(set(xs)) < 2 or len(set(ys)) < 2:
        return math.nan
    return float(stats.spearmanr(xs, ys).statistic)


def rung_correlations(runs: dict[str, list[dict[str, Any]]], key: str) -> dict[int, float]:
    """Spearman between the value at each epoch and at the last epoch, over all runs."""
    series = [[h[key] for h in r["history"]] for rs in runs.values() for r in rs
              if r["history"] and key in r["history"][-1]]
    if not series:
        return {}
    epochs = min(len(s) for s in series)
    finals = [s[epochs - 1] for s in series]
    return {e + 1: spearman([s[e] for s in series], finals) for e in range(epochs - 1)}


def per_epoch_correlations(trials: list[Any], last: int) -> dict[int, float]:
    """Spearman between each epoch's intermediate value and the final value (the trial's value
    at full budget), over full-budget trials."""
    out = {}
    for epoch in range(1, last):
        pairs = [(t.intermediate_values.get(epoch), t.value) for t in trials]
        pairs = [p for p in pairs if None not in p]
        out[epoch] = spearman([a for a, _ in pairs], [b for _, b in pairs])
    return out


def confirmation_correlations(config: Any) -> dict[int, float]:
    """The same over the confirmation runs: finalists × fresh seeds, all at full budget, every
    epoch's validation value recorded (no selection by an early rung)."""
    from optuna.trial import TrialState

    from metasam.tuning.storage import StudyNotFoundError, load_study

    try:
        study = load_study(config.storage, f"{config.name}.confirm")
    except StudyNotFoundError:
        return {}
    runs = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.user_attrs.get("full_budget")]
    return per_epoch_correlations(runs, config.train.epochs)


def study_figures(config: Any) -> dict[str, Any]:
    from metasam.tuning.record import TrialRecord
    from metasam.tuning.storage import census, load_study

    study = load_study(config.storage, config.name)
    trials = sorted(census(study).counted, key=lambda t: t.number)
    records = {t.number: TrialRecord.of(t) for t in trials}
    diverged = [t for t in trials if records[t.number].status is not None
                and records[t.number].status.failed]
    searched = [t for t in trials if not records[t.number].is_point]
    searched_full = [t for t in searched if records[t.number].full_budget]
    presets_full = [t for t in trials if records[t.number].is_point
                    and records[t.number].full_budget and t.value is not None]
    sign = 1 if config.mode == "max" else -1
    best_preset = max((sign * t.value for t in presets_full), default=None)
    first_beat = next((i + 1 for i, t in enumerate(trials)
                       if not records[t.number].is_point and records[t.number].full_budget
                       and best_preset is not None
                       and sign * t.value > best_preset), None)
    members = Counter(t.user_attrs.get("member", "?") for t in searched)
    # rank correlation among the trials that reached the full budget, from the per-epoch
    # validation values Optuna recorded (a selected sample: the presets and ASHA's survivors)
    full = [t for t in trials if t.user_attrs.get("full_budget") and t.intermediate_values]
    val_corr = per_epoch_correlations(full, config.train.epochs)
    return {"trials": len(trials), "diverged": len(diverged),
            "diverged_share": len(diverged) / max(1, len(trials)),
            "searched": len(searched), "searched_full": len(searched_full),
            "searched_full_share": len(searched_full) / max(1, len(searched)),
            "first_trial_beating_best_preset_on_val": first_beat,
            "searched_members": dict(members), "val_rank_corr_full_budget_trials": val_corr,
            "val_rank_corr_confirmation_runs": confirmation_correlations(config),
            "repaired": sum(1 for t in searched if t.user_attrs.get("repaired"))}


def test_figures(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    from metasam.stats import Summary, welch_greater

    acc = {m: [r["test_acc"] for r in rs] for m, rs in runs.items()}
    baselines = [m for m in acc if m != "best"]
    oracle = max(baselines, key=lambda m: Summary.of(acc[m]).mean)
    winner = acc.get("best", [])

    def row(values: list[float]) -> dict[str, Any]:
        s = Summary.of(values)
        return {"mean": s.mean, "std": s.std, "values": values}

    return {"sgd": row(acc["sgd"]), "sam": row(acc["sam"]), "oracle": oracle,
            "oracle_preset": row(acc[oracle]), "winner": row(winner),
            "p_winner_gt_sgd": welch_greater(winner, acc["sgd"]),
            "p_winner_gt_sam": welch_greater(winner, acc["sam"]),
            "p_winner_gt_oracle": welch_greater(winner, acc[oracle]),
            "p_oracle_gt_winner": welch_greater(acc[oracle], winner),
            "all": {m: row(v) for m, v in acc.items()}}


def run_task(name: str, args: argparse.Namespace) -> dict[str, Any]:
    from metasam import Study
    from metasam.analysis.runs import collect
    from metasam.tuning import StudyConfig
    from metasam.tuning.compare import run_compare

    path = study_file(args.out, name, TASKS[name], args.space, args.data_dir, args.seed,
                      args.concurrency)
    config = StudyConfig.from_yaml(path)
    study = Study(config, verbose=0)
    t0 = time.time()
    study.tune()
    t1 = time.time()
    study.decide()
    t2 = time.time()
    run_compare(config, seeds=args.seeds, verbose=0, sharpness_every=0)
    t3 = time.time()
    runs = collect(config)
    verdict = study.verdict()
    return {"task": name, "train": config.train.to_dict(), "winner": study.export()[
        "name"], "verdict": verdict.to_dict() if verdict else None,
        "study": study_figures(config), "test": test_figures(runs),
        "test_rank_corr_by_epoch": rung_correlations(runs, "test_acc"),
        "seconds": {"tune": t1 - t0, "confirm": t2 - t1, "compare": t3 - t2}}


def pct(row: dict[str, Any]) -> str:
    return f"{100 * row['mean']:.2f} ± {100 * (0 if math.isnan(row['std']) else row['std']):.2f}"


def markdown(results: list[dict[str, Any]]) -> str:
    lines = ["| task | SGD | SAM (default) | best default preset on test (oracle) | tuned winner "
             "| p(winner > SGD) | p(winner > SAM) | p(winner > oracle) | p(oracle > winner) "
             "| diverged | searched at full budget | first trial beating best preset (val) |",
             "|" + "---|" * 12]
    for r in results:
        t, s = r["test"], r["study"]
        lines.append(
            f"| {r['task']} | {pct(t['sgd'])} | {pct(t['sam'])} | {t['oracle']}: "
            f"{pct(t['oracle_preset'])} | {r['winner']}: {pct(t['winner'])} | "
            f"{t['p_winner_gt_sgd']:.3f} | {t['p_winner_gt_sam']:.3f} | "
            f"{t['p_winner_gt_oracle']:.3f} | {t['p_oracle_gt_winner']:.3f} | "
            f"{s['diverged']}/{s['trials']} | {s['searched_full']}/{s['searched']} | "
            f"{s['first_trial_beating_best_preset_on_val'] or 'never'} |")
    lines += ["", "Rank correlation (Spearman) of each epoch's test accuracy with the last "
              "epoch's, over the comparison runs:", ""]
    for r in results:
        corr = r["test_rank_corr_by_epoch"]
        lines.append(f"- {r['task']}: " + ", ".join(f"e{e}: {c:.2f}" for e, c in corr.items()))
    for key, title in (("val_rank_corr_full_budget_trials", "the study's full-budget trials"),
                       ("val_rank_corr_confirmation_runs", "the confirmation runs")):
        lines += ["", f"Validation rank correlation with the last epoch among {title}:", ""]
        for r in results:
            corr = r["study"][key]
            lines.append(f"- {r['task']}: " + ", ".join(f"e{e}: {c:.2f}"
                                                        for e, c in corr.items()))
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default=",".join(TASKS),
                        help=f"comma-separated, from: {', '.join(TASKS)}")
    parser.add_argument("--data-dir", default=os.environ.get("METASAM_DATA", "data"),
                        help="folder with mnist.npz, mnist1d.npz, cifar10-jpeg.npz")
    parser.add_argument("--space", type=Path, default=ROOT / "search_spaces" /
                        "universal-poly.yaml")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "search-benchmark")
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the comparison runs")
    parser.add_argument("--seed", type=int, default=0, help="the studies' seed")
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args()
    names = [n for n in args.tasks.split(",") if n]
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        print(f"search_benchmark: error: --tasks: unknown task {unknown[0]!r}; allowed: "
              f"{', '.join(TASKS)}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    args.space = args.space.resolve()
    args.data_dir = str(Path(args.data_dir).resolve())
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    ray.init(num_cpus=args.concurrency, include_dashboard=False, log_to_driver=False)
    results = []
    try:
        for name in names:
            started = time.time()
            results.append(run_task(name, args))
            print(f"{name}: done in {time.time() - started:.0f} s", file=sys.stderr,
                  flush=True)
            (args.out / "benchmark.json").write_text(json.dumps(results, indent=2))
            print(markdown(results[-1:]), flush=True)
    finally:
        ray.shutdown()
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
