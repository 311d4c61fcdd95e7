"""The benchmark pipeline the scripts share (metasam.benchmark): its figures against scipy's
paired t-test, the points it builds, the study files it writes, and the scripts loading it
without reaching into each other."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from scipy import stats

from metasam import benchmark, presets
from metasam.tuning import StudyConfig

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ["search_benchmark", "schedule_benchmark", "quick_benchmark", "reproducibility_check",
           "learned_bias_benchmark", "meta_benchmark", "bench_schedule"]


def test_paired_figures_are_scipy_s_paired_t_test_in_points() -> None:
    a = [0.91, 0.93, 0.90, 0.95, 0.92, 0.94]
    b = [0.90, 0.91, 0.91, 0.92, 0.90, 0.93]
    d = [x - y for x, y in zip(a, b, strict=True)]
    ref = stats.ttest_rel(a, b)
    got = benchmark.paired(a, b)
    assert got["mean"] == pytest.approx(100 * sum(d) / len(d), rel=1e-12)
    assert got["p_two_sided"] == pytest.approx(float(ref.pvalue), rel=1e-9)
    assert got["p"] == pytest.approx(float(stats.ttest_rel(a, b, alternative="greater").pvalue),
                                     rel=1e-9)
    half = stats.t.ppf(0.975, len(d) - 1) * stats.sem(d)
    assert got["ci95"] == pytest.approx(100 * half, rel=1e-9)
    assert got["n"] == 6 and got["p_improvement"] == pytest.approx(5 / 6)


def test_pair_uses_the_seeds_both_have_and_refuses_too_few() -> None:
    acc = {"x": {0: 0.9, 1: 0.8, 2: 0.7, 3: 0.95}, "y": {0: 0.85, 1: 0.8, 3: 0.9}}
    got = benchmark.pair(acc, "x", "y")
    assert got is not None and got["n"] == 3   # seed 2 diverged for y
    assert got == benchmark.paired([0.9, 0.8, 0.95], [0.85, 0.8, 0.9])
    assert benchmark.pair(acc, "x", "z") is None
    assert benchmark.pair({"x": {0: 0.9}, "y": {0: 0.8}}, "x", "y") is None
    assert benchmark.ci(None) == "—"
    assert benchmark.ci({"mean": 0.2, "ci95": 0.14, "p": 0.0123}) == "+0.20 ± 0.14 (p = 0.012)"


def test_equal_points_are_trained_once_under_the_first_name() -> None:
    sam = presets.sam().to_dict()
    points = {"winner": benchmark.spec_point("winner", sam),
              "sam": benchmark.spec_point("sam", dict(reversed(list(sam.items())))),
              "sam, other lr": benchmark.spec_point("sam, other lr", sam, {"lr": 0.1}),
              "sgd": benchmark.spec_point("sgd", presets.sgd().to_dict())}
    unique, aliases = benchmark.unique_points(points)
    assert list(unique) == ["winner", "sam, other lr", "sgd"] and aliases == {"sam": "winner"}


def test_an_export_becomes_a_point_with_the_training_it_changes(tmp_path: Path) -> None:
    path = benchmark.write_study(tmp_path, "demo", benchmark.TASKS["digits-noisy"], "data",
                                 search_space=str(ROOT / "search_spaces" / "presets.yaml"),
                                 effort="quick", budget=10, seed=3)
    config = StudyConfig.from_yaml(path)
    assert (config.name, config.seed, config.train.epochs, config.train.label_noise) == \
        ("demo", 3, 10, 0.2)
    assert config.train.weight_decay == benchmark.TRAIN_DEFAULTS["weight_decay"]
    exported = {"spec": presets.asam().to_dict(),
                "base_optimizer": {"lr": config.train.lr, "weight_decay": 1e-3,
                                   "momentum": config.train.momentum, "nesterov": True}}
    point = benchmark.export_point(exported, config.train, "winner")
    assert point.label.method == "winner" and point.label.preset == "asam"
    assert point.spec == exported["spec"] and point.train == {"weight_decay": 1e-3}


def test_the_search_study_is_a_valid_study_file(tmp_path: Path) -> None:
    path = benchmark.search_study(tmp_path, "s", benchmark.TASKS["mnist1d-noisy"],
                                  ROOT / "search_spaces" / "universal-poly.yaml", "data", 1, 2)
    config = StudyConfig.from_yaml(path)
    assert config.trials == benchmark.TRIALS and config.race.budget == benchmark.RACE["budget"]


def test_an_unknown_task_is_refused_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert benchmark.task_names("x", "digits-noisy,mnist", list(benchmark.TASKS)) is None
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["x: error: --tasks: unknown task 'mnist'; allowed: digits-noisy, "
                   "mnist-S-noisy, mnist1d-noisy, cifar10-jpeg-S"]


@pytest.mark.parametrize("name", SCRIPTS)
def test_the_scripts_load_the_helper_not_each_other(name: str) -> None:
    path = ROOT / "scripts" / f"{name}.py"
    text = path.read_text()
    assert "sys.path" not in text and "from search_benchmark" not in text
    spec = importlib.util.spec_from_file_location(f"_script_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)   # every name it imports resolves
    assert callable(module.main)


def test_a_benchmark_refuses_an_unknown_task_before_it_writes_anything(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    monkeypatch.setattr("sys.argv", ["b", "--tasks", "mnist", "--out", str(out)])

    def never(*args: object) -> dict:
        raise AssertionError("no task may run")

    assert benchmark.benchmark_main("b", "demo", ["digits-noisy"], "b", tmp_path, never,
                                    lambda results: "") == 2
    assert not out.exists()
    assert capsys.readouterr().err.strip() == ("b: error: --tasks: unknown task 'mnist'; "
                                               "allowed: digits-noisy")
