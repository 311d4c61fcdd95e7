"""Live tracking: run names, the TensorBoard callback alone (against TensorBoard's own reader),
and MLflow through Ray Tune's callback on a real study (when mlflow is installed). The
TensorBoard runs of a whole tune → race → confirmation are checked against the study's storage
in ``test_analysis.py``'s pipeline test."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from metasam.tuning.study_file import Tracking
from metasam.tuning.tracking import TensorBoardCallback, callbacks, run_name
from metasam.tuning.trials import Label, Role


def _scalars(run, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run))
    events.Reload()
    return {e.step: e.value for e in events.Scalars(tag)}


def test_run_names_say_which_trial_or_run_it_is():
    race = Label(Role.RACE, "sam ρ=0.1", "sam", trial=4, instance=3).to_dict()
    assert run_name({"label": race}, 12) == "sam_ρ=0.1-i03"
    assert run_name({"label": Label(Role.SEARCH).to_dict()}, 7) == "t007"
    assert run_name({"label": Label(Role.REFERENCE, "sam", "sam").to_dict()}, 2) == "t002"
    assert run_name({"member": "universal"}, None, member=2) == "member02"


def test_the_callback_logs_finite_metrics_by_epoch_and_a_rerun_replaces_its_epochs(tmp_path):
    board = TensorBoardCallback(tmp_path, number_of=lambda tid: 5)
    trial = SimpleNamespace(trial_id="a", config={"label": Label(Role.SEARCH).to_dict()})
    for epoch, value in ((1, 0.5), (2, 0.6), (3, math.nan)):
        board.on_trial_result(0, [], trial, {"epoch": epoch, "val_acc": value, "lr": 0.1,
                                             "time_this_iter_s": 9.0, "status": "running"})
    board.on_trial_result(0, [], trial, {"epoch": 0, "val_acc": -1.0})   # a failure report
    board.on_trial_error(0, [], trial)
    assert _scalars(tmp_path / "t005", "val_acc") == pytest.approx({1: 0.5, 2: 0.6})
    assert _scalars(tmp_path / "t005", "lr") == pytest.approx({1: 0.1, 2: 0.1, 3: 0.1})
    # the trial re-run after a crash: its run starts again from epoch 1
    again = TensorBoardCallback(tmp_path, number_of=lambda tid: 5)
    again.on_trial_result(0, [], SimpleNamespace(trial_id="b", config=trial.config),
                          {"epoch": 1, "val_acc": 0.7})
    again.on_experiment_end([])
    assert _scalars(tmp_path / "t005", "val_acc") == pytest.approx({1: 0.7})


def test_tracking_turned_off_adds_no_callback(tmp_path):
    assert callbacks(Tracking(tensorboard=False), tmp_path, "s") == []
    assert [type(c).__name__ for c in callbacks(None, tmp_path, "s")] == ["TensorBoardCallback"]


@pytest.mark.slow
@pytest.mark.ray
def test_a_study_logs_every_trial_to_mlflow(tmp_path, ray_cluster):
    mlflow = pytest.importorskip("mlflow")
    from _util import write_study

    from metasam.cli import main
    from metasam.tuning import StudyConfig

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    path = write_study(tmp_path, name="tracked", trials=2, epochs=2,
                       tracking={"mlflow": uri, "tensorboard": False})
    refused = write_study(tmp_path / "bad", name="tracked", trials=2, epochs=2,
                          tracking={"mlflow": (tmp_path / "mlruns").as_uri()})
    assert main(["tune", str(refused), "--address", ray_cluster, "--quiet"]) == 2
    assert main(["tune", str(path), "--address", ray_cluster, "--quiet"]) == 0
    assert not (tmp_path / "tensorboard").exists()
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("tracked")
    runs = client.search_runs([experiment.experiment_id])
    study = StudyConfig.from_yaml(path).load_study()
    assert len(runs) == len(study.trials) == 2
    curves = sorted(len(client.get_metric_history(r.info.run_id, "val_acc")) for r in runs)
    assert curves[-1] == 2 and curves[0] >= 1      # per epoch (ASHA may stop one at 1)
