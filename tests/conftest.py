import contextlib
import os

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


# Markers, set here from what a test uses (the fast subset for the edit loop deselects them:
# `python -m pytest -m "not slow"`); the README's test command runs everything.
SPAWNING = {"test_sigkill_mid_study_then_rerun_finishes_exactly",
            "test_ctrl_c_gives_back_running_trials_and_the_rerun_finishes",
            "test_two_processes_cooperate_on_one_sqlite_study",
            "test_two_workers_on_one_journal_file",
            "test_two_workers_on_a_postgresql_study_across_a_ray_cluster",
            "test_dashboard_serves_a_finished_study_with_metasams_attributes"}


# Tests that train (or converge estimators) for seconds each: kept out of the fast subset.
TRAINING = {"test_det_sam_converges_to_the_determinant_with_a_large_box",
            "test_shared_cifar10_jpeg_s_is_the_first_tenth",
            "test_ddp_ranks_make_the_single_process_step_of_the_whole_batch",
            "test_frob_sam_on_a_network_converges_to_quarter_frobenius_of_its_exact_hessian",
            "test_sphere_power_measure_approaches_half_lambda_max",
            "test_frob_sam_converges_to_quarter_squared_frobenius_on_a_quadratic",
            "test_every_preset_reaches_95_percent_on_digits",
            "test_resume_gives_the_same_final_weights_as_an_uninterrupted_run"}


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        name = item.originalname if hasattr(item, "originalname") else item.name
        if "ray_cluster" in fixtures:
            item.add_marker(pytest.mark.ray)
            item.add_marker(pytest.mark.slow)
        if "postgres_url" in fixtures:
            item.add_marker(pytest.mark.postgres)
            item.add_marker(pytest.mark.slow)
        if name in SPAWNING:
            item.add_marker(pytest.mark.spawn)
            item.add_marker(pytest.mark.slow)
        if name in TRAINING:
            item.add_marker(pytest.mark.trains)
        if item.get_closest_marker("slow") is None and item.get_closest_marker("trains"):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def ray_start(*args: str) -> int:
    """``ray start ARGS`` in a process group of its own (returns the group id: stopping it stops
    that node alone, never another Ray on the machine)."""
    import subprocess
    import sys
    from pathlib import Path

    ray_bin = str(Path(sys.executable).parent / "ray")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    if "--disable-usage-stats" not in args:
        args = (*args, "--disable-usage-stats")
    starter = subprocess.Popen([ray_bin, "start", *args], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               start_new_session=True)
    _, err = starter.communicate(timeout=120)
    if starter.returncode != 0:
        raise RuntimeError(f"ray start failed: {err.decode()[-2000:]}")
    return starter.pid  # the session leader's pid is the group id its daemons kept


def stop_group(group: int, signals: tuple = ()) -> None:
    """Stop a process group: SIGTERM, then SIGKILL after a grace period (or the given
    (signal, seconds) steps)."""
    import signal
    import time

    for sig, wait in signals or ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        if not _group_alive(group):
            return
        try:
            os.killpg(group, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while _group_alive(group) and time.monotonic() < deadline:
            time.sleep(0.2)


def kill_node(group: int) -> None:
    """Kill a Ray node the way a lost machine goes: SIGKILL to every process of its group (the
    raylet and its daemons) and to all their descendants (the worker processes running trials,
    which Ray starts in groups of their own)."""
    import signal
    from pathlib import Path

    parents: dict[int, int] = {}
    groups: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(stat.parent.name)
        parents[pid], groups[pid] = int(fields[1]), int(fields[2])
    doomed = {pid for pid, g in groups.items() if g == group}
    grew = True
    while grew:
        children = {pid for pid, parent in parents.items() if parent in doomed} - doomed
        grew = bool(children)
        doomed |= children
    for pid in doomed:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """One Ray head for the whole test session (``ray start --head`` on loopback), started in a
    process group of its own. Teardown stops that group only: ``ray stop`` would also stop any
    other Ray on the machine, e.g. a study or a benchmark running beside the tests. It also
    puts back the file where ``ray start`` records "the current cluster" (a later ``ray.init()``
    without an address would try to join the stopped one)."""
    with ray_head(num_cpus=2) as address:
        yield address


@contextlib.contextmanager
def ray_head(num_cpus: int, *extra: str, args_for=None):
    """A Ray head on loopback for the duration of the block; afterwards the current-cluster
    record is put back as it was. ``args_for(port)``, if given, are the whole ``ray start``
    arguments (a recipe's), in place of the defaults."""
    from metasam.tuning.compat import ray_current_cluster_file
    from metasam.tuning.runner import listening

    port = _free_port()
    address_file = ray_current_cluster_file()
    assert address_file is not None, "this Ray keeps no current-cluster record where expected"
    previous = address_file.read_text() if address_file.is_file() else None
    args = args_for(port) if args_for is not None else [
        "--head", f"--port={port}", "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}",
        "--num-gpus=0", "--include-dashboard=false", *extra]
    group = ray_start(*args)
    os.environ["RAY_AUTH_MODE"] = "disabled"
    try:
        yield f"127.0.0.1:{port}"
    finally:
        stop_group(group)
        if address_file.is_file() and address_file.read_text().strip().endswith(f":{port}"):
            if previous is None or not listening(previous.strip()):
                address_file.unlink()  # nothing to put back, or a head that has stopped since
            else:
                address_file.write_text(previous)


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory):
    """Debian's PostgreSQL server on loopback, in a throw-away data folder."""
    import glob
    import shutil
    import subprocess
    import time

    candidates = [shutil.which("initdb")] + sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    initdb = next((c for c in candidates if c), None)
    if initdb is None:
        pytest.skip("PostgreSQL server binaries not installed (.ci/run installs them)")
    import tempfile
    from pathlib import Path

    bindir = os.path.dirname(os.path.realpath(initdb))
    # not under pytest's private (0700) temporary folder: the server's user must reach it
    folder = Path(tempfile.mkdtemp(prefix="metasam-postgres-"))
    data, sockets = folder / "data", folder / "sockets"
    sockets.mkdir()
    prefix: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root
        shutil.chown(folder, "postgres")
        shutil.chown(sockets, "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    subprocess.run(prefix + [f"{bindir}/initdb", "-D", str(data), "-U", "postgres",
                             "--auth=trust"], check=True, capture_output=True)
    subprocess.run(prefix + [f"{bindir}/pg_ctl", "-D", str(data), "-l", str(folder / "log"),
                             "-o", f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1",
                             "-w", "start"], check=True, capture_output=True)
    try:
        for _ in range(50):
            created = subprocess.run(prefix + [f"{bindir}/createdb", "-h", "127.0.0.1", "-p",
                                               str(port), "-U", "postgres", "metasam"],
                                     capture_output=True)
            if created.returncode == 0:
                break
            time.sleep(0.2)
        yield f"postgresql://postgres@127.0.0.1:{port}/metasam"
    finally:
        subprocess.run(prefix + [f"{bindir}/pg_ctl", "-D", str(data), "-m", "fast", "stop"],
                       capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)
