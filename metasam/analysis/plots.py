"""PNG plots of comparisons and searches (matplotlib, Agg backend)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.ticker import MaxNLocator

from metasam._plotting import pyplot, save_figure
from metasam.analysis.tables import METHOD_NAMES, METHOD_ORDER, method_name
from metasam.tuning import record


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


def plot_test_accuracy(runs: dict[str, list[dict[str, Any]]], path: Path, title: str,
                       best_name: str | None = None) -> Path:
    """:func:`test_accuracy_figure`, saved as PNG."""
    return save_figure(test_accuracy_figure(runs, title, best_name), path)


def test_accuracy_figure(runs: dict[str, list[dict[str, Any]]], title: str,
                         best_name: str | None = None) -> Any:
    """Test accuracy per epoch, mean ± std over seeds: every epoch on the left, the last third
    of training zoomed on the right (where the methods differ by a point or less). The search's
    winner is a thick dashed black line drawn *under* the others, so that a winner identical to
    a preset still shows both."""
    plt = pyplot()
    fig, (full, zoom) = plt.subplots(1, 2, figsize=(12, 4.6), dpi=120,
                                     gridspec_kw={"width_ratios": [1, 1]})
    low, high = math.inf, -math.inf
    series = {m: _series(runs[m], "test_acc") for m in _ordered(runs)}
    last = max((int(e[-1]) for e, _, _ in series.values() if len(e)), default=0)
    start = max(1, last - max(1, last // 3))
    for method, (epochs, mean, std) in series.items():
        if not len(epochs):
            continue
        label = f"{method_name(method, best_name)} (n={len(runs[method])})"
        if method == "best":
            style: dict[str, Any] = {"lw": 4.0, "color": "black", "ls": "--", "zorder": 1,
                                     "alpha": 0.75}
        else:
            style = {"lw": 1.5, "zorder": 3}
        # an accuracy lies in [0, 100]: so does its band
        lower = np.clip(100 * (mean - std), 0.0, 100.0)
        upper = np.clip(100 * (mean + std), 0.0, 100.0)
        for ax in (full, zoom):
            line, = ax.plot(epochs, 100 * mean, label=label if ax is full else None, **style)
            ax.fill_between(epochs, lower, upper, color=line.get_color(), alpha=0.12, zorder=0)
        tail = epochs >= start
        if tail.any():
            low = min(low, float(np.min(lower[tail])))
            high = max(high, float(np.max(upper[tail])))
    for ax in (full, zoom):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.grid(True, alpha=0.3)
    full.set_ylabel("test accuracy (%), mean ± std over seeds")
    full.set_title("all epochs")
    if math.isfinite(low) and last > start:
        pad = max(0.1, 0.08 * (high - low))
        zoom.set_xlim(start, last)
        zoom.set_ylim(max(0.0, low - pad), min(100.0, high + pad))
    full.set_ylim(top=min(100.0, full.get_ylim()[1]))
    zoom.set_title(f"epochs {start}–{last} (zoomed)")
    full.legend(fontsize=8, loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_cost(runs: dict[str, list[dict[str, Any]]], path: Path, title: str,
              best_name: str | None = None) -> Path:
    """Test accuracy against gradient evaluations per run, per method (mean ± std over seeds),
    with the Pareto front of the methods: what each method's accuracy costs."""
    return save_figure(cost_figure(runs, title, best_name), path)


