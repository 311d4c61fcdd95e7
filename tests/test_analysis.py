"""Report tables with computed significance, explanations of biases, and the digits pipeline
tune → compare → report → explain as a new user runs it."""

from __future__ import annotations

import csv
import json
import math
import warnings

import numpy as np
import pytest
from scipy import stats

from metasam import presets
from metasam.analysis.explain import explain
from metasam.analysis.tables import build_table, to_csv, to_latex, to_markdown
from metasam.cli import main
from metasam.stats import Summary, welch_greater

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


def welch_by_hand(a: list[float], b: list[float]) -> float:
    """One-sided Welch p-value from its textbook formula (independent of scipy's ttest)."""
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    va = sum((x - ma) ** 2 for x in a) / (len(a) - 1)
    vb = sum((x - mb) ** 2 for x in b) / (len(b) - 1)
    se2 = va / len(a) + vb / len(b)
    t = (ma - mb) / math.sqrt(se2)
    df = se2 ** 2 / ((va / len(a)) ** 2 / (len(a) - 1) + (vb / len(b)) ** 2 / (len(b) - 1))
    return float(stats.t.sf(t, df))


def test_welch_matches_the_textbook_formula() -> None:
    a, b = [0.91, 0.92, 0.90, 0.93], [0.88, 0.90, 0.87, 0.89, 0.86]
    assert welch_greater(a, b) == pytest.approx(welch_by_hand(a, b), rel=1e-10)
    assert welch_greater(b, a) == pytest.approx(1 - welch_by_hand(a, b), rel=1e-8)
    assert math.isnan(welch_greater([0.9], b))
    # one side with the same value for every seed: defined, and quiet
    same, spread = [0.9972] * 3, [0.99, 0.994, 0.9961]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert welch_greater(same, spread) == pytest.approx(welch_by_hand(same, spread), rel=1e-6)
    s = Summary.of([1.0, 2.0, 4.0])
    assert s.mean == pytest.approx(7 / 3) and s.std == pytest.approx(math.sqrt(7 / 3))


def test_significance_marks_follow_the_samples() -> None:
    results = {"CIFAR10": {
        "sgd": [0.900, 0.905, 0.895, 0.902],
        "sam": [0.930, 0.935, 0.928, 0.933],      # clearly above SGD
        "trace_sam": [0.901, 0.899, 0.906, 0.897],  # indistinguishable from SGD
        "best": [0.950, 0.952, 0.948, 0.951],     # above SGD and above the best baseline (SAM)
    }, "CIFAR10-S": {
        "sgd": [0.70, 0.72, 0.71],
        "sam": [0.71, 0.69, 0.72],
        "best": [0.715, 0.705, 0.70],             # not significantly above SAM
    }}
    table = build_table(results)
    cell = table.cells
    assert cell[("sam", "CIFAR10")].above_sgd and not cell[("trace_sam", "CIFAR10")].above_sgd
    assert cell[("best", "CIFAR10")].above_sgd and cell[("best", "CIFAR10")].above_best_baseline
    assert cell[("best", "CIFAR10")].p_baseline == pytest.approx(
        welch_by_hand(results["CIFAR10"]["best"], results["CIFAR10"]["sam"]), rel=1e-10)
    assert not cell[("best", "CIFAR10-S")].above_best_baseline
    assert not cell[("sam", "CIFAR10-S")].above_sgd
    assert cell[("best", "CIFAR10")].best and not cell[("sam", "CIFAR10")].best
    markdown = to_markdown(table)
    assert "| metasam (best found) | **95.02 ± 0.17**<sup>\\*†</sup> |" in markdown
    assert "| SAM | 93.15 ± 0.31<sup>\\*</sup> |" in markdown
    assert "| Trace-SAM | 90.07 ± 0.39 | — |" in markdown
    latex = to_latex(table)
    assert r"\textbf{95.02 $\pm$ 0.17}$^*$$^\dagger$" in latex
    rows = list(csv.DictReader(to_csv(table).splitlines()))
    assert {r["method"] for r in rows} == {"sgd", "sam", "trace_sam", "best"}


