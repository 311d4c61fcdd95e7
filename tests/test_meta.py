"""Meta-learning building blocks: portfolio selection against brute force on regret tables
whose optimum is known, bounding boxes, similarity weights, and deterministic descriptors."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from metasam.meta import bounding_box, describe_task, greedy_portfolio, similarity_weights


def _loss(regret, chosen, weights):
    return sum(w * min(row[c] for c in chosen) for row, w in zip(regret, weights))


def test_greedy_portfolio_finds_the_known_optimum() -> None:
    """Three task clusters of sizes 3, 2 and 1, each with one specialist that has (almost) zero
    regret there: the optimal portfolio of 3 is the three specialists, picked biggest cluster
    first; the optimal single choice is an all-rounder when one is better on average."""
    regret = [[0.0, 0.9, 0.9], [0.0, 0.9, 0.8], [0.1, 0.8, 0.9],
              [0.9, 0.0, 0.9], [0.8, 0.0, 0.9],
              [0.9, 0.9, 0.0]]
    assert greedy_portfolio(regret, 3) == [0, 1, 2]
    assert _loss(regret, [0, 1, 2], [1] * 6) == pytest.approx(0.1)
    assert greedy_portfolio(regret, 1) == [0]
    with_all_rounder = [row + [0.4] for row in regret]
    assert greedy_portfolio(with_all_rounder, 1) == [3]
    # weights: only the tasks of the second cluster count -> its specialist alone
    assert greedy_portfolio(regret, 1, [0, 0, 0, 0.5, 0.5, 0]) == [1]


def test_greedy_portfolio_is_near_brute_force_on_random_tables() -> None:
    rng = random.Random(0)
    for _ in range(30):
        regret = [[rng.random() for _ in range(7)] for _ in range(6)]
        weights = [1 / 6] * 6
        chosen = greedy_portfolio(regret, 3, weights)
        best = min(_loss(regret, c, weights) for c in itertools.combinations(range(7), 3))
        # submodular coverage: greedy within 1 − 1/e of the optimal *improvement*
        start = 1.0  # the empty portfolio: every task at the worst regret
        assert start - _loss(regret, chosen, weights) >= (1 - 1 / math.e) * (start - best) - 1e-12
    assert greedy_portfolio([[math.nan, 0.5]], 1) == [1]  # not evaluated counts as regret 1


def test_bounding_box_holds_every_prior_winner() -> None:
    winners = [{"rho": 0.05, "lam": 1.0}, {"rho": 0.2, "lam": 0.3}, {"rho": 0.01}]
    box = bounding_box(winners, log_keys=("rho", "lam"), margin=0.1)
    for w in winners:
        for key, value in w.items():
            low, high = box[key]
            assert low <= value <= high
    assert box["rho"][0] < 0.01 and box["rho"][1] > 0.2  # widened in log space
    assert bounding_box(winners, log_keys=("rho",))["rho"] == pytest.approx((0.01, 0.2))


def test_similarity_weights_prefer_the_nearer_task() -> None:
    weights = similarity_weights([0.0, 1.0], [[0.1, 1.0], [5.0, -3.0], [0.0, 1.2]])
    assert weights[0] > weights[1] and weights[2] > weights[1]
    assert sum(weights) == pytest.approx(1.0)


def test_descriptors_are_deterministic_for_a_seed() -> None:
    from metasam.training import TrainConfig

    train = TrainConfig(dataset="digits", model="mlp", label_noise=0.2, device="cpu")
    a, b = describe_task(train, seed=1, epochs=1), describe_task(train, seed=1, epochs=1)
    assert a == b
    assert a.classes == 10 and a.input_size == 64 and a.examples > 1000
    assert a.trace > 0 and a.frob > 0
    # the gradient noise scale B·tr Σ/‖g‖², recomputed here from the same initial model and
    # batches: per-batch gradients by plain backward, the covariance's trace by numpy
    import numpy as np
    import torch
    import torch.nn.functional as F

    from metasam.training import Trial

    trial = Trial(train.replace(preset="sgd", epochs=1, seed=1, test="none"))
    model, data, batch = trial.model.eval(), trial.splits.train, trial.config.batch_size
    gen = torch.Generator().manual_seed(1)
    grads = []
    for _ in range(8):
        index = torch.randperm(len(data), generator=gen)[:batch]
        model.zero_grad()
        F.cross_entropy(model(data.normalize(data.x[index])), data.y[index]).backward()
        grads.append(np.concatenate([p.grad.numpy().ravel() for p in model.parameters()]))
    g = np.asarray(grads, dtype=np.float64)
    trace_sigma = batch * np.var(g, axis=0, ddof=1).sum()
    assert a.noise_scale == pytest.approx(trace_sigma / (g.mean(0) ** 2).sum(), rel=1e-4)
    c = describe_task(train, seed=2, epochs=1)
    assert c.noise_scale != a.noise_scale


def _prior_studies(tmp_path):
    """Two finished studies (as their storages hold them) with stored task descriptors."""
    import json as _json

    from _util import write_study

    from metasam import presets
    from metasam.meta.descriptors import TaskDescriptor
    from metasam.tuning import StudyConfig, record
    from metasam.tuning.storage import open_storage, open_study

    configs = []
    for name, values in (("a", {"sgd": 0.80, "sam": 0.90, "frob_sam": 0.85}),
                         ("b", {"sgd": 0.60, "sam": 0.62, "frob_sam": 0.70})):
        config = StudyConfig.from_yaml(write_study(tmp_path / name, name=name))
        study = open_study(open_storage(config.storage), config.name, config.mode)
        descriptor = TaskDescriptor(1000, 10, 64, 5000, 0.1 + len(configs), 50.0, 3.0, 9.0)
        study.set_user_attr(record.DESCRIPTOR, _json.dumps(descriptor.to_dict()))
        for label, value in values.items():
            trial = study.ask()
            for key, attr in (("label", label), ("full_budget", True), ("epochs", 3),
                              ("spec", _json.dumps(presets.get(label).to_dict()))):
                trial.set_user_attr(key, attr)
            study.tell(trial, value)
        configs.append(config)
    return configs


def test_knowledge_base_normalizes_each_study_by_its_sgd_and_best(tmp_path) -> None:
    from metasam.meta.knowledge import knowledge_base, regret_table

    configs = _prior_studies(tmp_path)
    records = knowledge_base(configs, describe=False)
    scores = {(r.task, r.label): round(r.score, 6) for r in records}
    assert scores == {("a", "sgd"): 0.0, ("a", "sam"): 1.0, ("a", "frob_sam"): 0.5,
                      ("b", "sgd"): 0.0, ("b", "sam"): 0.2, ("b", "frob_sam"): 1.0}
    assert all(r.descriptor is not None and r.descriptor.classes == 10 for r in records)
    tasks, keys, table = regret_table(records)
    assert tasks == ["a", "b"] and len(keys) == 3  # the presets match across studies
    assert not any(math.isnan(v) for row in table for v in row)


def test_a_cost_aware_prior_is_normalized_by_its_metric(tmp_path) -> None:
    """A cost-aware study ranks by val_acc − w·passes; what it teaches is val_acc."""
    import json as _json

    from _util import write_study

    from metasam import presets
    from metasam.meta.knowledge import knowledge_base
    from metasam.tuning import StudyConfig
    from metasam.tuning.storage import open_storage, open_study

    config = StudyConfig.from_yaml(write_study(tmp_path / "c", name="c", cost={"weight": 0.1}))
    study = open_study(open_storage(config.storage), config.name, config.mode)
    for label, acc, passes in (("sgd", 0.80, 1), ("sam", 0.90, 2), ("frob_sam", 0.85, 2)):
        trial = study.ask()
        for key, attr in (("label", label), ("full_budget", True), ("epochs", 3),
                          ("spec", _json.dumps(presets.get(label).to_dict())),
                          ("val_acc", acc)):
            trial.set_user_attr(key, attr)
        study.tell(trial, acc - 0.1 * passes)  # the cost-aware score: SGD "best" at 0.70
    scores = {r.label: round(r.score, 6) for r in knowledge_base([config], describe=False)}
    assert scores == {"sgd": 0.0, "sam": 1.0, "frob_sam": 0.5}


def test_meta_command_shows_what_wins_where(tmp_path, capsys) -> None:
    from metasam.cli import main

    a, b = _prior_studies(tmp_path)
    plot = tmp_path / "meta.png"
    assert main(["meta", str(a.path), str(b.path), "-k", "1", "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "a " in out and "sam" in out and "frob_sam" in out
    assert "* frob_sam" in out  # the best single spec over both tasks (regret 0.25 on average)
    assert plot.is_file()
    # the plot shows what the table says: one row per spec, its score on each task
    from metasam.analysis.plots import meta_figure

    fig = meta_figure(["a", "b"], ["* frob_sam", "sam"], [[0.5, 1.0], [1.0, 0.2]])
    ax = fig.axes[0]
    assert ax.images[0].get_array().tolist() == [[0.5, 1.0], [1.0, 0.2]]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["* frob_sam", "sam"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b"]
    assert sorted(t.get_text() for t in ax.texts) == ["0.20", "0.50", "1.00", "1.00"]
    # a long label and the title stay inside the figure, with no layout warning
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = meta_figure(["a", "b"], ["* universal #11 (μ=sphere*T φ=(+0.65t^1+0.84t^2) ψ=root "
                                       "n=2 ρ=0.0762 λ=0.163 rel)", "sam"],
                          [[0.5, 1.0], [1.0, 0.2]])
        fig.canvas.draw()
    box = fig.get_window_extent()
    for text in [*fig.axes[0].get_yticklabels(), fig.axes[0].title]:
        extent = text.get_window_extent()
        assert extent.x0 >= box.x0 and extent.x1 <= box.x1, text.get_text()
    assert main(["meta", str(a.path), "--json"]) == 0
    data = __import__("json").loads(capsys.readouterr().out)
    assert data["tasks"]["a"]["best"] == "sam" and data["portfolio"][0]["label"] == "sam"


def test_tune_meta_evaluates_the_portfolio_first(tmp_path, ray_cluster, capsys) -> None:
    """A study file's meta section (a knowledge file; `--meta-k` overriding its k): the
    portfolio runs before the reference points, and the race runs only its candidates."""
    import dataclasses

    from _util import write_study

    from metasam import presets
    from metasam.cli import main
    from metasam.meta.knowledge import knowledge_base, write_knowledge
    from metasam.tuning import StudyConfig
    from metasam.tuning.record import TrialRecord
    from metasam.tuning.storage import load_study
    from metasam.tuning.trials import Label, Role

    priors = _prior_studies(tmp_path)
    records = knowledge_base(priors, describe=False)
    # a spec that never runs in the new study, so never among its finalists
    extra = dataclasses.replace(records[0], label="det_sam", spec=presets.det_sam().to_dict(),
                                score=0.95)
    write_knowledge([*records, extra], tmp_path / "kb.json")
    path = write_study(tmp_path / "new", name="new", trials=3, epochs=1, concurrency=1,
                       meta={"from": ["../kb.json"], "k": 2},
                       race={"top_k": 1, "budget": 6, "first": 2, "confirm_budget": 0})
    assert main(["tune", str(path), "--address", ray_cluster, "--quiet", "--meta-k", "1"]) == 0
    said = capsys.readouterr().err
    assert "learning from 2 prior task(s)" in said and "portfolio: b:frob_sam;" in said
    assert "50% of region trials within the winners' boxes of" in said
    target = StudyConfig.from_yaml(path)
    trials = load_study(target.storage, target.name).get_trials(deepcopy=False)
    first = TrialRecord.of(trials[0])
    # sgd and sam are the new space's reference points: the portfolio adds Frob-SAM first
    assert first.label == Label(Role.META, "b:frob_sam", preset="frob_sam")
    assert first.spec == presets.frob_sam().to_dict()
    assert [TrialRecord.of(t).label for t in trials[1:]] == [
        Label(Role.REFERENCE, name, preset=name) for name in ("sgd", "sam")]
    assert "metasam:descriptor" in load_study(target.storage, target.name).user_attrs
    # the race learns nothing from priors: its candidates × instances, nothing else
    race = load_study(target.storage, f"{target.name}.race").get_trials(deepcopy=False)
    assert race and all(TrialRecord.of(t).label.role is Role.RACE for t in race)
    assert {TrialRecord.of(t).label.trial for t in race} == {0, 1, 2}


def test_boxed_sampling_keeps_the_full_space_reachable() -> None:
    """With boxes learned from prior winners, a share box_p of the trials (fixed by the trial
    number) samples the region's fields within the box, the rest over the whole region."""
    import dataclasses

    import optuna

    from metasam.tuning import SearchSpace
    from metasam.tuning.member_sampling import RegionBoxes
    from metasam.tuning.regions import REGIONS

    space = SearchSpace.from_dict({"search": {"members": ["sam"], "region": 4.0}})
    box = {"rho": (0.04, 0.06)}
    boxed_space = dataclasses.replace(space, boxes=RegionBoxes({"sam": box}, 0.7))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    inside = outside = 0
    full = REGIONS["sam"].ranges(4.0)["rho"]
    for _ in range(60):
        trial = study.ask()
        rho = __import__("json").loads(__import__("json").dumps(
            boxed_space.sample(trial)["spec"]))["rho"]
        if "sam_rho_box" in trial.params:
            assert 0.04 <= rho <= 0.06
            inside += 1
        else:
            assert full[0] <= rho <= full[1]
            outside += 1
        study.tell(trial, 0.0)
    assert 0.5 < inside / 60 < 0.9 and outside > 0
    # without boxes, sampling is what it was (no box parameter ever)
    plain = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = plain.ask()
    space.sample(trial)
    assert set(trial.params) == {"sam_rho"}


