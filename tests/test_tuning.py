"""Tuning studies end to end: Ray Tune + Optuna storage, resume after SIGKILL, cooperating
workers on SQLite and PostgreSQL, failed trials, export and load_optimizer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest
import torch
import torch.nn.functional as F
from _util import (
    DEADLINE_EVENT,
    DEADLINE_PROCESS,
    SPACE,
    assert_complete_and_unique,
    finished_trials,
    metasam_cli,
    wait_for,
    write_study,
)

from metasam import Study, load_optimizer
from metasam.cli import main
from metasam.decision.export import best_optimizer
from metasam.tuning import SearchSpace, StudyConfig
from metasam.tuning.record import TrialRecord
from metasam.tuning.runner import tune_study
from metasam.tuning.storage import census, counts, load_study
from metasam.tuning.trials import Role

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")

# --- validation before Ray starts -------------------------------------------------------------

def test_invalid_files_fail_with_one_line_before_ray_starts(tmp_path, capsys) -> None:
    import ray

    cases = [
        ({"trials": 0}, "tiny.yaml: trials: out of range: 0; allowed: [1, inf)"),
        ({"metric": "test_acc"}, "tiny.yaml: metric: unknown value 'test_acc'; allowed: val_acc"),
        ({"schedulr": {}}, "tiny.yaml: schedulr: unknown key; allowed: name, search_space"),
        ({"resources": {"cpu": "two"}}, "tiny.yaml: resources.cpu: expected a number"),
        ({"train": {"dataset": "mnist", "data_dir": str(tmp_path / "empty")}},
         "tiny.yaml: train.dataset: dataset 'mnist': not found"),
        ({"train": {"model": "vgg"}}, "tiny.yaml: train.model: unknown value 'vgg'; allowed: "
                                      "resnet18, mlp, cnn"),
        ({"metric": "val_loss", "mode": "max"},
         "tiny.yaml: mode: 'max' would maximize val_loss; allowed: min"),
        ({"rename": "runs/a"}, "tiny.yaml: name: 'runs/a' is not a plain file name; allowed: "
                               "letters, digits, '.', '_', '-'"),
        ({"train": {"device": "tpu"}}, "tiny.yaml: train.device: unknown device 'tpu'; "
                                       "allowed: auto, cpu, cuda, cuda:N, mps"),
        ({"train": {"seed": 3}}, "tiny.yaml: train.seed: is set by the study for each trial "
                                 "(use the study's top-level seed field)"),
    ]
    for extra, message in cases:
        rename = extra.pop("rename", None)
        path = write_study(tmp_path / "s", **extra)
        if rename:
            path.write_text(path.read_text().replace("name: tiny", f"name: {rename}"))
        assert main(["tune", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        assert message in err, err
    bad_spaces = [
        ({"search": {**SPACE["search"], "rho": [0.5, 0.1]}},
         "space.yaml: search.rho: low 0.5 is above high 0.1; allowed: [low, high], low ≤ high"),
        ({"presets": ["sgd", "samm"]}, "space.yaml: presets: unknown value 'samm'; allowed: sgd"),
        ({"search": {**SPACE["search"], "psi": ["identity", "varience"]}},
         "space.yaml: search.psi[1].fn: unknown ψ function 'varience'"),
        ({"search": {**SPACE["search"], "measure": {"kinds": ["gauss"]}}},
         "space.yaml: search.measure.kinds: unknown value 'gauss'; allowed: gaussian"),
        ({"points": [{"preset": "frob_sam", "lam": -1.0}]},
         "space.yaml: points[0].lam: out of range: -1.0; allowed: [0, inf)"),
        ({"search": {**SPACE["search"], "n": [1, "x"]}},
         "space.yaml: search.n[1]: expected a whole number, got 'x'"),
    ]
    for space, message in bad_spaces:
        path = write_study(tmp_path / "s", space=space)
        assert main(["tune", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    assert not ray.is_initialized()


def test_shipped_spaces_and_studies_are_valid() -> None:
    root = Path(__file__).resolve().parents[1]
    for path in sorted((root / "search_spaces").glob("*.yaml")):
        SearchSpace.from_yaml(path)
    names = {StudyConfig.from_yaml(p).name for p in sorted((root / "studies").glob("*.yaml"))}
    assert {"digits-noisy", "digits-quick", "mnist", "mnist1d", "cifar10-s", "cifar10-c"} <= names
    paper = SearchSpace.from_yaml(root / "search_spaces" / "paper.yaml")
    assert len(paper.points) == 4 + 3 + 3 + 12 and paper.search is None
    # `compare --tune-baselines` runs the same grid (one owner each: kept equal here)
    from metasam.decision.compare import BASELINE_SPACE

    assert paper.points == SearchSpace.from_dict(BASELINE_SPACE).points


# --- a real study, in this process ------------------------------------------------------------

def test_tiny_study_end_to_end_with_export_and_load_optimizer(tmp_path, ray_cluster,
                                                              capsys, monkeypatch) -> None:
    path = write_study(tmp_path / "a", trials=7, space={
        **SPACE, "points": [{"preset": "sgd", "lr": 1.0e9, "momentum": 0.0}]})
    config = StudyConfig.from_yaml(path)
    capsys.readouterr()
    outcome = tune_study(config, address=ray_cluster, verbose=1)
    assert outcome.ran == 7 and outcome.done
    # what a user reads: metasam's census lines, not Ray's experiment table ("Number of
    # trials: 6/infinite", bracket values, the log folder every 15 s)
    shown = capsys.readouterr()
    assert "study tiny: 7/7 finished" in shown.err
    for ray_line in ("Number of trials", "infinite", "Bracket", "Logical resource usage",
                     "Result logdir"):
        assert ray_line not in shown.out + shown.err, ray_line
    # no per-trial result files (the storage is the record): nothing for TensorBoard's logger
    # to print "NaN or Inf found in input tensor" about when a trial diverges
    assert not [p for p in config.ray_dir.rglob("*")
                if p.name in ("result.json", "progress.csv") or p.name.startswith("events.")]
    state = assert_complete_and_unique(config)
    trials = {TrialRecord.of(t).name: t for t in state.counted if TrialRecord.of(t).is_point}
    # the diverging point is a failed trial with its reason; the study still finished
    diverged = trials["sgd lr=1000000000.0 momentum=0.0"]
    assert diverged.state == optuna.trial.TrialState.FAIL
    assert "non-finite" in diverged.user_attrs["reason"]
    # reference points always get the full budget, and the best is at least as good as each
    assert trials["sgd"].user_attrs["full_budget"] and trials["sam"].user_attrs["full_budget"]
    best = best_optimizer(config)
    assert all(best["value"] >= trials[p].value for p in ("sgd", "sam"))
    full = [t for t in state.counted if t.user_attrs.get("full_budget")]
    assert best["value"] == max(t.value for t in full)
    # ASHA-stopped trials carry the budget their value was reached at
    for t in state.counted:
        if t.state == optuna.trial.TrialState.COMPLETE and not t.user_attrs["full_budget"]:
            assert t.user_attrs["epochs"] < 3 and t.user_attrs["status"] == "stopped"

    # metasam best / trials
    assert main(["best", str(path)]) == 0
    exported = json.loads((path.parent / "tiny.best.json").read_text())
    assert exported["trial"] == best["trial"] and exported["spec"] == best["spec"]
    capsys.readouterr()
    assert main(["trials", str(path), "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    rows = listing["trials"]
    assert len([r for r in rows if r["counted"]]) == 7
    assert listing["verdict"] is None  # race: false in this study
    assert listing["cost"]["tuning_trials"] == 7 and listing["cost"]["race_runs"] == 0
    assert 0 < listing["cost"]["tuning"] <= 7
    for row in rows:  # each trial's full spec (a dict that loads), its summary and training
        if row["spec"] is not None:
            from metasam import SharpnessSpec

            assert SharpnessSpec.from_dict(row["spec"]).to_dict() == row["spec"]
            assert isinstance(row["summary"], str) and isinstance(row["train"], dict)
    monkeypatch.setenv("COLUMNS", "72")
    assert main(["trials", str(path)]) == 0
    table = capsys.readouterr().out
    lines = table.splitlines()
    assert lines[0].startswith("columns: # trial number") and "val_acc %" in lines[0]
    assert max(len(line) for line in lines[:lines.index(next(
        line for line in lines if "finished (" in line))]) <= 72   # fits the terminal
    for row in rows:     # each trial on one row, its value in points, its label once
        shown = next(line for line in lines if line.startswith(f"{row['number']:>4} "))
        if row["value"] is not None:
            assert f" {row['value'] * 100:.2f} " in shown
        assert shown.count(row["label"][:20]) <= 1
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["trials", str(path), "--wide"]) == 0
    wide_rows = capsys.readouterr().out
    for label in {r["label"] for r in rows}:  # --wide: long labels are not cut
        assert f" {label}" in wide_rows, label
    # where each trial ran: this host, the CPU, one thread (resources: cpu 1), the versions
    import socket

    import metasam

    finished = [r for r in rows if r["counted"] and r["state"] in ("COMPLETE", "FAIL")]
    for row in finished:
        placed = row["placement"]
        assert placed is not None, row["number"]
        assert (placed["host"], placed["device"], placed["threads"]) == (
            socket.gethostname(), "cpu", 1)
        assert placed["torch"] == torch.__version__ and placed["metasam"] == metasam.__version__
        assert placed["node"]  # a Ray node id
    assert best["placement"] == next(r["placement"] for r in rows
                                     if r["number"] == best["trial"])
    assert main(["trials", str(path), "--wide"]) == 0
    wide = capsys.readouterr().out
    assert f"{socket.gethostname()}/{finished[0]['placement']['node'][:8]}/cpu" in wide
    def header(text: str) -> str:
        return next(line for line in text.splitlines() if line.startswith("   # state"))

    assert "where" in header(wide)
    assert "where" not in header(table)  # one host: not shown without --wide

    # load_optimizer reproduces the trial's optimizer exactly: same update on a fixed batch
    from metasam.training import TrainConfig, Trial

    best_trial = next(t for t in state.counted if t.number == best["trial"])
    trial_config = TrainConfig.from_dict({**config.train.to_dict(),
                                          **json.loads(best_trial.user_attrs["train"]),
                                          "spec": best["spec"], "seed": 5})
    reference = Trial(trial_config)
    model = copy_model(reference.model)
    optimizer = load_optimizer(path.parent / "tiny.best.json", model.parameters(), model=model,
                               seed=5)
    x = reference.splits.train.normalize(reference.splits.train.x[:64])
    y = reference.splits.train.y[:64]
    for net, opt in ((reference.model, reference.optimizer), (model, optimizer)):
        def closure(net=net, opt=opt):
            opt.zero_grad()
            loss = F.cross_entropy(net(x), y)
            loss.backward()
            return loss
        opt.step(closure)
    for a, b in zip(reference.model.parameters(), model.parameters()):
        assert torch.equal(a, b)
    assert optimizer.param_groups[0]["lr"] == reference.optimizer.param_groups[0]["lr"]
    # the study file itself: its winner, read through the study's workflow
    via_study = load_optimizer(path, copy_model(model).parameters(), seed=5)
    assert via_study.spec == optimizer.spec
    assert via_study.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]

    # warm start: another study evaluates this one's top-k first
    other = StudyConfig.from_yaml(write_study(tmp_path / "b", name="other", trials=3,
                                              space={"presets": ["sgd", "sam", "asam"]}))
    Study(other, address=ray_cluster, verbose=0).tune(warm_start=config, top_k=2)
    labels = [TrialRecord.of(t).label for t in sorted(census(load_study(
        other.storage, other.name)).counted, key=lambda t: t.number)]
    top = sorted(full, key=lambda t: (-t.value, t.number))[:2]
    assert [(lb.role, lb.method) for lb in labels] == (
        [(Role.WARM, f"tiny#{t.number}") for t in top] + [(Role.REFERENCE, "sgd")])


def copy_model(model: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(model)


# --- resume after SIGKILL, and cooperating workers --------------------------------------------

def test_sigkill_mid_study_then_rerun_finishes_exactly(tmp_path, ray_cluster) -> None:
    path = write_study(tmp_path, name="killed", trials=16, epochs=6,
                       scheduler={"type": "none"})
    config = StudyConfig.from_yaml(path)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    first = subprocess.Popen(metasam_cli("tune", str(path), "--address", ray_cluster,
                                         "--quiet"), env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: finished_trials(config) >= 3, DEADLINE_EVENT, "three finished trials")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    study = load_study(config.storage, config.name)
    before = {t.number: t.value for t in study.get_trials(
        deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))}
    assert len(before) >= 3
    assert census(study).running >= 1, "the kill should have interrupted running trials"
    second = subprocess.run(metasam_cli("tune", str(path), "--address", ray_cluster, "--quiet"),
                            env=env, capture_output=True, text=True, timeout=DEADLINE_PROCESS)
    assert second.returncode == 0, second.stderr[-3000:]
    state = assert_complete_and_unique(config)
    assert state.interrupted >= 1
    after = {t.number: t.value for t in load_study(config.storage, config.name).get_trials(
        deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))}
    for number, value in before.items():  # nothing finished before the kill was lost
        assert after[number] == value


def test_ctrl_c_gives_back_running_trials_and_the_rerun_finishes(tmp_path, ray_cluster) -> None:
    path = write_study(tmp_path, name="ctrlc", trials=12, epochs=6, scheduler={"type": "none"},
                       heartbeat={"interval": 5, "grace": 600})
    config = StudyConfig.from_yaml(path)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    first = subprocess.Popen(metasam_cli("tune", str(path), "--address", ray_cluster,
                                         "--quiet"), env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    wait_for(lambda: finished_trials(config) >= 3, DEADLINE_EVENT, "three finished trials")
    first.send_signal(signal.SIGINT)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 130, err[-2000:]
    assert "run the same command again to resume" in err
    assert "Tuner.restore" not in err  # Ray's own resume advice would contradict it
    state = census(load_study(config.storage, config.name))
    # nothing is left RUNNING: with a 600 s grace period, a rerun would otherwise wait
    assert state.running == 0 and state.interrupted >= 1 and state.waiting >= 1
    second = subprocess.run(metasam_cli("tune", str(path), "--address", ray_cluster, "--quiet"),
                            env=env, capture_output=True, text=True, timeout=DEADLINE_PROCESS)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"resuming: {state.finished} finished trials kept" in second.stderr
    assert f"re-running {state.interrupted} interrupted trial(s) first" in second.stderr
    assert_complete_and_unique(config)


def _two_workers(path: Path, address: str) -> None:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    logs = [path.with_name(f"worker{i}.log") for i in range(2)]
    workers = []
    for log in logs:
        with open(log, "w") as out:
            workers.append(subprocess.Popen(metasam_cli("tune", str(path), "--address", address,
                                                        "--quiet"), env=env, stdout=out,
                                            stderr=subprocess.STDOUT))
    for w, log in zip(workers, logs):
        try:
            w.wait(timeout=DEADLINE_PROCESS)
        finally:
            if w.poll() is None:
                w.kill()
        assert w.returncode == 0, log.read_text()[-3000:]


def test_two_processes_cooperate_on_one_sqlite_study(tmp_path, ray_cluster) -> None:
    path = write_study(tmp_path, name="shared", trials=10, epochs=2, concurrency=1)
    _two_workers(path, ray_cluster)
    config = StudyConfig.from_yaml(path)
    state = assert_complete_and_unique(config)
    # every trial ran once, by one of the two processes (how the ten trials split between them
    # depends on timing on a shared machine, so it is not asserted)
    workers = {t.user_attrs.get("worker") for t in state.counted}
    assert None not in workers and 1 <= len(workers) <= 2


def test_two_workers_on_one_journal_file(tmp_path, ray_cluster) -> None:
    """Optuna's file journal, for a shared filesystem without a database server."""
    path = write_study(tmp_path, name="journaled", trials=10, epochs=2, concurrency=1,
                       storage="journal:journaled.log")
    config = StudyConfig.from_yaml(path)
    assert config.storage == f"journal:{tmp_path / 'journaled.log'}"
    _two_workers(path, ray_cluster)
    state = assert_complete_and_unique(config)
    assert len({t.user_attrs.get("worker") for t in state.counted}) == 2
    assert not list(tmp_path.glob("*.db"))


