import os

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


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


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """One Ray head for the whole test session (``ray start --head`` on loopback), started in a
    process group of its own. Teardown stops that group only: ``ray stop`` would also stop any
    other Ray on the machine, e.g. a study or a benchmark running beside the tests. It also
    puts back the file where ``ray start`` records "the current cluster" (a later ``ray.init()``
    without an address would try to join the stopped one)."""
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from metasam.tuning.compat import ray_current_cluster_file
    from metasam.tuning.runner import listening

    ray_bin = str(Path(sys.executable).parent / "ray")
    port = _free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    address_file = ray_current_cluster_file()
    assert address_file is not None, "this Ray keeps no current-cluster record where expected"
    previous = address_file.read_text() if address_file.is_file() else None
    starter = subprocess.Popen(
        [ray_bin, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
         "--num-cpus=2", "--num-gpus=0", "--include-dashboard=false", "--disable-usage-stats"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    _, err = starter.communicate(timeout=120)
    if starter.returncode != 0:
        raise RuntimeError(f"ray start failed: {err.decode()[-2000:]}")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    yield f"127.0.0.1:{port}"
    group = starter.pid  # the session leader's pid is the group id its daemons kept
    for sig, wait in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        if not _group_alive(group):
            break
        try:
            os.killpg(group, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while _group_alive(group) and time.monotonic() < deadline:
            time.sleep(0.2)
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
