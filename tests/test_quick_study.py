"""A quick study end to end, through the command line: the plan first, the race among the
candidates named in advance, the sequential confirmation; killed (SIGKILL) in the race and
again in the confirmation, it resumes with no run lost or repeated and names the winner an
uninterrupted study names on the same floating-point path."""

from __future__ import annotations

import os
import signal
import subprocess
from collections import Counter

import optuna
import pytest
from _util import DEADLINE_EVENT, metasam_cli, wait_for, write_study

from metasam.tuning import StudyConfig
from metasam.tuning.storage import StudyNotFoundError, load_study

pytestmark = [pytest.mark.slow, pytest.mark.spawn]

DEADLINE = 600


def _quick(folder) -> StudyConfig:
    # a confirmation the plan can afford on digits: it is asked to see 30 points
    path = write_study(folder, name="quick", epochs=2, concurrency=1, effort="quick",
                       budget=18, race={"detect": 0.3, "power": 0.8})
    return StudyConfig.from_yaml(path)


def _finished(config: StudyConfig, suffix: str) -> list[optuna.trial.FrozenTrial]:
    try:
        study = load_study(config.storage, f"{config.name}.{suffix}")
    except StudyNotFoundError:
        return []
    return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))


def _values(config: StudyConfig, suffix: str) -> dict[str, float]:
    runs = _finished(config, suffix)
    keys = Counter(t.user_attrs["point"] for t in runs)
    repeated = [k for k, n in keys.items() if n > 1]
    assert not repeated, f"runs repeated: {repeated}"
    return {t.user_attrs["point"]: t.value for t in runs}


def _run(config: StudyConfig, address: str, until=None) -> subprocess.CompletedProcess | None:
    """``metasam tune`` on the study; with ``until``, SIGKILLed once ``until()`` holds."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    argv = metasam_cli("tune", str(config.path), "--address", address)
    if until is None:
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=DEADLINE)
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        wait_for(until, DEADLINE_EVENT, "the kill point")
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    return None


def test_a_killed_quick_study_resumes_with_no_run_lost_or_repeated(tmp_path, ray_cluster):
    config = _quick(tmp_path / "killed")
    _run(config, ray_cluster, until=lambda: len(_finished(config, "race")) >= 3)
    race_before = _values(config, "race")
    assert 3 <= len(race_before) < 10, "the kill should land inside the race"
    _run(config, ray_cluster, until=lambda: len(_finished(config, "verdict")) >= 1)
    verdict_before = _values(config, "verdict")
    assert len(_values(config, "race")) == 10
    assert 1 <= len(verdict_before) < 8, "the second kill should land inside the confirmation"
    last = _run(config, ray_cluster)
    assert last.returncode == 0, last.stderr[-3000:]
    race, verdict = _values(config, "race"), _values(config, "verdict")
    for before, after in ((race_before, race), (verdict_before, verdict)):
        assert all(after[k] == v for k, v in before.items())   # nothing finished was lost
    assert len(race) == 10 and 2 <= len(verdict) <= 8

    # the same study, never interrupted: the same runs, the same winner and verdict
    clean = _quick(tmp_path / "clean")
    whole = _run(clean, ray_cluster)
    assert whole.returncode == 0, whole.stderr[-3000:]
    assert "plan: 18 full-run equivalents of a budget of 18" in whole.stderr
    assert _values(clean, "race") == race and _values(clean, "verdict") == verdict

    def winner(text: str) -> str:
        return next(line for line in text.splitlines() if line.startswith("winner: "))

    assert winner(whole.stdout) == winner(last.stdout)
    assert "look 1: z = " in whole.stdout and "cost: " in whole.stdout
