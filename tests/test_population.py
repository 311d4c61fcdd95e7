"""Population-based training: a member's state restored continues bit for bit, an exploited
member's history is a schedule that replays its updates from scratch, exploit/explore follows
its rules, bad settings get one line, and a killed PBT study resumes with no member lost or run
twice."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from metasam import SharpnessSpec
from metasam.errors import ValidationError
from metasam.training.checkpoint import load_checkpoint
from metasam.tuning.population import (
    Member,
    exploit_and_explore,
    generations,
    initial_members,
    train_member,
)
from metasam.tuning.regions import REGIONS
from metasam.tuning.study_file import PopulationSettings
from metasam.tuning.trials import Status

BASE = {"dataset": "digits", "label_noise": 0.2, "model": "mlp", "epochs": 4, "batch_size": 128,
        "lr": 0.05, "schedule": "cosine", "val_fraction": 0.2, "num_threads": 1,
        "device": "cpu", "test": "none"}


def _job(tmp: Path, name: str, spec: SharpnessSpec, until: int, start: Path | None = None,
         seed: int = 5) -> dict:
    return {"member": 0, "seed": seed, "spec": spec.to_dict(), "until": until,
            "start": None if start is None else str(start), "out": str(tmp / name)}


def _state(path: Path) -> dict:
    return load_checkpoint(path)


def _same_state(a: dict, b: dict) -> None:
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    sa, sb = a["optimizer"]["base"]["state"], b["optimizer"]["base"]["state"]
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k]["momentum_buffer"], sb[k]["momentum_buffer"]), k
    assert a["loader"].keys() == b["loader"].keys()
    strip = [{k: v for k, v in h.items() if k != "wall_time"} for h in a["history"]]
    assert strip == [{k: v for k, v in h.items() if k != "wall_time"} for h in b["history"]]


def test_a_restored_member_continues_bit_identically(tmp_path) -> None:
    """SSAM-F (a Fisher mask refreshed every epoch from the seed, momentum, the cosine schedule,
    the loader's shuffling): 2 + 2 epochs through a saved state equal 4 straight."""
    spec = REGIONS["ssam"].spec({"rho": 0.2}, None)
    straight = train_member(_job(tmp_path, "straight", spec, 4), BASE, "val_acc")
    half = train_member(_job(tmp_path, "half", spec, 2), BASE, "val_acc")
    rest = train_member(_job(tmp_path, "rest", spec, 4, Path(half["checkpoint"])), BASE,
                        "val_acc")
    assert rest["epochs"] == [2, 4] and straight["score"] == rest["score"]
    _same_state(_state(Path(straight["checkpoint"])), _state(Path(rest["checkpoint"])))


def test_an_exploited_members_schedule_replays_its_updates_from_scratch(tmp_path) -> None:
    """A donor trains 2 epochs at ρ = 0.05; a member copies its state and goes on at ρ = 0.1 for
    2 more. Its exported spec (phases of ρ), through JSON, trained from scratch with the
    lineage's seed, ends in exactly the member's state."""
    donor = Member(1, "sam", 7, {"rho": 0.05}, {}, [[0.0, {"rho": 0.05}]])
    first = train_member(_job(tmp_path, "donor", donor.spec(), 2, seed=7), BASE, "val_acc")
    member = Member(0, "sam", 7, {"rho": 0.1}, {}, [[0.0, {"rho": 0.05}], [0.5, {"rho": 0.1}]])
    spec = member.spec()
    assert spec.vary is not None and spec.vary.to_obj() == {
        "rho": {"phases": [[0.0, 0.05], [0.5, 0.1]]}}
    after = train_member(_job(tmp_path, "member", spec, 4, Path(first["checkpoint"]), seed=7),
                         BASE, "val_acc")
    replayed = SharpnessSpec.from_json(spec.to_json())
    replay = train_member(_job(tmp_path, "replay", replayed, 4, seed=7), BASE, "val_acc")
    _same_state(_state(Path(after["checkpoint"])), _state(Path(replay["checkpoint"])))
    # and the schedule mattered: a constant ρ = 0.05 ends elsewhere
    const = train_member(_job(tmp_path, "const", donor.spec(), 4, seed=7), BASE, "val_acc")
    a, b = _state(Path(after["checkpoint"])), _state(Path(const["checkpoint"]))
    assert any(not torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def _results(scores: list[float | None], diverged: set[int] = frozenset()) -> dict:
    return {i: {"score": s, "status": Status.DIVERGED.value if i in diverged else
                Status.COMPLETED.value, "checkpoint": f"ckpt{i}"}
            for i, s in enumerate(scores)}


def test_exploit_and_explore_copies_the_top_into_the_bottom_and_perturbs_within_the_region():
    settings = PopulationSettings(population=8, quantile=0.25, resample=0.0,
                                  members=("sam", "frob_sam"))
    members = initial_members(settings, seed=3, width=4.0)
    assert [m.region for m in members] == ["sam", "frob_sam"] * 4
    assert len({m.seed for m in members}) == 8
    for m in members:
        for k, v in m.values.items():
            low, high = REGIONS[m.region].ranges(4.0)[k]
            assert low <= v <= high
    scores = [0.70, 0.90, 0.60, 0.80, 0.50, 0.85, 0.40, 0.75]   # top: 1, 5; bottom: 6, 4
    after = exploit_and_explore(members, _results(scores), settings, 1, 0.5, 3, 4.0, "max")
    again = exploit_and_explore(members, _results(scores), settings, 1, 0.5, 3, 4.0, "max")
    assert [m.to_dict() for m in after] == [m.to_dict() for m in again]   # deterministic
    for m in after:
        if m.index in (4, 6):
            (event,) = m.events
            donor = members[event["from"]]
            assert event["from"] in (1, 5) and m.start == f"ckpt{donor.index}"
            assert m.seed == donor.seed and m.region == donor.region
            assert m.phases[:-1] == donor.phases and m.phases[-1][0] == 0.5
            for k, v in m.values.items():
                low, high = REGIONS[m.region].ranges(4.0)[k]
                assert event["ops"][k] in ("× 0.8", "× 1.25")
                assert v == pytest.approx(min(max(donor.values[k] * float(
                    event["ops"][k][2:]), low), high))
        else:
            assert m.events == [] and m.start == f"ckpt{m.index}"
            assert m.values == members[m.index].values and m.phases == members[m.index].phases
    # every diverged member is replaced (more of them than the quantile holds), and none is
    # copied: the top holds the best finite members (7, 0)
    for i in (1, 3, 5):
        scores[i] = math.nan
    after = exploit_and_explore(members, _results(scores, {1, 3, 5}), settings, 1, 0.5, 3,
                                4.0, "max")
    assert {m.index for m in after if m.events} == {1, 3, 5}
    assert all(m.events[-1]["from"] in (7, 0) for m in after if m.events)


def test_generations_cut_training_at_the_interval() -> None:
    assert generations(PopulationSettings(interval=3), 10) == [(0, 3), (3, 6), (6, 9), (9, 10)]


@pytest.mark.parametrize("search, field", [
    ({"type": "pbt", "population": 1}, "search.population"),
    ({"type": "pbt", "quantile": 0.6}, "search.quantile"),
    ({"type": "pbt", "factors": [1.2, 0.8]}, "search.factors[0]"),
    ({"type": "pbt", "members": ["universal"]}, "search.members"),
    ({"type": "pb3"}, "search.type"),
    ({"type": "pbt", "interval": 0}, "search.interval"),
])
def test_bad_population_settings_name_their_field(tmp_path, search, field) -> None:
    from metasam.tuning import StudyConfig

    path = tmp_path / "s.yaml"
    root = Path(__file__).resolve().parents[1]
    path.write_text(json.dumps({"search_space": str(root / "search_spaces" / "presets.yaml"),
                                "train": {"dataset": "digits", "epochs": 2},
                                "search": search}))
    with pytest.raises(ValidationError) as err:
        StudyConfig.from_yaml(path)
    assert err.value.field == field, err.value


def test_bad_population_settings_exit_2_with_one_line(tmp_path, capsys) -> None:
    from metasam.cli import main

    path = tmp_path / "s.yaml"
    root = Path(__file__).resolve().parents[1]
    path.write_text(json.dumps({"search_space": str(root / "search_spaces" / "presets.yaml"),
                                "train": {"dataset": "digits", "epochs": 2},
                                "search": {"type": "pbt", "quantile": 0.9}}))
    assert main(["tune", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "search.quantile" in err and str(path) in err


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.spawn
def test_a_killed_pbt_study_resumes_with_no_member_lost_or_run_twice(tmp_path, ray_cluster):
    """A PBT study is killed while its second generation runs; the same study, resumed, runs
    only the member runs without a result, and ends with every member a trial, once."""
    from metasam.tuning import StudyConfig
    from metasam.workflow import Study

    root = Path(__file__).resolve().parents[1]
    study_file = tmp_path / "pbt.yaml"
    study_file.write_text(json.dumps({
        "name": "pbt", "search_space": str(root / "search_spaces" / "presets.yaml"),
        "search": {"type": "pbt", "population": 4, "interval": 2, "members": ["sam", "ssam"]},
        "train": {k: v for k, v in BASE.items() if k not in ("num_threads", "device", "test")},
        "concurrency": 1, "resources": {"cpu": 1, "gpu": 0}, "race": False, "seed": 0}))
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    proc = subprocess.Popen([sys.executable, "-m", "metasam", "tune", str(study_file), "--quiet",
                             "--address", ray_cluster],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    runs = tmp_path / ".metasam-pbt" / "pbt"
    deadline = time.monotonic() + 240
    try:
        while not list(runs.glob("g001/m*/result.json")):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the second generation never started"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finished = len(list(runs.glob("g*/m*/result.json")))
    assert 4 < finished < 8     # the first generation and part of the second
    before = {p: p.stat().st_mtime_ns for p in runs.glob("g*/m*/result.json")}
    config = StudyConfig.from_yaml(study_file)
    outcome = Study(config, verbose=0, address=ray_cluster).tune()
    assert outcome.ran == 8 - finished     # none of the finished runs again
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())
    trials = config.load_study().trials
    assert sorted(t.user_attrs["pbt_member"] for t in trials) == [0, 1, 2, 3]
    assert all(t.user_attrs["epochs"] == 4 for t in trials)
    # resuming a finished study runs nothing and adds nothing
    assert Study(config, verbose=0, address=ray_cluster).tune().ran == 0
    assert len(config.load_study().trials) == 4


def test_a_populations_best_schedules_race_against_the_presets(tmp_path) -> None:
    """Members recorded as trials (as a finished population leaves them) are the race's top
    candidates, their specs the schedules (vary phases) replayed on fresh instances, beside the
    space's presets at their defaults; the race picks among them offline as a study would."""
    from test_search import _run_race_offline

    from metasam.decision import stage as decision
    from metasam.tuning import StudyConfig
    from metasam.tuning.population import _record_members
    from metasam.tuning.storage import open_storage, open_study

    root = Path(__file__).resolve().parents[1]
    path = tmp_path / "pbt.yaml"
    path.write_text(json.dumps({
        "name": "pbt", "search_space": str(root / "search_spaces" / "presets.yaml"),
        "search": {"type": "pbt", "population": 3, "interval": 2},
        "train": {"dataset": "digits", "epochs": 4}, "race": {"top_k": 2, "budget": 40}}))
    config = StudyConfig.from_yaml(path)
    study = open_study(open_storage(config.storage), config.name, config.mode)
    members = [Member(0, "sam", 11, {"rho": 0.05}, {}, [[0.0, {"rho": 0.05}]]),
               Member(1, "sam", 11, {"rho": 0.1}, {}, [[0.0, {"rho": 0.05}],
                                                         [0.5, {"rho": 0.1}]]),
               Member(2, "ssam", 13, {"rho": 0.2}, {}, [[0.0, {"rho": 0.2}]])]
    members[1].events = [{"generation": 1, "at": 0.5, "from": 0, "old": {"rho": 0.05},
                          "new": {"rho": 0.1}, "ops": {"rho": "× 1.25"}}]
    for g, scores in enumerate(([0.70, 0.60, 0.65], [0.80, 0.90, 0.85])):
        plan = members if g else [Member(m.index, m.region, m.seed, m.values, {},
                                         m.phases[:1]) for m in members]
        study.set_user_attr(f"pbt.plan.{g}", json.dumps([m.to_dict() for m in plan]))
        for m, score in zip(members, scores):
            study.set_user_attr(f"pbt.result.{g}.{m.index}", json.dumps({
                "status": "completed", "score": score, "grad_evals": 100,
                "history": [{"epoch": 2 * g + 2, "val_acc": score}], "placement": {}}))
    _record_members(study, config, members, 2, None)
    candidates = decision.race_candidates(config)
    tops = [c for c in candidates if c.pick is decision.Pick.TOP]
    assert [c.name.split(" (")[0] for c in tops] == ["member 1", "member 2"]
    schedule = SharpnessSpec.from_dict(tops[0].spec)
    assert schedule.vary.to_obj() == {"rho": {"phases": [[0.0, 0.05], [0.5, 0.1]]}}
    assert {c.preset for c in candidates if c.pick is decision.Pick.PRESET} == {
        "sgd", "sam", "asam", "ssam", "trace_sam", "frob_sam", "det_sam"}
    truth = {c.id: (0.9 if c is tops[0] else 0.8) for c in candidates}
    _run_race_offline(config, lambda owner, instance: truth[owner.id] + 0.001 * instance)
    verdict = decision.race_verdict(config)
    assert verdict.winner.candidate is not None
    assert verdict.winner.candidate.name == tops[0].name
