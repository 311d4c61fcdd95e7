"""The typed study protocol (labels, statuses, outcomes), the spec trap, and the command line's
two error channels (bad input: one line, exit 2; a bug: an internal error, exit 1)."""

from __future__ import annotations

import json

import pytest

from metasam import SharpnessSpec, presets
from metasam.errors import SpecError
from metasam.tuning.trials import SEARCH, Label, Role, Status, TrialOutcome


def test_labels_round_trip_and_their_keys_are_unique():
    labels = [SEARCH, Label(Role.REFERENCE, "sam", preset="sam"),
              Label(Role.POINT, "frob_sam lam=0.01", preset="frob_sam"),
              Label(Role.WARM, "other#3", preset="sam"),
              Label(Role.META, "b:frob_sam", preset="frob_sam"),
              Label(Role.RACE, "sam ρ=0.1", preset="sam", trial=3, instance=1),
              Label(Role.RACE, "sam ρ=0.1", preset="sam", trial=3, instance=2),
              Label(Role.RACE, "sam", preset="sam", trial=1, instance=1),
              Label(Role.COMPARE, "best", instance=0)]
    for label in labels:
        assert Label.from_dict(json.loads(json.dumps(label.to_dict()))) == label
    assert len({lb.key for lb in labels}) == len(labels)
    assert [lb.is_point for lb in labels] == [False] + [True] * (len(labels) - 1)
    assert labels[1].is_reference("sam") and not labels[1].is_reference("sgd")
    assert not labels[2].is_reference()  # a grid point is not a preset's reference point


def test_labels_of_studies_stored_before_they_were_structured():
    names = presets.NAMES
    assert Label.legacy("search", names) == SEARCH
    assert Label.legacy("sgd", names) == Label(Role.REFERENCE, "sgd", preset="sgd")
    # anything else keeps its whole name, never taken apart
    assert Label.legacy("frob_sam lam=0.01", names) == Label(Role.POINT, "frob_sam lam=0.01")


@pytest.mark.parametrize("result, error, expected", [
    ({"status": "completed", "epoch": 3}, False, (Status.COMPLETED, True)),
    ({"status": "completed", "epoch": 2}, False, (Status.COMPLETED, False)),
    ({"status": "running", "epoch": 1}, False, (Status.STOPPED, False)),
    ({"status": "diverged", "epoch": 2}, False, (Status.DIVERGED, False)),
    ({}, True, (Status.FAILED, False)),
    ({}, False, (Status.STOPPED, False)),
])
def test_trial_outcomes(result, error, expected):
    outcome = TrialOutcome.of_result(result, 3, error)
    assert (outcome.status, outcome.full_budget) == expected
    assert outcome.status.failed == (expected[0] in (Status.DIVERGED, Status.FAILED))
    with pytest.raises(ValueError):
        TrialOutcome.of_result({"status": "finished"}, 3, False)  # not a status


@pytest.mark.parametrize("name", presets.NAMES)
def test_a_dict_naming_a_preset_is_that_preset_with_overrides(name):
    spec = SharpnessSpec.coerce({"name": name, "rho": 0.305})
    assert spec == presets.get(name, rho=0.305)
    # and so through JSON, as `train --spec FILE` and load_optimizer read it
    assert SharpnessSpec.from_json(json.dumps({"name": name, "rho": 0.305})) == spec
    # a full dict (what to_dict writes) is the same member, unchanged
    assert SharpnessSpec.coerce(spec.to_dict()) == spec


@pytest.mark.parametrize("name", [n for n in presets.NAMES if n != "sgd"])
def test_a_dict_naming_a_preset_but_another_member_is_refused(name):
    other_kind = "sphere" if presets.get(name).measure.kind != "sphere" else "gaussian"
    with pytest.raises(SpecError, match=rf"name: '{name}' names a preset, but .* different "
                                        "member"):
        SharpnessSpec.coerce({"name": name, "measure": other_kind})
    with pytest.raises(SpecError, match="different member"):
        SharpnessSpec.coerce({"name": name, "psi": "sum", "phi": ["identity", "square"]})


