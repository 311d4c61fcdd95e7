"""PNG plots of comparisons and searches (matplotlib, Agg backend)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from metasam._plotting import pyplot, save_figure
from metasam.analysis.tables import METHOD_NAMES, METHOD_ORDER


def _ordered(runs: dict[str, list[dict[str, Any]]]) -> list[str]:
    return [m for m in METHOD_ORDER if m in runs] + sorted(set(runs) - set(METHOD_ORDER))


def _series(runs: list[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Epochs, mean and std over seeds of a per-epoch metric (epochs where every seed has it)."""
    by_epoch: dict[int, list[float]] = {}
    for run in runs:
        for h in run["history"]:
            if key in h and h[key] is not None and math.isfinite(h[key]):
                by_epoch.setdefault(h["epoch"], []).append(h[key])
    epochs = sorted(e for e, v in by_epoch.items() if len(v) == len(runs))
    values = [by_epoch[e] for e in epochs]
    return (np.array(epochs), np.array([np.mean(v) for v in values]),
            np.array([np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in values]))


def plot_test_accuracy(runs: dict[str, list[dict[str, Any]]], path: Path, title: str) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=120)
    for method in _ordered(runs):
        epochs, mean, std = _series(runs[method], "test_acc")
        if not len(epochs):
            continue
        style = {"lw": 2.6, "color": "black"} if method == "best" else {"lw": 1.4}
        line, = ax.plot(epochs, 100 * mean, label=f"{METHOD_NAMES.get(method, method)} "
                        f"(n={len(runs[method])})", **style)
        ax.fill_between(epochs, 100 * (mean - std), 100 * (mean + std),
                        color=line.get_color(), alpha=0.15)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%), mean ± std over seeds")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_sharpness(runs: dict[str, list[dict[str, Any]]], path: Path, title: str) -> Path:
    """tr H, ‖H‖_F and λ_max over training, per method (mean ± std over seeds)."""
    plt = pyplot()
    panels = (("hessian_trace", "tr H", lambda v: v),
              ("hessian_frob", "‖H‖_F", np.sqrt),
              ("hessian_lmax", "λ_max(H)", lambda v: v))
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2), dpi=120)
    for ax, (key, label, transform) in zip(axes, panels, strict=True):
        for method in _ordered(runs):
            epochs, mean, std = _series(runs[method], key)
            if not len(epochs):
                continue
            style = {"lw": 2.6, "color": "black"} if method == "best" else {"lw": 1.4}
            low = transform(np.maximum(mean - std, 1e-12))
            line, = ax.plot(epochs, transform(mean), marker="o", ms=3,
                            label=METHOD_NAMES.get(method, method), **style)
            ax.fill_between(epochs, low, transform(mean + std), color=line.get_color(),
                            alpha=0.12)
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{label} (training examples, eval mode)")
        ax.set_title(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_search(study: Any, metric: str, mode: str, history_path: Path,
                importance_path: Path) -> list[Path]:
    """Optuna's own analysis of the search: optimization history and parameter importances."""
    import warnings

    import optuna
    from optuna.trial import TrialState

    pyplot()  # the Agg backend, before Optuna draws
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ax = optuna.visualization.matplotlib.plot_optimization_history(study,
                                                                       target_name=metric)
        ax.figure.set_size_inches(7.5, 4.5)
        ax.set_title("", loc="left")  # replace Optuna's own title
        ax.set_title(f"Search history ({metric}; ASHA-stopped trials at their partial budget)",
                     fontsize=10)
        ax.figure.tight_layout()
        out.append(save_figure(ax.figure, history_path))
        searched = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                    if t.params]
        common = set.intersection(*(set(t.params) for t in searched)) if searched else set()
        if len(searched) >= 3 and len(common) >= 2:
            ax = optuna.visualization.matplotlib.plot_param_importances(
                study, params=sorted(common), target_name=metric)
            ax.figure.set_size_inches(7.5, 4.5)
            ax.set_title("", loc="left")
            ax.set_title(f"Parameter importances for {metric} (fANOVA, parameters every "
                         "searched trial has)", fontsize=10)
            ax.figure.tight_layout()
            out.append(save_figure(ax.figure, importance_path))
    return out