def test_journal_heartbeats_find_and_rerun_a_silent_trial(tmp_path) -> None:
    from metasam.tuning import record
    from metasam.tuning.storage import open_storage, requeue, sweep_stale

    url = f"journal:{tmp_path / 'beats.log'}"
    storage = open_storage(url, heartbeat_interval=1, heartbeat_grace=2)
    study = optuna.create_study(storage=storage, study_name="beats")
    alive, silent = study.ask(), study.ask()
    for trial in (alive, silent):
        trial.set_user_attr("worker", "w")
        trial.set_user_attr("point", f"p{trial.number}")
        storage.record_heartbeat(trial._trial_id)
    storage.set_trial_system_attr(silent._trial_id, record.HEARTBEAT, time.time() - 10)
    assert storage._get_stale_trial_ids(study._study_id) == [silent._trial_id]
    assert sweep_stale(study) == 1
    trials = load_study(url, "beats").get_trials(deepcopy=False)
    assert trials[silent.number].state == optuna.trial.TrialState.FAIL
    assert trials[silent.number].user_attrs["interrupted"]
    assert trials[alive.number].state == optuna.trial.TrialState.RUNNING
    assert trials[-1].state == optuna.trial.TrialState.WAITING  # the re-run, enqueued
    assert trials[-1].user_attrs["point"] == f"p{silent.number}"
    study.tell(alive, 1.0)
    storage.record_heartbeat(alive._trial_id)  # a late beat on a finished trial is harmless
    assert not requeue(study, alive._trial_id)