def test_sgd_with_a_sharpness_term_is_not_sgd():
    with pytest.raises(SpecError, match="different member"):
        SharpnessSpec.coerce({"name": "sgd", "lam": 0.1})
    assert SharpnessSpec.coerce({"name": "sgd", "rho": 0.2}).lam == 0.0


def test_ssam_named_dict_trains_as_ssam_f():
    """The trap as a user met it: SSAM-F at ρ = 0.305, not a Gaussian member named ssam."""
    spec = SharpnessSpec.coerce({"name": "ssam", "rho": 0.305})
    assert spec.measure.kind == "sparse_ascent" and spec.rho == 0.305
    assert spec.measure.sparsity == presets.ssam().measure.sparsity


def test_a_bug_is_an_internal_error_not_bad_input(monkeypatch, capsys, tmp_path):
    from metasam import cli
    from metasam.errors import ConfigError

    def broken(args):
        raise ValueError("an index went wrong")

    def bad_input(args):
        raise ConfigError("trials", "out of range: 0", "whole numbers ≥ 1", "s.yaml")

    import argparse
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    for run, code in ((broken, 1), (bad_input, 2)):
        parser = cli.build_parser()
        monkeypatch.setattr(parser, "parse_args",
                            lambda argv, run=run: argparse.Namespace(command="trials", run=run))
        monkeypatch.setattr(cli, "build_parser", lambda parser=parser: parser)
        assert cli.main(["trials", "x.yaml"]) == code
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("metasam trials: internal error (a bug in metasam")
    assert "ValueError: an index went wrong" in err[0] and "traceback written to" in err[0]
    written = list(tmp_path.glob("metasam-traceback-*.txt"))
    assert len(written) == 1 and "an index went wrong" in written[0].read_text()
    assert err[1] == ("metasam trials: error: s.yaml: trials: out of range: 0; allowed: whole "
                      "numbers ≥ 1")


def test_a_placement_says_where_a_trial_ran():
    import socket

    import torch

    import metasam
    from metasam.tuning.placement import Placement

    here = Placement.here(torch.device("cpu"))
    assert (here.host, here.device, here.threads) == (socket.gethostname(), "cpu",
                                                      torch.get_num_threads())
    assert (here.torch, here.metasam) == (torch.__version__, metasam.__version__)
    assert Placement.from_dict(json.loads(json.dumps(here.to_dict()))) == here
    on_a_node = Placement("gpu-7", "cuda:0", 8, "2.9", "0.1.0", node="a1b2c3d4e5f6",
                          gpu="NVIDIA H200", gpu_ids=["3"])
    assert on_a_node.where == "gpu-7/a1b2c3d4/NVIDIA H200"
    assert here.where.startswith(socket.gethostname() + "/") and here.where.endswith("/cpu")


def test_one_resolver_reads_a_preset_a_spec_file_an_export_or_a_study(tmp_path) -> None:
    import json

    import torch

    from metasam import presets
    from metasam.errors import ConfigError
    from metasam.workflow import load_optimizer, load_recipe, resolve_export, resolve_spec

    assert resolve_spec("frob_sam") == presets.frob_sam()
    spec_file = tmp_path / "mine.json"
    spec_file.write_text(json.dumps(presets.trace_sam(rho=0.02).to_dict() | {"name": None}))
    mine = resolve_spec(str(spec_file))
    assert mine.name == "mine" and mine.rho == 0.02
    export = {"format": "metasam.optimizer/1", "spec": presets.sam(rho=0.07).to_dict(),
              "base_optimizer": {"name": "sgd", "lr": 0.1}}
    export_file = tmp_path / "best.json"
    export_file.write_text(json.dumps(export))
    assert resolve_spec(str(export_file)).rho == 0.07
    assert resolve_export(export) is export and resolve_export(str(export_file)) == \
        str(export_file)
    for load in (load_optimizer, load_recipe):
        with pytest.raises(ConfigError, match="file not found"):
            load(str(tmp_path / "missing.yaml"), [torch.zeros(1, requires_grad=True)])
    with pytest.raises(ConfigError, match="neither a preset, a JSON file nor a study YAML"):
        resolve_spec(str(tmp_path / "missing.json"))