def test_region_boxes_hold_the_prior_winners(tmp_path) -> None:
    from metasam.meta.knowledge import knowledge_base
    from metasam.meta.transfer import region_boxes

    priors = _prior_studies(tmp_path)  # winners: sam on a, frob_sam on b (their defaults)
    records = knowledge_base(priors, describe=False)
    boxes = region_boxes(records, top=0.9)
    assert set(boxes) == {"sam", "frob_sam"}
    low, high = boxes["sam"]["rho"]
    assert low <= 0.05 <= high
    low, high = boxes["frob_sam"]["lam"]
    assert low <= 0.005 <= high
    assert high / low >= 2.25 - 1e-9  # a single winner still leaves room to search
    # only the given (similar) tasks' winners make boxes
    assert set(region_boxes(records, {"a"}, top=0.9)) == {"sam"}
    assert set(region_boxes(records, {"b"}, top=0.9)) == {"frob_sam"}


def test_task_kernel_takes_the_median_distance_as_bandwidth() -> None:
    """The nearer half of the priors lie within one bandwidth (kernel ≥ e^−½), the farther half
    outside; rescaling a feature (its units) changes nothing."""
    from metasam.meta.portfolio import SIMILAR, task_kernel

    target = [0.0, 0.0]
    priors = [[0.1, 0.0], [0.5, 0.2], [2.0, 1.0], [4.0, -2.0], [9.0, 3.0]]
    kernel = task_kernel(target, priors)
    assert [k >= SIMILAR - 1e-12 for k in kernel] == [True, True, True, False, False]
    assert kernel[2] == pytest.approx(SIMILAR)  # the median distance itself
    scaled = task_kernel([0.0, 0.0], [[1000 * a, b] for a, b in priors])
    assert scaled == pytest.approx(kernel)
    # z-scored distances by hand for the first prior
    rows = [target, *priors]
    z = []
    for j in range(2):
        column = [r[j] for r in rows]
        mean = sum(column) / len(column)
        std = math.sqrt(sum((v - mean) ** 2 for v in column) / len(column))
        z.append([(v - mean) / std for v in column])
    distances = sorted(math.dist([z[0][0], z[1][0]], [z[0][i], z[1][i]]) for i in range(1, 6))
    first = math.dist([z[0][0], z[1][0]], [z[0][1], z[1][1]])
    assert kernel[0] == pytest.approx(math.exp(-0.5 * (first / distances[2]) ** 2))