def test_reading_a_study_that_never_ran_leaves_no_file(tmp_path) -> None:
    for url in (f"journal:{tmp_path / 'none.log'}", f"sqlite:///{tmp_path / 'none.db'}"):
        with pytest.raises(ValueError, match="does not exist"):
            load_study(url, "none")
    assert not list(tmp_path.iterdir())


def test_two_workers_on_a_postgresql_study_across_a_ray_cluster(tmp_path, ray_cluster,
                                                                postgres_url) -> None:
    path = write_study(tmp_path, name="multi", trials=10, epochs=2, concurrency=1,
                       storage=postgres_url)
    _two_workers(path, ray_cluster)
    config = StudyConfig.from_yaml(path)
    assert config.storage.startswith("postgresql")
    state = assert_complete_and_unique(config)
    assert len({t.user_attrs.get("worker") for t in state.counted}) == 2
    assert all(counts(t) for t in state.counted)


def _open_after(barrier, url: str, errors) -> None:
    from metasam.tuning.storage import open_storage

    barrier.wait()
    try:
        open_storage(url)
    except BaseException as err:  # noqa: BLE001 (reported to the parent)
        errors.put(str(err))


def test_workers_creating_one_new_database_at_once_all_open_it(tmp_path) -> None:
    """Schema creation races between processes (a duplicate table, Alembic's version stamp
    written twice) are retried; only real failures are reported."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    for attempt in range(3):
        url = f"sqlite:///{tmp_path / f'race{attempt}.db'}"
        barrier, errors = context.Barrier(6), context.Queue()
        workers = [context.Process(target=_open_after, args=(barrier, url, errors))
                   for _ in range(6)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=120)
        assert all(w.exitcode == 0 for w in workers)
        assert errors.empty(), errors.get()


# --- cost-aware studies -----------------------------------------------------------------------

def test_pareto_front_keeps_what_no_cheaper_trial_beats() -> None:
    from metasam.tuning.cost_score import pareto_front, pick

    study = optuna.create_study(direction="maximize")
    rows = [("a", 0.80, 100), ("b", 0.85, 200), ("c", 0.83, 250), ("d", 0.90, 300),
            ("e", 0.90, 400), ("f", 0.95, 150)]  # f dominates a..e except the cheapest, a
    for label, acc, evals in rows:
        trial = study.ask()
        for key, value in (("label", label), ("full_budget", True), ("val_acc", acc),
                           ("grad_evals", evals)):
            trial.set_user_attr(key, value)
        study.tell(trial, acc)
    stopped = study.ask()  # cheaper and better, but not at full budget: not on the front
    for key, value in (("label", "g"), ("full_budget", False), ("val_acc", 0.99),
                       ("grad_evals", 10)):
        stopped.set_user_attr(key, value)
    study.tell(stopped, 0.99)
    front = pareto_front(study, "val_acc", "max")
    assert [(p.label, p.grad_evals) for p in front] == [("a", 100), ("f", 150)]
    assert pick(front, 149).label == "a" and pick(front, 1e9).label == "f"
    with pytest.raises(ValueError, match="at most 50 gradient evaluations; allowed: ≥ 100"):
        pick(front, 50)


def test_cost_aware_study_ranks_by_the_score_and_best_picks_from_the_front(
        tmp_path, ray_cluster, capsys) -> None:
    from metasam.tuning.cost_score import pareto_front

    path = write_study(tmp_path, name="cost", trials=4, epochs=2, concurrency=1,
                       cost={"weight": 0.01}, scheduler={"type": "none"},
                       space={"presets": ["sgd", "sam", "frob_sam"],
                              "search": {"members": ["sam"],
                                         "schedule": {"every": [2, 4], "reuse": [True]}}})
    config = StudyConfig.from_yaml(path)
    assert config.objective == "cost_score"
    tune_study(config, address=ray_cluster, verbose=0)
    study = load_study(config.storage, config.name)
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        if t.user_attrs["label"] in ("sgd", "sam", "frob_sam"):  # no schedule: exact passes
            expected = t.user_attrs["val_acc"] - 0.01 * t.user_attrs["passes_per_step"]
            assert t.value == pytest.approx(expected, abs=1e-12)
    front = pareto_front(study, "val_acc", "max")
    assert front and front[0].grad_evals == min(
        t.user_attrs["grad_evals"] for t in study.get_trials(deepcopy=False)
        if t.user_attrs.get("full_budget"))
    capsys.readouterr()
    assert main(["best", str(path), "--max-cost", str(front[0].grad_evals)]) == 0
    exported = json.loads((path.parent / "cost.best.json").read_text())
    assert exported["trial"] == front[0].number and exported["max_cost"] == front[0].grad_evals
    assert "<- chosen" in capsys.readouterr().err
    assert main(["best", str(path), "--max-cost", str(front[0].grad_evals - 1)]) == 2
    assert main(["trials", str(path), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [p["number"] for p in listed["front"]] == [p.number for p in front]


def test_a_stale_ray_cluster_record_starts_a_local_instance(tmp_path, monkeypatch,
                                                           capsys) -> None:
    """A killed `ray start` head leaves its record behind; a plain ray.init() would try to join
    it and fail. metasam starts a fresh local instance instead, and still joins a live one."""
    import socket

    from metasam.tuning import compat
    from metasam.tuning.runner import _ray_address

    record = tmp_path / "ray_current_cluster"
    monkeypatch.setattr(compat, "ray_current_cluster_file", lambda: record)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert _ray_address(None) == "local"  # no record: a fresh instance, Ray's own default
    with socket.socket() as live:
        live.bind(("127.0.0.1", 0))
        live.listen(1)
        port = live.getsockname()[1]
        record.write_text(f"127.0.0.1:{port}")
        assert _ray_address(None) is None  # a live head: join it, as Ray would
    # closed now: the record is stale
    assert _ray_address(None) == "local"
    assert "is gone" in capsys.readouterr().err
    assert _ray_address("10.0.0.1:6379") == "10.0.0.1:6379"  # an explicit address is kept
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.2:6379")
    assert _ray_address(None) is None  # Ray reads $RAY_ADDRESS itself


def test_a_requeued_configuration_counts_its_retries(tmp_path) -> None:
    """What caps the re-runs of a trial whose Ray worker died (searcher.MAX_RETRIES)."""
    from metasam.tuning import record
    from metasam.tuning.compat import trial_id
    from metasam.tuning.storage import open_storage, open_study, requeue
    from metasam.tuning.trials import Label, Point, Role

    study = open_study(open_storage(f"sqlite:///{tmp_path / 's.db'}"), "s", "max")
    point = Point(Label(Role.REFERENCE, "sam", preset="sam"), {"name": "sam"})
    study.enqueue_trial({}, user_attrs=record.point_attrs(point))
    for expected in (1, 2):
        trial = study.ask()
        assert requeue(study, trial_id(trial))
        retry = study.get_trials(deepcopy=False)[-1]
        assert retry.state.name == "WAITING"
        assert retry.user_attrs[record.RETRIES] == expected
        assert retry.user_attrs[record.RETRY_OF] == trial.number
        assert TrialRecord.of(retry).label == point.label  # the same configuration


@pytest.mark.slow
@pytest.mark.spawn
def test_a_local_ray_instance_keeps_token_authentication_without_the_notice(tmp_path) -> None:
    """Ray started by a study on its own machine runs with token authentication (chosen
    explicitly), and its first screen has no notice about RAY_AUTH_MODE; a mode the user set is
    kept (docs/cluster.md)."""
    import os
    import subprocess
    import sys

    code = ("import os\n"
            "from metasam.tuning.runner import ray_session\n"
            "with ray_session('local', 1):\n"
            "    import ray\n"
            "    ray.get(ray.remote(lambda: 1).remote())\n"
            "print('mode', os.environ.get('RAY_AUTH_MODE'))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "mode token" in out.stdout
    assert "RAY_AUTH_MODE" not in out.stderr and "Token authentication" not in out.stderr, \
        out.stderr[-2000:]
    assert (Path.home() / ".ray" / "auth_token").is_file()   # Ray's own token, generated once