@pytest.mark.parametrize("fields, label", [
    ({"dataset": "fashion_mnist-S-C"}, "Fashion-MNIST-S-C"),
    ({"dataset": "fashion_mnist", "subset": 0.1, "label_noise": 0.2}, "Fashion-MNIST-S-C"),
    ({"dataset": "digits", "label_noise": 0.2}, "digits-C"),
    ({"dataset": "mnist", "subset": 0.25, "label_noise": 0.4},
     "MNIST (25% subset, 40% label noise)"),
    ({"dataset": "cifar10-jpeg-S"}, "CIFAR-10 (JPEG)-S"),
    ({"dataset": "mnist1d"}, "MNIST-1D"),
])
def test_report_columns_name_the_dataset_variant(fields, label) -> None:
    from metasam.analysis.tables import column_label
    from metasam.training import TrainConfig

    train = TrainConfig(**fields)
    assert column_label(train, []) == label
    assert column_label(train, [label]) == label + "'"  # two studies of one variant


def test_explain_ranks_the_presets_correctly() -> None:
    expected = {"trace_sam": "trace", "frob_sam": "frobenius²", "det_sam": "det",
                "sam": "λ_max"}
    for preset, reference in expected.items():
        result = explain(presets.get(preset), dim=8, count=120)
        assert result.closest == reference, (preset, result.correlations)
    det = explain(presets.det_sam(), dim=8, count=60)
    assert det.scaling_exponent == pytest.approx(8, rel=0.02)
    assert det.scale_invariant
    trace = explain(presets.trace_sam(), dim=8, count=60)
    assert trace.scaling_exponent == pytest.approx(1, rel=1e-6) and not trace.scale_invariant
    assert any("tr H" in s for s in trace.sentences())


@pytest.mark.parametrize("coefficients", [[0.0, -1.0], [0.0, 1.0, -0.05]])
def test_explain_says_when_a_member_is_not_a_penalty(coefficients, tmp_path) -> None:
    """−t and t − 0.05t² (negative where it matters): S is negative and falls as curvature
    rises. No "c^nan", no "grows" for a measure that turns more negative, no reference named
    as the one it is "most like" when it orders Hessians against all of them."""
    from metasam import SharpnessSpec
    from metasam.analysis.explain import plot_explanation

    spec = SharpnessSpec(phi={"fn": "polynomial", "coefficients": coefficients},
                         measure="gaussian", name="bad")
    result = explain(spec, dim=8, count=60)
    text = " ".join(result.sentences())
    assert result.closest is None and "most like" not in text
    assert text.startswith("Not a penalty")
    assert "nan" not in text and "grows" not in text and "c^" not in text
    assert "negative throughout" in text and "opposite to tr H" in text
    # the figure draws S along the scaled spectra, signed, next to the four references
    import numpy as np

    from metasam.analysis.explain import REFERENCE_NAMES, explanation_figure

    fig = explanation_figure(result)
    scaled = fig.axes[0]
    lines = {line.get_label(): line for line in scaled.get_lines()}
    curve = next(line for name, line in lines.items() if name.startswith("S (bad), signed"))
    values = result.curves["scaled"]
    mid = len(values) // 2
    np.testing.assert_allclose(curve.get_ydata(), values / abs(values[mid]))
    assert scaled.get_yscale() == "symlog"  # S is negative: a signed axis, not a log one
    for name in REFERENCE_NAMES.values():
        assert lines[name].get_ydata()[mid] == pytest.approx(1.0)  # normalized at c = 1
    assert "not a penalty" in fig._suptitle.get_text()
    assert plot_explanation(result, tmp_path / "bad.png").is_file()


