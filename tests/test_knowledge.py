"""The shipped knowledge base and the zero-shot recommendation: the file is read back whole, a
corrupt, foreign or newer one is refused in one line, the ranking weighs the base's tasks by a
kernel on standardized descriptors (checked against a hand computation), and a task unlike
every base task falls back to the global ranking."""

from __future__ import annotations

import json
import math

import pytest

from metasam.errors import ConfigError
from metasam.meta.base import FORMAT, KnowledgeBase, TaskEntry, parse_base, shipped_base
from metasam.meta.descriptors import TaskDescriptor
from metasam.meta.recommend import FAR, recommend


def _descriptor(examples: int, gap: float) -> TaskDescriptor:
    return TaskDescriptor(examples=examples, classes=10, input_size=64, params=1000, gap=gap,
                          noise_scale=10.0, trace=1.0, frob=1.0)


def _base() -> KnowledgeBase:
    """Three tasks: on the two noisy ones (large gap) the ramp wins, on the clean one SAM."""
    tasks = [TaskEntry("noisy-a", {}, _descriptor(1000, 0.30), [0, 1],
                       {"ramp": [0.92, 0.93], "sam": [0.90, 0.91]}),
             TaskEntry("noisy-b", {}, _descriptor(1200, 0.28), [0, 1],
                       {"ramp": [0.81, 0.83], "sam": [0.80, 0.80]}),
             TaskEntry("clean", {}, _descriptor(5000, 0.01), [0, 1],
                       {"ramp": [0.97, 0.97], "sam": [0.98, 0.98]})]
    return KnowledgeBase(["ramp", "sam"], {"ramp": {"name": "sam"}, "sam": {"name": "sam"}},
                         tasks)


def test_the_ranking_weighs_tasks_by_a_kernel_on_standardized_descriptors() -> None:
    base = _base()
    target = _descriptor(1100, 0.29)
    rec = recommend(base, target)
    # by hand: standardize over the base, distances, median nearest-neighbour bandwidth
    vectors = [t.descriptor.vector() for t in base.tasks]
    dims = range(len(vectors[0]))
    mean = [sum(v[j] for v in vectors) / 3 for j in dims]
    sd = [math.sqrt(sum((v[j] - mean[j]) ** 2 for v in vectors) / 3) or 1.0 for j in dims]
    z = [[(v[j] - mean[j]) / sd[j] for j in dims] for v in vectors]
    zt = [(target.vector()[j] - mean[j]) / sd[j] for j in dims]
    d = [math.dist(zt, v) for v in z]
    nn = sorted(min(math.dist(a, b) for b in z if b is not a) for a in z)
    h = nn[1]
    w = [math.exp(-0.5 * (x / h) ** 2) for x in d]
    w = [x / sum(w) for x in w]
    gains = [0.02, 0.02, -0.01]
    expected = sum(a * b for a, b in zip(w, gains))
    assert rec.similar and rec.pick == "ramp"
    assert dict((n, g) for n, g, _ in rec.ranking)["ramp"] == pytest.approx(expected, abs=1e-12)
    assert {t for t, *_ in rec.nearest[:2]} == {"noisy-a", "noisy-b"}
    clean = recommend(base, _descriptor(5200, 0.012))
    assert clean.pick == "sam"     # the clean task is the near one now


def test_a_task_unlike_every_base_task_gets_the_global_ranking() -> None:
    base = _base()
    far = TaskDescriptor(examples=10**7, classes=1000, input_size=10**6, params=10**9,
                         gap=0.9, noise_scale=1e6, trace=1e6, frob=1e9)
    rec = recommend(base, far)
    assert not rec.similar and rec.nearest[0][1] > FAR
    assert dict((n, g) for n, g, _ in rec.ranking)["ramp"] == pytest.approx(
        (0.02 + 0.02 - 0.01) / 3)
    assert "no task of the knowledge base is like this one" in rec.lines()[0]


