"""A study on a two-node Ray cluster built by docs/cluster.md's by-hand recipe — its commands,
read from that file: a head (``ray start --head``) and a worker node (``ray start --address
HEAD``), each in a process group of its own on this machine, a real storage (PostgreSQL where
the suite has one, the journal file), trials that must run on both nodes, and the worker node
killed while it runs a trial.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from _util import (
    DEADLINE_PROCESS,
    assert_complete_and_unique,
    by_hand_recipe,
    metasam_cli,
    wait_for,
    write_study,
)
from conftest import kill_node, ray_head, ray_start, stop_group

from metasam.tuning import StudyConfig
from metasam.tuning.record import TrialRecord
from metasam.tuning.storage import StudyNotFoundError, census, load_study

pytestmark = [pytest.mark.ray, pytest.mark.spawn, pytest.mark.slow]


def _recipe(words: list[str], port: int) -> list[str]:
    """A ``ray start`` line of the recipe, on this machine: every node on 127.0.0.1, one CPU,
    no GPU, the head's port a free one."""
    values = {"HEAD_IP": "127.0.0.1", "WORKER_IP": "127.0.0.1", "CPUS": "1", "GPUS": "0",
              "6379": str(port)}
    out = []
    for word in words[2:]:  # after "ray start"
        for key, value in values.items():
            word = word.replace(key, value)
        out.append(word)
    return out


def _worker_node_id(address: str) -> str:
    """The Ray node id of the node that has the custom resource ``worker`` (asked in a process
    of its own: this test process never joins the cluster)."""
    code = (f"import ray, json; ray.init(address={address!r}, log_to_driver=False); "
            "print(json.dumps([n['NodeID'] for n in ray.nodes() if n['Alive'] and "
            "n['Resources'].get('worker')]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "RAY_AUTH_MODE": "disabled"}, timeout=120)
    ids = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(ids) == 1, out.stderr[-2000:]
    return ids[0]


def _nodes_of(config: StudyConfig) -> set[str]:
    return {TrialRecord.of(t).placement.node for t in census(load_study(
        config.storage, config.name)).counted if TrialRecord.of(t).placement}


def _running_on(config: StudyConfig, node: str, left: int) -> bool:
    """Does a trial run on ``node`` with at least ``left`` epochs to go (so that it is still
    running when the node is killed a moment later)?"""
    try:
        study = load_study(config.storage, config.name)
    except StudyNotFoundError:
        return False
    return any(t.state.name == "RUNNING" and TrialRecord.of(t).placement is not None
               and TrialRecord.of(t).placement.node == node
               and len(t.intermediate_values) <= config.train.epochs - left
               for t in study.trials)


def test_a_study_on_two_nodes_survives_losing_one(tmp_path, request) -> None:
    # the storage both phases share the cluster with: PostgreSQL if the suite has one
    try:
        shared = request.getfixturevalue("postgres_url")
    except pytest.skip.Exception:
        shared = None
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    head_words, worker_words, tune_words = by_hand_recipe()
    assert tune_words[:2] == ["metasam", "tune"]  # run below through metasam_cli
    with ray_head(1, args_for=lambda port: _recipe(head_words, port)) as address:
        port = int(address.rpartition(":")[2])
        # the recipe's worker, plus a resource that tells this test which node it is
        worker = ray_start(*_recipe(worker_words, port), '--resources={"worker": 1}')
        try:
            worker_node = _worker_node_id(address)
            # 1. two trials at a time, one CPU per node: the study must use both nodes
            extra = {"storage": shared} if shared else {}
            first = write_study(tmp_path / "a", name="two-nodes", trials=6, epochs=2,
                                concurrency=2, **extra)
            done = subprocess.run(metasam_cli("tune", str(first), "--address", address,
                                              "--quiet"), env=env, capture_output=True,
                                  text=True, timeout=DEADLINE_PROCESS)
            assert done.returncode == 0, done.stderr[-3000:]
            config = StudyConfig.from_yaml(first)
            assert_complete_and_unique(config)
            nodes = _nodes_of(config)
            assert len(nodes) == 2 and worker_node in nodes
            listing = subprocess.run(metasam_cli("trials", str(first)), env=env,
                                     capture_output=True, text=True, timeout=300)
            assert "ran on 2 Ray node(s) on 1 host(s)" in listing.stdout
            assert worker_node[:8] in listing.stdout

            # 2. the journal file; the worker node is killed while it runs a trial
            second = write_study(tmp_path / "b", name="lose-a-node", trials=5, epochs=20,
                                 concurrency=2, storage="journal:lose-a-node.log")
            config = StudyConfig.from_yaml(second)
            run = subprocess.Popen(metasam_cli("tune", str(second), "--address", address,
                                               "--quiet"), env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
            try:
                wait_for(lambda: _running_on(config, worker_node, left=10), DEADLINE_PROCESS,
                         "a trial running on the worker node")
                kill_node(worker)
                out, _ = run.communicate(timeout=DEADLINE_PROCESS)
            finally:
                if run.poll() is None:
                    run.kill()
            assert run.returncode == 0, out[-3000:]
        finally:
            stop_group(worker)
    # every trial finished exactly once; the killed node's trial was re-run, and says so
    state = assert_complete_and_unique(config)
    assert state.interrupted >= 1 and state.failed == 0
    study = load_study(config.storage, config.name)
    lost = [TrialRecord.of(t) for t in study.trials if TrialRecord.of(t).interrupted]
    # the trial the worker was running; also any trial Ray placed on it before it noticed the
    # node was gone (those never reported, so they have no placement)
    assert any(r.placement is not None and r.placement.node == worker_node for r in lost)
    assert all(r.placement is None or r.placement.node == worker_node for r in lost)
    retries = {TrialRecord.of(t).retry_of for t in state.counted} - {None}
    assert retries == {r.number for r in lost}
    assert "interrupted and re-run" in state.describe(config.trials)