def cost_figure(runs: dict[str, list[dict[str, Any]]], title: str,
                best_name: str | None = None) -> Any:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    points = []
    for method in _ordered(runs):
        accs = [100 * r["test_acc"] for r in runs[method] if r.get("test_acc") is not None]
        evals = [r["grad_evals"] for r in runs[method] if r.get("grad_evals") is not None]
        if not accs or not evals:
            continue
        x, y = float(np.mean(evals)), float(np.mean(accs))
        err = float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0
        style = {"color": "black", "marker": "*", "ms": 12} if method == "best" else \
            {"marker": "o", "ms": 6}
        ax.errorbar([x], [y], yerr=[err], ls="none", capsize=3,
                    label=method_name(method, best_name), **style)
        points.append((x, y))
    front, top = [], -math.inf
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):  # the best of equal costs first
        if y > top:
            front.append((x, y))
            top = y
    if len(front) > 1:
        xs, ys = zip(*front, strict=True)
        ax.plot(xs, ys, "--", color="grey", lw=1, zorder=0, label="Pareto front")
    ax.set_xlabel("gradient evaluations per run (forward/backward passes)")
    ax.set_ylabel("test accuracy (%), mean ± std over seeds")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


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
    """The search's history — every trial by number, marked by kind (reference point or
    searched) and by the budget its value was reached at (full, or ASHA-stopped at epoch e),
    failed trials along the bottom edge, and the best full-budget value so far — and Optuna's
    parameter importances."""
    import warnings

    import optuna
    from optuna.trial import TrialState

    out = [save_figure(search_history_figure(study, metric, mode), history_path)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
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


def fit_range(values: list[float], fences: float = 3.0) -> tuple[float, float]:
    """The range of the values within ``fences`` interquartile ranges of the quartiles (Tukey's
    far-out fences): one diverged value does not set the scale for all the others."""
    finite = sorted(v for v in values if math.isfinite(v))
    if not finite:
        return 0.0, 1.0
    q1, q3 = np.percentile(finite, [25, 75])
    spread = q3 - q1
    kept = [v for v in finite if q1 - fences * spread <= v <= q3 + fences * spread] or finite
    return float(kept[0]), float(kept[-1])


def search_history_figure(study: Any, metric: str, mode: str) -> Any:
    """Every counted trial by number: reference points and searched trials, the budget each
    value was reached at (full, or ASHA-stopped at epoch e), failed trials along the bottom
    edge, and the best full-budget value so far."""
    from optuna.trial import TrialState

    from metasam.tuning.record import TrialRecord

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8.5, 4.8), dpi=120)
    trials = [t for t in study.get_trials(deepcopy=False) if TrialRecord.of(t).counts]
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    groups = {
        "reference point, full budget": ("s", "tab:blue", True,
                                         lambda r: r.is_point),
        "searched, full budget": ("o", "tab:orange", True,
                                  lambda r: not r.is_point and r.full_budget),
        "searched, stopped early (label: epochs)": ("o", "tab:orange", False,
                                                    lambda r: not r.is_point
                                                    and not r.full_budget),
    }
    # the y-range fits the bulk of the values; a diverged or wild value is drawn at the edge
    # (a triangle pointing off the plot) with its value written beside it
    low, high = fit_range([float(t.value) for t in done])

    def shown(value: float) -> float:
        return min(max(value, low), high)

    for name, (marker, color, filled, belongs) in groups.items():
        members = [t for t in done if belongs(TrialRecord.of(t))]
        if not members:
            continue
        inside = [t for t in members if low <= t.value <= high]
        ax.scatter([t.number for t in inside], [t.value for t in inside], marker=marker,
                   s=36, label=f"{name} ({len(members)})", zorder=3, edgecolors=color,
                   facecolors=color if filled else "none")
        for t in members:
            if low <= t.value <= high:
                continue
            edge = "^" if t.value > high else "v"
            ax.scatter([t.number], [shown(t.value)], marker=edge, s=60, color=color, zorder=4,
                       clip_on=False)
            ax.annotate(f"{t.value:.3g}", (t.number, shown(t.value)),
                        textcoords="offset points", xytext=(5, -3 if edge == "^" else 3),
                        fontsize=7, color=color)
        if not filled:
            for t in members:
                epochs = TrialRecord.of(t).epochs
                ax.annotate(str(epochs if epochs is not None else "?"),
                            (t.number, shown(t.value)), textcoords="offset points",
                            xytext=(4, 3), fontsize=7, color=color)
    full = sorted((t for t in done if TrialRecord.of(t).full_budget), key=lambda t: t.number)
    if full:
        pick = max if mode == "max" else min
        best, xs, ys = None, [], []
        for t in full:
            best = t.value if best is None else pick(best, t.value)
            xs.append(t.number)
            ys.append(best)
        ax.step(xs, [shown(y) for y in ys], where="post", color="black", lw=1.2,
                label="best at full budget so far")
    if done:
        pad = 0.06 * (high - low) if high > low else max(abs(high) * 0.05, 0.01)
        ax.set_ylim(low - pad, high + pad)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    failed = [t for t in trials if t.state == TrialState.FAIL]
    if failed:
        y = ax.get_ylim()[0]
        ax.scatter([t.number for t in failed], [y] * len(failed), marker="x", color="tab:red",
                   s=40, zorder=4, clip_on=False, label=f"failed ({len(failed)})")
    ax.set_xlabel("trial number")
    ax.set_ylabel(metric)
    ax.set_title(f"Search history ({metric}; {'higher' if mode == 'max' else 'lower'} is "
                 "better)", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def population_members(study: Any, metric: str) -> list[dict[str, Any]]:
    """A PBT study's members (its trials with a ``pbt_member`` attribute): index, final value,
    spec, exploit events and the per-epoch ``metric`` of its lineage."""
    import json

    from metasam.tuning.record import TrialRecord

    out = []
    for t in study.trials:
        if record.PBT_MEMBER not in t.user_attrs:
            continue
        rec = TrialRecord.of(t)
        out.append({"member": t.user_attrs[record.PBT_MEMBER], "value": t.value,
                    "spec": rec.spec,
                    "events": json.loads(t.user_attrs.get(record.PBT_EVENTS, "[]")),
                    "history": [{"epoch": h["epoch"], metric: h.get(metric)}
                                for h in rec.history]})
    return sorted(out, key=lambda m: m["member"])


def population_figure(members: list[dict[str, Any]], epochs: int, metric: str, mode: str,
                      title: str, axes: Any = None) -> Any:
    """Each member's ρ (and λ, where it varies) over training — step lines of its phases, the
    best member bold — above its lineage's ``metric`` per epoch (an exploited member's curve
    is its donor's before the copy)."""
    from metasam.family.spec import SharpnessSpec

    plt = pyplot()
    fig = None
    if axes is None:
        fig, axes = plt.subplots(2, 1, figsize=(6.4, 6.4), dpi=120)
    top, bottom = axes
    scored = [m for m in members if m["value"] is not None]
    pick = max if mode == "max" else min
    best = pick(scored, key=lambda m: m["value"])["member"] if scored else None
    xs = np.linspace(0.0, float(epochs), 201)
    for m in members:
        spec = SharpnessSpec.from_dict(m["spec"])
        at = [spec.at(min(x / epochs, 1.0)) for x in xs]
        rho = [0.0 if s.is_plain else s.rho for s in at]
        bold = m["member"] == best
        style = {"lw": 2.6 if bold else 1.0, "alpha": 1.0 if bold else 0.65}
        if bold:
            style["color"] = "black"
        label = f"member {m['member']} ({spec.name})" + (" — best" if bold else "")
        line = top.plot(xs, rho, drawstyle="steps-post", label=label, **style)[0]
        for e in m["events"]:
            top.axvline(e["at"] * epochs, color=line.get_color(), ls=":", lw=0.8, alpha=0.6)
        history = [h for h in m["history"] if h.get(metric) is not None]
        scale = 100.0 if metric.endswith("acc") else 1.0
        bottom.plot([h["epoch"] for h in history], [scale * h[metric] for h in history],
                    **style)
    top.set_title(f"{title}: ρ per member (dotted: exploits)", fontsize=9)
    top.set_xlabel("epoch")
    top.set_ylabel("ρ")
    top.grid(True, alpha=0.3)
    top.legend(fontsize=6)
    bottom.set_xlabel("epoch")
    bottom.set_ylabel(f"{metric}{' (%)' if metric.endswith('acc') else ''} of its lineage")
    bottom.grid(True, alpha=0.3)
    if fig is not None:
        fig.tight_layout()
    return fig if fig is not None else axes


def plot_population(study: Any, epochs: int, metric: str, mode: str, path: Path,
                    title: str) -> Path | None:
    """:func:`population_figure` of a PBT study, saved as PNG (``None`` without members)."""
    members = population_members(study, metric)
    if not members:
        return None
    return save_figure(population_figure(members, epochs, metric, mode, title), path)


def meta_figure(tasks: list[str], labels: list[str], scores: list[list[float]]) -> Any:
    """What wins where: one row per spec, one column per task, its normalized score."""
    plt = pyplot()
    data = np.array(scores, dtype=float)
    longest = max((len(label) for label in labels), default=10)
    # room for the row labels and the title; constrained layout places them (tight_layout
    # warned and cut them)
    fig, ax = plt.subplots(figsize=(max(1.6 * len(tasks) + 2.5 + 0.075 * longest, 7.5),
                                    0.45 * len(labels) + 2.2), dpi=120, layout="constrained")
    image = ax.imshow(np.ma.masked_invalid(data), cmap="RdYlGn", vmin=-1, vmax=1, aspect="auto")
    ax.set_xticks(range(len(tasks)), tasks, rotation=20, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    for i in range(len(labels)):
        for j in range(len(tasks)):
            if np.isfinite(data[i, j]):
                ax.text(j, i, f"{data[i, j]:.2f}", ha="center", va="center", fontsize=7)
    fig.colorbar(image, ax=ax, label="normalized score (1 best, 0 SGD)")
    ax.set_title("What wins where (finished studies;\n* the zero-shot portfolio)")
    return fig
