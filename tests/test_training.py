"""The trainer: accuracy on the embedded data, determinism, resume, divergence, config, CLI."""

from __future__ import annotations

import json

import pytest
import torch

from metasam import presets
from metasam.cli import main
from metasam.errors import ConfigError
from metasam.training import TrainConfig, Trial, train
from metasam.training.checkpoint import load_checkpoint


@pytest.mark.parametrize("preset", presets.NAMES)
def test_every_preset_reaches_95_percent_on_digits(preset: str) -> None:
    result = train({"dataset": "digits", "model": "cnn", "preset": preset, "epochs": 6})
    assert result["status"] == "completed"
    assert result["test_acc"] >= 0.95
    assert result["passes_per_step"] == presets.get(preset).passes
    steps = result["steps"]
    assert result["grad_evals"] == steps * result["passes_per_step"]
    assert len(result["history"]) == 6 and "val_acc" in result["history"][0]


def test_runs_are_deterministic_on_cpu_and_depend_on_the_seed() -> None:
    config = {"dataset": "digits", "model": "mlp", "preset": "frob_sam", "epochs": 2}
    a, b = train(config), train(config)
    c = train({**config, "seed": 1})
    key = ["train_loss", "val_loss", "test_loss"]
    assert [a[k] for k in key] == [b[k] for k in key]
    assert [a[k] for k in key] != [c[k] for k in key]


@pytest.mark.parametrize("preset", ["frob_sam", "ssam"])
def test_resume_gives_the_same_final_weights_as_an_uninterrupted_run(tmp_path,
                                                                     preset: str) -> None:
    config = {"dataset": "digits", "model": "cnn", "preset": preset, "epochs": 4,
              "checkpoint_every": 1, "lr": 0.05, "schedule": "multistep"}
    full = train({**config, "checkpoint_dir": str(tmp_path / "full")})
    stopped = train({**config, "checkpoint_dir": str(tmp_path / "cut")},
                    report=lambda m: m["epoch"] == 2)
    assert stopped["status"] == "stopped" and stopped["epochs"] == 2
    resumed = train({**config, "checkpoint_dir": str(tmp_path / "cut")})
    assert resumed["resumed"] and resumed["epochs"] == 4
    assert [h["train_loss"] for h in resumed["history"]] == \
        [h["train_loss"] for h in full["history"]]
    a = load_checkpoint(tmp_path / "full" / "checkpoint.pt")["model"]
    b = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["model"]
    for key in a:
        assert torch.equal(a[key], b[key]), key
    with pytest.raises(ValueError, match="made with lr=0.05, this run has lr=0.1"):
        train({**config, "lr": 0.1, "checkpoint_dir": str(tmp_path / "cut")})


def test_a_diverging_run_stops_with_its_reason() -> None:
    result = train({"dataset": "digits", "model": "mlp", "preset": "trace_sam", "epochs": 3,
                    "lr": 1e8, "momentum": 0.0})
    assert result["status"] == "diverged"
    assert "non-finite" in result["reason"]
    assert "test_acc" not in result


def test_trial_exposes_the_pieces() -> None:
    trial = Trial(TrainConfig(dataset="digits", model="mlp", preset="sam", epochs=1))
    assert trial.optimizer.spec.name == "sam"
    assert trial.model.training and trial.splits.val is not None
    metrics = trial.train_epoch()
    assert metrics["epoch"] == 1 and 0 < metrics["train_acc"] <= 1
    assert metrics["sharpness"] > 0


