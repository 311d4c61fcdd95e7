"""The bad-input battery: every case ends in one line on stderr naming the file or option, the
field and what is allowed, exit code 2, no traceback, and nothing written."""

from __future__ import annotations

import functools
import json
import socket
from pathlib import Path

import pytest
import yaml
from _util import SPACE, write_study

from metasam.cli import main
from metasam.errors import ConfigError


def _listing(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*")}


def _refused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: nothing listens there


_SILENT: list[socket.socket] = []


def _silent_port() -> int:
    """A server that accepts connections (the kernel's backlog does) and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    _SILENT.append(server)  # kept open for the rest of the session
    return server.getsockname()[1]


def _study(folder: Path, **extra) -> Path:
    return write_study(folder, name="q", **extra)


def _edit(path: Path, **changes) -> Path:
    data = yaml.safe_load(path.read_text())
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key].update(value)
        else:
            data[key] = value
    path.write_text(yaml.safe_dump(data))
    return path


TRACKED_MODES = ("standard", "population", "learning", "compare")


def _tracked(folder: Path, how: str, mode: str) -> list[str]:
    """The command of a study ``mode`` whose MLflow URI refuses connections or never answers."""
    port = _refused_port() if how == "refused" else _silent_port()
    extra: dict = {"tracking": {"mlflow": f"http://127.0.0.1:{port}"}}
    if mode == "population":
        extra["search"] = {"type": "pbt", "population": 2}
    path = _study(folder, **extra)
    if mode == "learning":
        _edit(path, train={"learn": {"every": 4}})
    return ["compare" if mode == "compare" else "tune", str(path)]


def _created(folder: Path, **changes) -> Path:
    """A study the storage knows (as `tune` leaves it before its first trial), whose file is
    then edited."""
    from metasam.tuning import StudyConfig
    from metasam.tuning.storage import open_storage, open_study

    path = _study(folder)
    config = StudyConfig.from_yaml(path)
    config.check_definition(open_study(open_storage(config.storage), config.name, config.mode),
                            record=True)
    return _edit(path, **changes)


def _space(folder: Path, space: dict) -> Path:
    return _study(folder, space=space)


def _space_twice(folder: Path) -> Path:
    """A space file that gives ``presets`` twice."""
    path = _study(folder)
    space = folder / "space.yaml"
    space.write_text(space.read_text() + "presets: [sam]\n")
    return path


def _file(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


S = SPACE["search"]
# (case id, builder(folder) -> argv, the words the line must hold)
CASES = [
    # study files
    ("trials-0", lambda f: ["tune", str(_study(f, trials=0))], ["q.yaml", "trials", "allowed"]),
    ("trials-text", lambda f: ["tune", str(_study(f, trials="many"))],
     ["q.yaml", "trials", "whole number"]),
    ("test-metric", lambda f: ["tune", str(_study(f, metric="test_acc"))],
     ["q.yaml", "metric", "allowed: val_acc"]),
    ("unknown-key", lambda f: ["tune", str(_study(f, schedulr={}))],
     ["q.yaml", "schedulr", "unknown key", "allowed"]),
    ("cpu-text", lambda f: ["tune", str(_study(f, resources={"cpu": "two"}))],
     ["q.yaml", "resources.cpu", "expected a number"]),
    ("gpu-negative", lambda f: ["tune", str(_study(f, resources={"cpu": 1, "gpu": -1}))],
     ["q.yaml", "resources.gpu", "allowed"]),
    ("model", lambda f: ["tune", str(_study(f, train={"dataset": "digits", "model": "vgg"}))],
     ["q.yaml", "train.model", "allowed: resnet18, mlp, cnn"]),
    ("mode", lambda f: ["tune", str(_study(f, metric="val_loss", mode="max"))],
     ["q.yaml", "mode", "allowed: min"]),
    ("device", lambda f: ["tune", str(_study(f, train={"dataset": "digits", "device": "tpu"}))],
     ["q.yaml", "train.device", "allowed"]),
    ("train-seed", lambda f: ["tune", str(_study(f, train={"dataset": "digits", "seed": 3}))],
     ["q.yaml", "train.seed", "top-level seed"]),
    ("epochs-0", lambda f: ["tune", str(_study(f, epochs=0))],
     ["q.yaml", "train.epochs", "allowed"]),
    ("lr-negative", lambda f: ["tune", str(_study(f, train={"dataset": "digits", "lr": -1}))],
     ["q.yaml", "train.lr", "allowed"]),
    ("concurrency-0", lambda f: ["tune", str(_study(f, concurrency=0))],
     ["q.yaml", "concurrency", "allowed"]),
    ("scheduler", lambda f: ["tune", str(_study(f, scheduler={"type": "hyperband"}))],
     ["q.yaml", "scheduler.type", "allowed"]),
    ("grace", lambda f: ["tune", str(_study(f, heartbeat={"interval": 10, "grace": 1}))],
     ["q.yaml", "heartbeat.grace", "allowed"]),
    ("race-top-k", lambda f: ["tune", str(_study(f, race={"top_k": -1}))],
     ["q.yaml", "race.top_k", "allowed"]),
    ("tracking-flag", lambda f: ["tune", str(_edit(_study(f), tracking={"tensorboard": "on"}))],
     ["q.yaml", "tracking.tensorboard", "true", "false"]),
    ("tracking-key", lambda f: ["tune", str(_edit(_study(f), tracking={"neptune": "x"}))],
     ["q.yaml", "tracking", "neptune", "mlflow"]),
    # an MLflow URI that refuses connections: every study mode, before Ray starts, a run
    # trains or the storage is written (test_tracking_check_is_bounded: one that never answers)
    *[(f"tracking-mlflow-refused-{mode}", functools.partial(_tracked, how="refused", mode=mode),
       ["q.yaml", "tracking.mlflow", "127.0.0.1", "allowed"]) for mode in TRACKED_MODES],
    # a budget the stages cannot fit, a confirmation budget below its first look
    ("quick-budget-small", lambda f: ["tune", str(_study(f, effort="quick", budget=5,
                                                         race={}))],
     ["q.yaml", "budget", "cannot hold the race", "allowed: 10 or more"]),
    ("thorough-budget-small", lambda f: ["tune", str(_study(f, budget=20, race={}))],
     ["q.yaml", "budget", "cannot hold", "allowed"]),
    ("confirm-budget-below-look", lambda f: ["tune", str(_study(
        f, effort="quick", race={"confirm_budget": 5}))],
     ["q.yaml", "race.confirm_budget", "first look", "allowed: 0 (no confirmation) or 8"]),
    ("effort", lambda f: ["tune", str(_study(f, effort="fast"))],
     ["q.yaml", "effort", "allowed", "quick"]),
    # the knowledge base of `recommend`: corrupt, foreign, newer: never a silent empty one
    ("recommend-knowledge-corrupt", lambda f: ["recommend", str(_study(f)), "--knowledge",
                                               str(_file(f, "kb.json", "{not json"))],
     ["kb.json", "invalid JSON", "allowed"]),
    ("recommend-knowledge-foreign", lambda f: ["recommend", str(_study(f)), "--knowledge",
                                               str(_file(f, "kb.json", '{"records": []}'))],
     ["kb.json", "format", "metasam-knowledge-base/1"]),
    ("recommend-knowledge-newer", lambda f: ["recommend", str(_study(f)), "--knowledge", str(
        _file(f, "kb.json", '{"format": "metasam-knowledge-base/9"}'))],
     ["kb.json", "newer metasam", "allowed"]),
    ("recommend-knowledge-missing", lambda f: ["recommend", str(_study(f)), "--knowledge",
                                               str(f / "gone.json")],
     ["--knowledge", "gone.json", "allowed"]),
    ("tracking-absent", lambda f: ["tune", str(_edit(_study(f), tracking={"wandb": "proj"}))],
     ["q.yaml", "tracking.wandb", "wandb package", "pip install wandb"]),
    ("race-key", lambda f: ["tune", str(_study(f, race={"seeds": 3}))],
     ["q.yaml", "race", "seeds", "budget"]),
    ("race-holdout", lambda f: ["tune", str(_study(f, race={"holdout": 0.95}))],
     ["q.yaml", "race.holdout", "allowed"]),
    ("race-holdout-val", lambda f: ["tune", str(_study(
        f, train={"dataset": "digits", "val_fraction": 0.5}, race={"holdout": 0.6}))],
     ["q.yaml", "race.holdout", "leaves no training data", "allowed"]),
    ("race-power", lambda f: ["tune", str(_study(f, race={"power": 1.5}))],
     ["q.yaml", "race.power", "allowed"]),
    ("val-scope", lambda f: ["train", "--val-scope", "holdout"],
     ["val_scope", "holdout needs", "allowed"]),
    ("confirm-gone", lambda f: ["tune", str(_study(f, confirm={"top_k": 3, "seeds": 3}))],
     ["q.yaml", "confirm", "replaced by the race", "race: {top_k"]),
    ("storage-url", lambda f: ["tune", str(_study(f, storage="redis://host"))],
     ["q.yaml", "storage", "allowed: sqlite:///FILE"]),
    ("journal-folder", lambda f: ["tune", str(_study(f, storage="journal:nowhere/j.log"))],
     ["q.yaml", "storage", "does not exist", "allowed"]),
    ("duplicated-key", lambda f: ["tune", str(_file(f, "q.yaml", _study(f).read_text()
                                                    + "trials: 7\n"))],
     ["q.yaml", "trials", "duplicated key", "allowed"]),
    ("yaml-syntax", lambda f: ["tune", str(_file(f, "q.yaml", "name: [q\ntrials: 3\n"))],
     ["q.yaml", "invalid YAML at line"]),
    ("missing-file", lambda f: ["tune", str(f / "absent.yaml")], ["absent.yaml", "cannot read"]),
    ("not-a-mapping", lambda f: ["tune", str(_file(f, "q.yaml", "- 1\n- 2\n"))],
     ["q.yaml", "mapping"]),
    ("missing-space", lambda f: ["tune", str(_edit(_study(f), search_space="gone.yaml"))],
     ["q.yaml", "search_space", "gone.yaml", "allowed"]),
    # search-space files
    ("rho-range", lambda f: ["tune", str(_space(f, {"search": {**S, "rho": [0.5, 0.1]}}))],
     ["space.yaml", "search.rho", "allowed"]),
    ("preset", lambda f: ["tune", str(_space(f, {"presets": ["sgd", "samm"]}))],
     ["space.yaml", "presets", "allowed"]),
    ("psi", lambda f: ["tune", str(_space(f, {"search": {**S, "psi": ["identity", "x"]}}))],
     ["space.yaml", "search.psi[1].fn", "allowed"]),
    ("measure", lambda f: ["tune", str(_space(f, {"search": {**S, "measure": {"kinds":
                                                                               ["gauss"]}}}))],
     ["space.yaml", "search.measure.kinds", "allowed"]),
    ("point-lam", lambda f: ["tune", str(_space(f, {"points": [{"preset": "frob_sam",
                                                                 "lam": -1.0}]}))],
     ["space.yaml", "points[0].lam", "allowed"]),
    ("space-n", lambda f: ["tune", str(_space(f, {"search": {**S, "n": [1, "x"]}}))],
     ["space.yaml", "search.n[1]", "whole number"]),
    ("space-duplicated", lambda f: ["tune", str(_space_twice(f))],
     ["space.yaml", "presets", "duplicated key"]),
    # spec and export files
    ("explain-truncated", lambda f: ["explain", str(_file(f, "s.json", '{"phi": "identity",'))],
     ["s.json", "invalid JSON", "allowed"]),
    ("explain-text", lambda f: ["explain", str(_file(f, "s.json", "hello"))],
     ["s.json", "invalid JSON"]),
    ("explain-array", lambda f: ["explain", str(_file(f, "s.json", "[1, 2]"))],
     ["s.json", "JSON object", "allowed"]),
    ("explain-export-without-spec", lambda f: ["explain", str(_file(
        f, "s.json", json.dumps({"format": "metasam.optimizer/1"})))], ["s.json", "format"]),
    ("explain-preset", lambda f: ["explain", "samm"], ["samm", "allowed", "frob_sam"]),
    ("train-spec-truncated", lambda f: ["train", "--dataset", "digits", "--spec", str(
        _file(f, "s.json", '{"phi": "identity",'))], ["s.json", "invalid JSON"]),
    ("train-spec-text-truncated", lambda f: ["train", "--dataset", "digits", "--spec",
                                             '{"phi": "identity", "psi": '],
     ["--spec", "invalid JSON", "allowed"]),
    ("train-learn-text-truncated", lambda f: ["train", "--dataset", "digits", "--learn",
                                              '{"every": '], ["learn", "not JSON", "allowed"]),
    ("train-no-data", lambda f: ["train", "--dataset", "mnist", "--data-dir", str(f)],
     ["--dataset", "mnist", "not found", "--download"]),
    ("train-spec-array", lambda f: ["train", "--dataset", "digits", "--spec", str(
        _file(f, "s.json", "[1]"))], ["s.json", "spec", "mapping"]),
    ("spec-field", lambda f: ["explain", str(_file(f, "s.json", json.dumps(
        {"phi": "identity", "psi": "variance", "n": 2})))], ["s.json", "psi", "allowed"]),
    # storages
    ("sqlite-corrupted", lambda f: ["trials", str(_study(f))] if _file(
        f, "q.db", "not a database " * 200) else [], ["q.db", "file is not a database"]),
    ("sqlite-folder-is-a-file", lambda f: ["tune", str(_study(
        f, storage=f"sqlite:///{_file(f, 'plain', 'x')}/q.db"))],
     ["plain/q.db", "unable to open database file", "allowed"]),
    ("postgres-refused", lambda f: ["trials", str(_study(
        f, storage=f"postgresql://u@127.0.0.1:{_refused_port()}/db?connect_timeout=3"))],
     ["postgresql://u@127.0.0.1", "refused", "allowed"]),
    ("postgres-silent", lambda f: ["trials", str(_study(
        f, storage=f"postgresql://u@127.0.0.1:{_silent_port()}/db?connect_timeout=2"))],
     ["postgresql://u@127.0.0.1", "timeout", "allowed"]),
    ("best-never-ran", lambda f: ["best", str(_study(f))], ["q.db", "does not exist"]),
    ("trials-never-ran", lambda f: ["trials", str(_study(f))], ["q.db", "does not exist"]),
    ("report-never-ran", lambda f: ["report", str(_study(f))], ["q.db", "does not exist"]),
    ("explain-never-ran", lambda f: ["explain", str(_study(f))], ["q.db", "does not exist"]),
    ("dashboard-never-ran", lambda f: ["dashboard", str(_study(f))],
     ["q.db", "does not exist"]),
    ("changed-mode", lambda f: ["best", str(_created(f, metric="val_loss", mode="min"))],
     ["q.yaml", "metric", "'val_acc'", "'val_loss'", "new study"]),
    ("changed-epochs", lambda f: ["tune", str(_created(f, train={"epochs": 5}))],
     ["q.yaml", "train.epochs", "3", "5", "new study"]),
    # command-line overrides
    ("tune-trials-0", lambda f: ["tune", str(_study(f)), "--trials", "0"],
     ["--trials", "allowed"]),
    ("tune-trials-negative", lambda f: ["tune", str(_study(f)), "--trials", "-5"],
     ["--trials", "allowed"]),
    ("tune-concurrency-0", lambda f: ["tune", str(_study(f)), "--concurrency", "0"],
     ["--concurrency", "allowed"]),
    ("tune-top-k-0", lambda f: ["tune", str(_study(f)), "--top-k", "0"], ["--top-k", "allowed"]),
    ("compare-seeds-0", lambda f: ["compare", str(_study(f)), "--seeds", "0"],
     ["--seeds", "allowed"]),
    ("train-epochs-0", lambda f: ["train", "--dataset", "digits", "--epochs", "0"],
     ["epochs", "allowed"]),
    ("train-dataset", lambda f: ["train", "--dataset", "imagenet"], ["dataset", "allowed"]),
    ("train-precision", lambda f: ["train", "--dataset", "digits", "--fp16", "--bf16"],
     ["fp16", "allowed"]),
    ("dashboard-port", lambda f: ["dashboard", str(_study(f)), "--port", "0"],
     ["--port", "allowed"]),
    # the meta section, --meta and knowledge files
    ("meta-not-mapping", lambda f: ["tune", str(_study(f, meta="x.yaml"))], ["meta", "from"]),
    ("meta-from-empty", lambda f: ["tune", str(_study(f, meta={"from": []}))],
     ["q.yaml", "meta.from", "allowed"]),
    ("meta-from-suffix", lambda f: ["tune", str(_study(f, meta={"from": ["a.txt"]}))],
     ["q.yaml", "meta.from[0]", "a.txt", ".json"]),
    ("meta-from-missing", lambda f: ["tune", str(_study(f, meta={"from": ["gone.yaml"]}))],
     ["q.yaml", "meta.from[0]", "gone.yaml"]),
    ("meta-k-0", lambda f: ["tune", str(_study(f, meta={"from": ["q.yaml"], "k": 0}))],
     ["q.yaml", "meta.k", "allowed"]),
    ("meta-box-2", lambda f: ["tune", str(_study(f, meta={"from": ["q.yaml"], "box": 2}))],
     ["q.yaml", "meta.box", "allowed"]),
    ("meta-unknown-key", lambda f: ["tune", str(_study(f, meta={"from": ["q.yaml"],
                                                                 "kk": 1}))],
     ["q.yaml", "meta", "kk", "allowed"]),
    ("tune-meta-box", lambda f: ["tune", str(_study(f)), "--meta", str(_study(f)),
                                 "--meta-box", "1.5"], ["--meta-box", "allowed"]),
    ("tune-meta-k-alone", lambda f: ["tune", str(_study(f)), "--meta-k", "2"],
     ["--meta-k", "allowed", "--meta PRIOR"]),
    ("tune-meta-missing", lambda f: ["tune", str(_study(f)), "--meta", str(f / "gone.yaml")],
     ["--meta", "gone.yaml"]),
    ("knowledge-not-json", lambda f: ["meta", str(_file(f, "kb.json", "{not json"))],
     ["kb.json", "not a knowledge file", "allowed"]),
    ("knowledge-format", lambda f: ["meta", str(_file(f, "kb.json", '{"records": []}'))],
     ["kb.json", "format", "metasam-knowledge/1"]),
    ("knowledge-record", lambda f: ["meta", str(_file(
        f, "kb.json", '{"format": "metasam-knowledge/1", "records": [{"task": "a"}]}'))],
     ["kb.json", "records[0]", "allowed"]),
    ("meta-save-suffix", lambda f: ["meta", str(_study(f)), "--save", str(f / "kb.txt")],
     ["--save", "FILE.json"]),
]


@pytest.mark.parametrize("case, build, words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_line_and_exit_2(case, build, words, tmp_path, capsys) -> None:
    folder = tmp_path / "case"
    folder.mkdir()
    argv = build(folder)
    before = _listing(tmp_path)
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err
    assert err.count("\n") == 1 and err.startswith(f"metasam {argv[0]}: error: "), err
    assert "Traceback" not in err
    for word in words:
        assert word in err, (word, err)
    assert _listing(tmp_path) == before, "the command wrote something"


@pytest.mark.parametrize("mode", TRACKED_MODES)
def test_tracking_check_is_bounded(mode, tmp_path, capsys, monkeypatch) -> None:
    """A tracking server that accepts connections and never answers is given up on within the
    check's deadline (one try), not after MLflow's own minutes of retries."""
    import time

    from metasam.tuning import tracking

    monkeypatch.setattr(tracking, "PROBE_TIMEOUT", 1.0)   # the suite's time; 5 s shipped
    folder = tmp_path / "case"
    folder.mkdir()
    argv = _tracked(folder, "silent", mode)
    before = _listing(tmp_path)
    started = time.monotonic()
    assert main(argv) == 2
    assert time.monotonic() - started < 6 * tracking.PROBE_TIMEOUT   # MLflow's own: minutes
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "q.yaml" in err and "no answer within" in err, err
    assert _listing(tmp_path) == before, "the command wrote something"


def test_every_case_names_its_culprit() -> None:
    """Each case checks at least two words of its message (what is wrong and where), and no two
    cases share an id."""
    assert all(len(words) >= 2 for _, _, words in CASES), [c for c, _, w in CASES if len(w) < 2]
    assert len({c for c, _, _ in CASES}) == len(CASES)


@pytest.mark.parametrize("text, words", [
    ("[1, 2]", ["JSON object", "list"]),
    ('{"format": "metasam.optimizer/1"}', ["spec: missing"]),
    ('{"format": "metasam.optimizer/1", "spec": {}, "base_optimizer": {"name": "lbfgs"}}',
     ["base_optimizer.name", "allowed: sgd"]),
    ('{"spec": ', ["invalid JSON"]),
    ("plain text", ["invalid JSON"]),
])
def test_load_optimizer_names_the_file_and_field(tmp_path, text: str, words: list[str]) -> None:
    import torch

    from metasam import load_optimizer

    path = tmp_path / "best.json"
    path.write_text(text)
    with pytest.raises(ValueError) as info:
        load_optimizer(path, torch.nn.Linear(2, 1).parameters())
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    for word in words:
        assert word in message, message


@pytest.mark.parametrize("resources, words", [
    ({"cpu": 1, "gpu": 1}, ["gpu=1", "gpu=0", "allowed: cpu ≤"]),
    ({"cpu": 512}, ["cpu=512", "allowed: cpu ≤"]),
])
def test_resources_no_node_has_fail_fast(tmp_path, capsys, monkeypatch, ray_cluster,
                                         resources, words) -> None:
    """Ray would keep such trials pending forever; on a joined cluster metasam waits
    $METASAM_RESOURCE_WAIT seconds for a node to join, then fails in one line."""
    monkeypatch.setenv("METASAM_RESOURCE_WAIT", "1")
    path = _study(tmp_path, resources=resources)
    assert main(["tune", str(path), "--address", ray_cluster, "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "waiting up to 1 s" in err[-2], "\n".join(err)
    assert err[-1].startswith("metasam tune: error: ") and "q.yaml: resources" in err[-1]
    for word in words:
        assert word in err[-1], err[-1]
    from metasam.tuning import StudyConfig
    from metasam.tuning.storage import census, load_study

    config = StudyConfig.from_yaml(path)
    assert census(load_study(config.storage, config.name)).finished == 0


def test_compat_check_names_what_an_incompatible_release_lacks(monkeypatch) -> None:
    import optuna

    from metasam.tuning import compat

    monkeypatch.setattr(compat, "_checked", False)
    compat.check()  # the installed versions have everything
    monkeypatch.setattr(compat, "_checked", False)
    from ray.tune.search.optuna import OptunaSearch

    original = OptunaSearch.__init__

    def without_trials(self, *args, **kwargs):  # a release that renamed the attribute
        original(self, *args, **kwargs)
        del self._ot_trials

    monkeypatch.setattr(OptunaSearch, "__init__", without_trials)
    with pytest.raises(ConfigError, match=r"lack OptunaSearch\._ot_trials; allowed"):
        compat.check()
    monkeypatch.setattr(OptunaSearch, "__init__", original)
    monkeypatch.setattr(compat, "_checked", False)
    import ray.tune.schedulers

    original_asha = ray.tune.schedulers.ASHAScheduler.__init__

    def without_rungs(self, *args, **kwargs):  # a release that renamed ASHA's bookkeeping
        original_asha(self, *args, **kwargs)
        del self._trial_info

    monkeypatch.setattr(ray.tune.schedulers.ASHAScheduler, "__init__", without_rungs)
    with pytest.raises(ConfigError, match=r"lack ASHAScheduler\._trial_info") as info:
        compat.check()
    assert optuna.__version__ in str(info.value)