def _scalars(logdir, tag: str) -> dict[str, dict[int, float]]:
    """Each TensorBoard run under ``logdir``: its ``tag`` by step, read with TensorBoard's
    own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = {}
    for run in sorted(p for p in logdir.iterdir() if p.is_dir()):
        events = EventAccumulator(str(run))
        events.Reload()
        if tag in events.Tags()["scalars"]:
            out[run.name] = {e.step: e.value for e in events.Scalars(tag)}
    return out


def test_digits_pipeline_tune_compare_report_explain(tmp_path, ray_cluster, capsys,
                                                     monkeypatch) -> None:
    import yaml
    from _util import write_study

    path = write_study(tmp_path, name="pipeline", trials=5, epochs=3,
                       race={"top_k": 1, "budget": 6, "first": 2, "confirm_budget": 8},
                       space={
        "presets": ["sgd", "sam"],
        "search": {"measure": {"kinds": ["gaussian"]},
                   "phi": {"polynomial": {"outputs": [1], "degree": [1, 1],
                                          "coefficients": [0.5, 1.0]}},
                   "psi": ["identity"], "rho": [0.01, 0.1], "lam": [0.1, 0.5]}})
    study = yaml.safe_load(path.read_text())
    study["train"].update(sharpness_examples=128, sharpness_probes=4)
    path.write_text(yaml.safe_dump(study))
    assert main(["tune", str(path), "--address", ray_cluster, "--quiet"]) == 0
    closing = capsys.readouterr().out.strip().splitlines()
    # tune's closing summary: the race's winner, the confirmation (4 fresh instances: 8 runs
    # of the winner and the one it is compared with), the verdicts — each on the fresh
    # instances, Holm-adjusted — what "with confidence" means, then the study's cost
    winner_line = next(i for i, line in enumerate(closing) if line.startswith("winner: "))
    assert "over 2 race instances" in closing[winner_line]
    assert any(line.startswith("confirmation: 4 fresh instances") for line in closing)
    verdicts = [line for line in closing if line.startswith("verdict ")]
    assert len(verdicts) == 1 and verdicts[0].split(" (")[0] in (
        "verdict against SGD", "verdict against SAM at its default")
    assert "4 fresh instances" in verdicts[0] and "Holm-adjusted over 1" in verdicts[0]
    assert closing[-2].startswith("'with confidence': the chance that any of these 1 verdicts")
    assert closing[-1].startswith("cost: ") and "race 6.0 over 6 runs" in closing[-1]
    assert "confirmation 8.0 over 8 runs" in closing[-1]
    # tune again on the finished study: the same verdict, nothing announced, no Ray started
    import ray

    with monkeypatch.context() as patch:
        patch.setattr(ray, "init", lambda *a, **k: (_ for _ in ()).throw(
            AssertionError("Ray was started")))
        assert main(["tune", str(path), "--address", ray_cluster]) == 0
    again = capsys.readouterr()
    assert again.out.strip().splitlines()[-4:] == closing[-4:]
    assert "racing" not in again.err and "confirming" not in again.err
    # every tuning trial's and race run's per-epoch val_acc in TensorBoard, as stored
    from metasam.tuning import StudyConfig
    from metasam.tuning.storage import load_study as stored

    config = StudyConfig.from_yaml(path)
    board = tmp_path / "tensorboard"
    trials = config.load_study().trials
    logged = _scalars(board / "pipeline", "val_acc")
    assert set(logged) <= {f"t{t.number:03d}" for t in trials}
    for t in trials:   # every epoch the study kept (ASHA's stop drops the last) is logged
        if t.intermediate_values:
            run = logged[f"t{t.number:03d}"]
            assert set(run) <= {1, 2, 3} and set(t.intermediate_values) <= set(run)
            assert {e: run[e] for e in t.intermediate_values} == pytest.approx(
                t.intermediate_values, rel=1e-6), t.number
    assert sum(bool(t.intermediate_values) for t in trials) >= 4
    race = stored(config.storage, "pipeline.race").trials
    logged = _scalars(board / "pipeline.race", "val_acc")
    assert len(logged) == len(race) == 6
    assert sorted(v[3] for v in logged.values()) == pytest.approx(
        sorted(t.value for t in race), rel=1e-6)      # each run's last epoch is its value
    # the report from the tuning study alone: the page, verdict first, no test tables yet
    early = tmp_path / "early"
    assert main(["report", str(path), "--out", str(early)]) == 0
    said = capsys.readouterr().out
    page = (early / "pipeline.html").read_text()
    assert "pipeline: Winner " in said and not (early / "report.md").exists()
    sections = [page.index(f'<h2 id="{a}">') for a in ("verdict", "race", "search", "cost",
                                                        "test-set-compare")]
    assert sections == sorted(sections) and "Not run yet: <code>metasam compare" in page
    assert 'src="data:image/png;base64,' in page and "http" not in page.split("<main>")[1]
    from metasam.decision.stage import race_verdict

    verdict = race_verdict(StudyConfig.from_yaml(path))
    assert verdict is not None and verdict.winner.candidate.name in page
    assert page.count("<tr>") >= len(verdict.standings) + len(verdict.against)
    from metasam.analysis.browser import element_bottom, find_browser, screenshot

    if find_browser() is not None:   # the verdict on a reader's first screen, in Chromium
        assert element_bottom(early / "pipeline.html", "verdict-box") <= 900
        shot = screenshot(early / "pipeline.html", tmp_path / "shot.png")
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert int.from_bytes(shot.read_bytes()[16:24][:4], "big") == 1280   # IHDR width
    assert main(["compare", str(path), "--seeds", "2", "--address", ray_cluster, "--quiet",
                 "--sharpness-every", "3"]) == 0
    capsys.readouterr()
    out = tmp_path / "report"
    assert main(["report", str(path), "--out", str(out)]) == 0
    page = (out / "pipeline.html").read_text()
    assert "Not run yet" not in page and "<td>SGD</td>" in page
    markdown = (out / "report.md").read_text()
    for name in ("SGD", "SAM", "ASAM", "SSAM-F", "Trace-SAM", "Frob-SAM", "Det-SAM"):
        assert f"| {name} |" in markdown
    # the search's row names what the race chose
    from metasam.decision.export import best_optimizer

    winner = best_optimizer(StudyConfig.from_yaml(path))
    assert winner["verdict"] is not None and winner["verdict"]["instances"] == 2
    assert f"| metasam (best found = {winner['name']}) |" in markdown
    assert (out / "report.tex").read_text().startswith(r"\begin{tabular}")
    for png in ("pipeline-test-accuracy.png", "pipeline-sharpness.png",
                "pipeline-search-history.png"):
        assert (out / png).is_file(), png
    # what the plots draw: every method's mean test accuracy per epoch over its 2 seeds, and
    # every trial of the search
    from metasam.analysis.plots import search_history_figure, test_accuracy_figure
    from metasam.analysis.runs import collect

    config = StudyConfig.from_yaml(path)
    runs = collect(config)
    lines = test_accuracy_figure(runs, "t", winner["name"]).axes[0].get_lines()
    drawn = [line for line in lines if line.get_label().endswith("(n=2)")]
    assert len(drawn) == len(runs) == 8
    sgd_line = next(line for line in drawn if line.get_label() == "SGD (n=2)")
    final = [r["history"][-1]["test_acc"] for r in runs["sgd"]]
    assert sgd_line.get_ydata()[-1] == pytest.approx(100 * sum(final) / len(final))
    history = search_history_figure(config.load_study(), "val_acc", "max").axes[0]
    counts = [int(label.rpartition("(")[2].rstrip(")"))
              for label in history.get_legend_handles_labels()[1] if label.endswith(")")]
    assert sum(counts) == 5
    compute = (out / "compute.md").read_text()
    # the compute table speaks the reader's names, the winner's included
    assert "| digits | Frob-SAM | 3 |" in compute and "| digits | SGD | 1 |" in compute
    assert f"| digits | metasam (best found = {winner['name']}) |" in compute
    assert "| frob_sam |" not in compute
    assert "The search's Pareto front" in compute and "| digits | #0 | " in compute
    assert (out / "pipeline-cost.png").stat().st_size > 20_000
    assert main(["best", str(path)]) == 0
    capsys.readouterr()
    # one storage per command: best, trials and report each build at most two (one engine
    # and connection pool each), however many reads they make
    import optuna.storages

    from metasam.tuning import storage as storages

    built: list[str] = []
    original = optuna.storages.RDBStorage.__init__

    def counting(self, url, *args, **kwargs):
        built.append(url)
        original(self, url, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(optuna.storages.RDBStorage, "__init__", counting)
        for command in (["best", str(path)], ["trials", str(path)],
                        ["report", str(path), "--out", str(tmp_path / "again"), "--no-html"]):
            storages._OPEN.clear()
            built.clear()
            assert main(command) == 0
            assert 1 <= len(built) <= 2, (command[0], len(built))
    capsys.readouterr()
    best = path.with_name("pipeline.best.json")
    assert main(["explain", str(best), "--json", "--plot", str(tmp_path / "e.png"),
                 "--spectra", "40"]) == 0
    explained = json.loads(capsys.readouterr().out)
    # the closest reference is the one whose rank correlation the command reports highest
    # (and above 0.3), named in the summary; each preset's own reference is tested above
    spearman = {k: v if v == v else -2.0 for k, v in explained["spearman"].items()}  # NaN: last
    top = max(spearman, key=spearman.get)
    assert explained["closest"] == (top if spearman[top] > 0.3 else None)
    assert set(spearman) == {"trace", "frobenius²", "det", "λ_max"}
    assert len(explained["summary"]) == 4 and (tmp_path / "e.png").stat().st_size > 20_000


def test_tuned_baselines_pick_each_methods_best_grid_point(tmp_path, ray_cluster,
                                                          monkeypatch) -> None:
    from _util import write_study

    from metasam.decision import compare
    from metasam.tuning import StudyConfig
    from metasam.tuning.record import TrialRecord
    from metasam.tuning.storage import census, load_study

    # λ = 3 makes Trace-SAM's regularizer dominate: the grid must pick the other value.
    monkeypatch.setattr(compare, "BASELINE_SPACE", {
        "presets": ["sgd", "sam", "asam", "ssam", "frob_sam", "det_sam"],
        "points": [{"preset": "trace_sam", "lam": [3.0, 0.01]}]})
    config = StudyConfig.from_yaml(write_study(tmp_path, name="grid", trials=1, epochs=3))
    chosen = compare.tune_baselines(config, ray_cluster, verbose=0)
    assert set(chosen) == set(compare.BASELINES)
    trials = census(load_study(config.storage, "grid.baselines")).counted
    assert len(trials) == len(compare.BASELINES) + 1
    values = {TrialRecord.of(t).name: t.value for t in trials}
    best_label = max(("trace_sam lam=3.0", "trace_sam lam=0.01"), key=values.get)
    assert chosen["trace_sam"].label.method == f"trace_sam (tuned: {best_label})"
    assert chosen["trace_sam"].spec["lam"] == {"trace_sam lam=3.0": 3.0,
                                               "trace_sam lam=0.01": 0.01}[best_label]
    assert chosen["sgd"].label.method == "sgd (tuned: sgd)"


def test_test_accuracy_plot_zooms_on_the_end_and_keeps_a_tied_winner_visible() -> None:
    from metasam.analysis.plots import test_accuracy_figure

    def runs(final: float) -> list[dict]:
        # rises from about 20% and levels off at `final`
        return [{"history": [{"epoch": e, "test_acc": final - (final - 0.2) * 2.0 ** (2 - 2 * e)
                              + 0.001 * s} for e in range(1, 10)]} for s in range(3)]

    data = {"sgd": runs(0.84), "sam": runs(0.85), "best": runs(0.85)}  # best = SAM's curve
    fig = test_accuracy_figure(data, "t", best_name="sam ρ=0.05")
    full, zoom = fig.axes
    lines = {line.get_label(): line for line in full.get_lines()}
    best = lines["metasam (best found = sam ρ=0.05) (n=3)"]
    sam = lines["SAM (n=3)"]
    assert best.get_zorder() < sam.get_zorder() and best.get_linestyle() == "--"
    assert best.get_linewidth() > sam.get_linewidth()  # its outline shows around SAM's line
    low, high = zoom.get_ylim()
    assert high - low < 5 and low > 80  # the last third only: 84-85%, not 20-85%
    assert full.get_ylim()[0] < 30


def test_search_history_marks_kinds_budgets_and_failures() -> None:
    import optuna

    from metasam.analysis.plots import search_history_figure

    study = optuna.create_study(direction="maximize")
    for label, value, epochs, full in (("sgd", 0.80, 9, True), ("search", 0.83, 9, True),
                                       ("search", 0.78, 6, False)):
        trial = study.ask()
        for key, attr in (("label", label), ("epochs", epochs), ("full_budget", full)):
            trial.set_user_attr(key, attr)
        study.tell(trial, value)
    failed = study.ask()
    failed.set_user_attr("label", "search")
    study.tell(failed, state=optuna.trial.TrialState.FAIL)
    ax = search_history_figure(study, "val_acc", "max").axes[0]
    labels = ax.get_legend_handles_labels()[1]
    for name in ("reference point, full budget (1)", "searched, full budget (1)",
                 "searched, stopped early (label: epochs) (1)", "failed (1)",
                 "best at full budget so far"):
        assert name in labels, labels
    assert [t.get_text() for t in ax.texts] == ["6"]  # the stopped trial's epochs


def test_cost_plot_draws_the_methods_pareto_front() -> None:
    from metasam.analysis.plots import cost_figure

    def runs(acc: float, evals: int) -> list[dict]:
        return [{"test_acc": acc + 0.001 * s, "grad_evals": evals} for s in range(3)]

    data = {"sgd": runs(0.90, 100), "sam": runs(0.93, 200), "trace_sam": runs(0.92, 200),
            "frob_sam": runs(0.91, 300), "best": runs(0.95, 200)}
    ax = cost_figure(data, "t", best_name="sam ρ=0.1").axes[0]
    front = next(line for line in ax.get_lines() if line.get_label() == "Pareto front")
    # SGD, then the best of the 200-pass methods (the winner); Frob-SAM costs more for less
    assert list(front.get_xdata()) == [100, 200]
    assert [round(y, 2) for y in front.get_ydata()] == [90.1, 95.1]


def test_search_history_keeps_every_trial_visible_beside_one_diverged_value() -> None:
    import optuna

    from metasam.analysis.plots import search_history_figure

    study = optuna.create_study(direction="minimize")
    losses = [0.62, 0.58, 0.60, 0.55, 12.3, 0.57, 0.61]  # trial 4 diverged to 12.3
    for number, value in enumerate(losses):
        trial = study.ask()
        label = "sgd" if number == 0 else "search"
        for key, attr in (("label", label), ("epochs", 9), ("full_budget", True)):
            trial.set_user_attr(key, attr)
        study.tell(trial, value)
    ax = search_history_figure(study, "val_loss", "min").axes[0]
    low, high = ax.get_ylim()
    # the scale fits the six ordinary values, which stay apart (0.55–0.62 spans most of it)
    assert low < 0.55 and 0.62 < high < 1.0
    assert (0.62 - 0.55) / (high - low) > 0.6
    # the diverged value sits at the top edge, marked and labelled with its value
    assert "12.3" in [t.get_text() for t in ax.texts]
    edge = [c for c in ax.collections if c.get_offsets().shape[0] == 1
            and c.get_offsets()[0][0] == 4]
    assert edge and edge[0].get_offsets()[0][1] == pytest.approx(0.62)
    assert all(float(t).is_integer() for t in ax.get_xticks())


def test_accuracy_bands_stay_within_100_and_epochs_are_whole_numbers() -> None:
    from metasam.analysis.plots import test_accuracy_figure

    def runs(final: float, spread: float) -> list[dict]:
        return [{"history": [{"epoch": e, "test_acc": min(1.0, final - 0.3 / e + spread * s)}
                             for e in range(1, 9)]} for s in (-1, 0, 1)]

    fig = test_accuracy_figure({"sgd": runs(0.985, 0.02), "sam": runs(0.99, 0.015)}, "t")
    full, zoom = fig.axes
    for ax in (full, zoom):
        for band in ax.collections:  # the ±std bands
            ys = np.concatenate([p.vertices[:, 1] for p in band.get_paths()])
            assert ys.max() <= 100.0 + 1e-9
        assert all(float(t).is_integer() for t in ax.get_xticks())
    assert zoom.get_ylim()[1] <= 100.0 and full.get_ylim()[1] <= 100.0
    assert zoom.get_xlim() == (6.0, 8.0)