def test_knowledge_file_round_trip_and_study_file_meta_section(tmp_path) -> None:
    """`metasam meta --save` keeps the base in a file that reads back to the same records; a
    study file's meta section (relative paths) resolves to it."""
    import yaml
    from _util import write_study

    from metasam.cli import main
    from metasam.meta.knowledge import knowledge_base, load_priors, read_knowledge
    from metasam.tuning import StudyConfig
    from metasam.tuning.study_config import MetaSettings

    a, b = _prior_studies(tmp_path)
    saved = tmp_path / "kb.json"
    assert main(["meta", str(a.path), str(b.path), "--save", str(saved),
                 "--plot", str(tmp_path / "m.png")]) == 0
    assert read_knowledge(saved) == knowledge_base([a, b], describe=False)
    mixed = load_priors([str(saved), str(a.path)], "meta")
    assert len(mixed) == 6 + 3  # both studies' trials from the file, a's again from its study
    path = write_study(tmp_path / "new", name="new", meta={"from": ["../kb.json"], "k": 2})
    config = StudyConfig.from_yaml(path)
    assert config.meta == MetaSettings((str(saved.resolve()),), 2, 0.5)
    assert "meta" in yaml.safe_load(path.read_text())
    assert not any("meta" in key for key in config.definition())  # not part of what is stored