def test_config_errors_name_the_file_field_and_allowed_values(tmp_path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("dataset: digits\nmodel: resnet\n")
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_yaml(path)
    assert str(info.value) == f"{path}: model: unknown value 'resnet'; allowed: resnet18, mlp, cnn"
    path.write_text("dataset: digits\nepochz: 3\n")
    with pytest.raises(ConfigError, match=rf"^{path}: epochz: unknown key; allowed: dataset,"):
        TrainConfig.from_yaml(path)
    path.write_text("dataset: [digits\n")
    with pytest.raises(ConfigError, match=rf"^{path}: yaml: invalid YAML at line 2"):
        TrainConfig.from_yaml(path)
    with pytest.raises(ConfigError, match="^spec.measure.kind: unknown value 'gauss'"):
        TrainConfig(spec={"measure": "gauss"})
    with pytest.raises(ConfigError, match="^n: the variance form"):
        TrainConfig(preset="frob_sam", n=1)


def test_cli_train_json_and_yaml(tmp_path, capsys) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("dataset: digits\nmodel: mlp\nepochs: 2\npreset: sam\n")
    assert main(["train", "--config", str(path), "--epochs", "1", "--json", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["epochs"] == 1 and result["spec"]["name"] == "sam"
    assert result["status"] == "completed" and "test_acc" in result
    assert main(["train", "--dataset", "digitz", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "dataset: unknown dataset 'digitz'" in err
    # a bad device fails in one line before any progress bar is drawn
    assert main(["train", "--dataset", "digits", "--device", "tpu"]) == 2
    err = capsys.readouterr().err
    assert err == ("metasam train: error: device: unknown device 'tpu'; allowed: auto, cpu, "
                   "cuda, cuda:N, mps\n"), err


def test_ready_is_called_once_the_data_are_loaded_and_the_checkpoint_restored(tmp_path) -> None:
    """The CLI draws its progress bar in ``ready``: after the data load (which can take long),
    starting at the epoch a resumed run continues from."""
    config = {"dataset": "digits", "model": "mlp", "preset": "sgd", "epochs": 3,
              "checkpoint_dir": str(tmp_path), "checkpoint_every": 1}
    events: list[tuple[str, int]] = []

    def ready(trial: Trial) -> None:
        assert len(trial.splits.train) > 0 and trial.optimizer is not None
        events.append(("ready", trial.epoch))

    train(config, report=lambda m: events.append(("epoch", m["epoch"])) or m["epoch"] == 2,
          ready=ready)
    assert events == [("ready", 0), ("epoch", 1), ("epoch", 2)]
    events.clear()
    train(config, report=lambda m: events.append(("epoch", m["epoch"])), ready=ready)
    assert events == [("ready", 2), ("epoch", 3)]


def test_a_non_finite_step_surfaces_at_the_epoch_s_end_with_the_weights_before_it() -> None:
    """The trainer's steps are judged on the device: a NaN in step 3's unperturbed pass raises
    when the epoch's verdicts are read, naming step 3, and the weights are step 2's (the steps
    after it were not applied)."""
    from metasam.errors import NonFiniteStepError

    config = TrainConfig(preset="sam", model="mlp", epochs=1, batch_size=256, num_threads=1)
    trial = Trial(config)
    plain_forward, calls, kept = trial.forward, [0], []

    def forward(x: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        if calls[0] == 5:             # the first pass of step 3 (two passes per step)
            kept.extend(p.detach().clone() for p in trial.model.parameters())
            return plain_forward(x) * float("nan")
        return plain_forward(x)

    trial.forward = forward  # type: ignore[assignment]
    steps = len(trial.loader)
    with pytest.raises(NonFiniteStepError, match="unperturbed pass of step 3") as info:
        trial.train_epoch()
    assert info.value.found_at == steps > 3
    assert all(torch.equal(a, p) for a, p in zip(kept, trial.model.parameters(), strict=True))


def test_compile_names_what_is_compiled_and_reads_a_boolean() -> None:
    assert TrainConfig(compile=True).compile == "model"
    assert TrainConfig(compile=False).compile == "none"
    trial = Trial(TrainConfig(compile="step", preset="sam", model="mlp", epochs=1))
    assert trial.forward is trial.model                       # the model runs eagerly
    assert trial.optimizer._kernels is not None and \
        type(trial.optimizer._kernels).__name__ == "CompiledKernels"
    with pytest.raises(ConfigError, match="compile: unknown value 'yes'; allowed: none, model"):
        TrainConfig(compile="yes")


def test_the_epoch_s_metrics_count_only_applied_steps() -> None:
    """Losses weighted by batch size, hits, the mean sharpness and the guard's shares over the
    steps that were applied (a step judged on the host carries no flag: applied)."""
    from metasam.training.trainer import _epoch_sums, _Step

    t = torch.tensor
    yes, no = t(True), t(False)
    steps = [
        _Step(t(1.0), t(30), 32, None, t(2.0), t([1.0, 0.5])),
        _Step(t(3.0), t(10), 32, no, t(100.0), t([0.1, 9.0])),      # not applied
        _Step(t(2.0), t(5), 16, yes, None, None),                    # no sharpness term
        _Step(t(4.0), t(8), 16, yes, t(4.0), t([0.25, 2.0])),
    ]
    out = _epoch_sums(steps, torch.device("cpu"))
    assert out["train_loss"] == pytest.approx((32 * 1.0 + 16 * 2.0 + 16 * 4.0) / 64)
    assert out["train_acc"] == pytest.approx((30 + 5 + 8) / 64)
    assert out["sharpness"] == pytest.approx(3.0)
    assert out["sharpness_share_median"] == 2.0 and out["sharpness_share_max"] == 2.0
    assert out["guarded_steps"] == 1
    assert _epoch_sums([], torch.device("cpu"))["train_loss"] != \
        _epoch_sums([], torch.device("cpu"))["train_loss"]   # NaN: nothing applied
