"""The cluster recipes of docs/cluster.md parse: the launcher YAML and the RayJob manifest have
the fields Ray and KubeRay read, the SLURM script is valid bash, and the by-hand recipe is the
three commands the multi-node test runs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from _util import by_hand_recipe

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def test_the_cluster_launcher_yaml_has_what_ray_up_reads():
    config = yaml.safe_load((RECIPES / "cluster-launcher.yaml").read_text())
    assert {"cluster_name", "provider", "available_node_types", "head_node_type",
            "setup_commands", "head_start_ray_commands",
            "worker_start_ray_commands"} <= set(config)
    assert config["head_node_type"] in config["available_node_types"]
    assert config["provider"]["type"] == "local" and config["provider"]["worker_ips"]
    assert any("metasam" in c for c in config["setup_commands"])
    assert any(c.startswith("ray start --head") for c in config["head_start_ray_commands"])


def test_the_rayjob_manifest_has_what_kuberay_reads():
    job = yaml.safe_load((RECIPES / "rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert spec["entrypoint"].split()[:2] == ["metasam", "tune"]
    cluster = spec["rayClusterSpec"]
    head = cluster["headGroupSpec"]["template"]["spec"]
    assert head["containers"][0]["volumeMounts"][0]["mountPath"] == "/study"
    assert spec["entrypoint"].split()[2].startswith("/study/")
    workers = cluster["workerGroupSpecs"]
    assert workers and all(w["template"]["spec"]["containers"] for w in workers)
    gpus = workers[0]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert "nvidia.com/gpu" in gpus


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_the_slurm_script_is_valid_bash_and_runs_the_by_hand_commands():
    script = RECIPES / "slurm.sh"
    checked = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    text = script.read_text()
    assert "#SBATCH --nodes=" in text and "ray start --head" in text
    assert "ray start --address=" in text and 'metasam tune "$study" --address' in text


def test_the_by_hand_recipe_is_head_worker_tune():
    head, worker, tune = by_hand_recipe()
    assert head[:3] == ["ray", "start", "--head"]
    assert worker[:2] == ["ray", "start"] and worker[2].startswith("--address=")
    assert tune[:3] == ["metasam", "tune", "study.yaml"] and tune[3] == "--address"