def test_plan_transfer_boxes_only_the_similar_priors_winners(tmp_path) -> None:
    """With a target whose descriptor is a's, a is the similar prior (b the farther half): the
    boxes hold a's winner only, while the portfolio still weighs both tasks."""
    import json as _json

    from _util import write_study

    from metasam.meta.descriptors import TaskDescriptor
    from metasam.meta.knowledge import knowledge_base
    from metasam.meta.transfer import plan_transfer
    from metasam.tuning import StudyConfig, record
    from metasam.tuning.storage import open_storage, open_study

    priors = _prior_studies(tmp_path)  # a: gap 0.1 (sam wins), b: gap 1.1 (frob_sam wins)
    config = StudyConfig.from_yaml(write_study(tmp_path / "t", name="t"))
    study = open_study(open_storage(config.storage), config.name, config.mode)
    near_a = TaskDescriptor(1000, 10, 64, 5000, 0.15, 50.0, 3.0, 9.0)
    study.set_user_attr(record.DESCRIPTOR, _json.dumps(near_a.to_dict()))
    plan = plan_transfer(config, study, knowledge_base(priors, describe=False), k=1)
    assert plan.similar == ["a"] and plan.similarity["a"] > plan.similarity["b"]
    assert set(plan.boxes) == {"sam"}
    # sgd and sam are the target's reference points: frob_sam (regret 0.5 on a, 0 on b) is the
    # best spec left, named after the task where it won
    assert [p.label.method for p in plan.points] == ["b:frob_sam"]