@pytest.mark.parametrize("text, words", [
    ("{not json", ["invalid JSON"]),
    ('{"records": []}', ["format", "missing"]),
    ('{"format": "metasam-knowledge/1", "records": []}', ["not a format this version reads"]),
    ('{"format": "metasam-knowledge-base/2"}', ["newer metasam"]),
    (json.dumps({"format": FORMAT, "candidates": ["a"], "specs": {"a": {}}, "tasks": []}),
     ["tasks", "non-empty"]),
    (json.dumps({"format": FORMAT, "candidates": ["a"], "specs": {"a": {}},
                 "tasks": [{"name": "t"}]}), ["tasks[0]", "malformed"]),
])
def test_a_corrupt_foreign_or_newer_base_is_one_line(text, words) -> None:
    with pytest.raises(ConfigError) as err:
        parse_base(text, "kb.json")
    message = str(err.value)
    assert "\n" not in message and message.startswith("kb.json")
    for word in words:
        assert word in message


def test_the_shipped_base_holds_eight_tasks_of_the_projects_data() -> None:
    base = shipped_base()
    assert len(base.tasks) >= 8
    datasets = {t.setup["dataset"] for t in base.tasks}
    assert datasets <= {"digits", "mnist", "mnist-S", "mnist1d", "cifar10-jpeg"}
    assert len(datasets) >= 4
    for task in base.tasks:
        assert set(task.test) == set(base.candidates)
        assert all(0.0 < x <= 1.0 for v in task.test.values() for x in v)
    again = parse_base(json.dumps(base.to_dict()), "round trip")
    assert again.tasks[0].test == base.tasks[0].test


def test_a_quick_study_picks_with_the_prior_it_recorded_and_cold_without(tmp_path) -> None:
    from _util import write_study

    from metasam.decision.stage import quick_candidates, quick_prior
    from metasam.tuning import StudyConfig, record
    from metasam.tuning.storage import open_storage, open_study

    config = StudyConfig.from_yaml(write_study(tmp_path, effort="quick", race={}))
    study = open_study(open_storage(config.storage), config.name, config.mode)
    names = [c.name for c in quick_candidates(config)[0]]
    portfolio_means, _ = quick_prior(config, study)    # nothing recorded: the portfolio file's
    assert portfolio_means == quick_candidates(config)[1]
    study.set_user_attr(record.PRIOR, json.dumps({"gains": {names[0]: 0.0, names[1]: 0.004},
                                                "tau": 0.002}))
    means, taus = quick_prior(config, study)
    assert means[:2] == [0.0, 0.004] and taus[:2] == [0.002, 0.002]
    assert all(math.isinf(t) for t in taus[2:])     # not in the recorded prior: none
    cold = StudyConfig.from_yaml(write_study(tmp_path / "cold", effort="quick", race={},
                                             meta="none"))
    assert cold.cold and all(math.isinf(t) for t in quick_prior(cold, study)[1])


def test_the_examples_in_the_knowledge_modules_run() -> None:
    import doctest

    from metasam.meta import base
    from metasam.meta import recommend as recommend_module

    for module in (base, recommend_module):
        failed, tried = doctest.testmod(module)[:2]
        assert tried > 0 and failed == 0, module.__name__


def test_the_recommended_export_is_what_load_optimizer_and_load_recipe_read(tmp_path) -> None:
    import torch
    from _util import write_study

    from metasam import load_optimizer, load_recipe
    from metasam.decision.portfolio import shipped_portfolio
    from metasam.meta.recommend import recommended_export
    from metasam.tuning import StudyConfig

    config = StudyConfig.from_yaml(write_study(tmp_path, effort="quick", race={}))
    base = shipped_base()
    ramp = shipped_portfolio().points[0]
    rec = recommend(base, base.tasks[0].descriptor)
    rec = type(rec)(ramp.label.method, ramp.spec, rec.ranking, rec.nearest, rec.similar)
    export = recommended_export(config, rec, base.tasks[0].descriptor)
    path = tmp_path / "pick.json"
    path.write_text(json.dumps(export))
    model = torch.nn.Linear(4, 2)
    optimizer = load_optimizer(path, model.parameters(), model=model, total_steps=10)
    assert optimizer.spec.vary is not None and optimizer.spec.rho == 0.2
    recipe = load_recipe(path, torch.nn.Linear(4, 2).parameters(), steps_per_epoch=3)
    assert recipe.optimizer.spec.vary is not None
