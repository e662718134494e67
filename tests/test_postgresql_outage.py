"""A PostgreSQL server that goes away under a running receiver, and comes back: 503s while it
is gone (logged, no crash), then deliveries are stored again with no restart.

It stops and starts a cluster of the test's own (initdb and pg_ctl in a temporary folder, on
a port of its own), never the server the other tests share.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest

from tests.conftest import ServerProcess, free_port

# The newest PostgreSQL's programs (Debian keeps them out of PATH).
POSTGRES_BIN = next(
    (p for p in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
     if (p / "pg_ctl").exists()),
    None,
)  # fmt: skip


class ClusterFailed(RuntimeError):
    """initdb or pg_ctl failed; what it said."""


class PrivateCluster:
    """A PostgreSQL cluster in `folder`, on a free port, trust auth for `postgres`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.data = folder / "data"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        folder.mkdir(parents=True)
        if self.user:  # initdb refuses to run as root: the cluster is the postgres user's
            os.chown(folder, *owner("postgres"))
        self.run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")

    def run(self, tool: str, *args: str) -> None:
        assert POSTGRES_BIN is not None
        command = [*self.user, str(POSTGRES_BIN / tool), *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if done.returncode:  # its words in the failure, not only its exit code
            raise ClusterFailed(f"{' '.join(command)}: {done.stdout}{done.stderr}")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = str(self.folder / "postgres.log")
        self.run("pg_ctl", "-D", str(self.data), "-o", options, "-l", log, "-w", "start")

    def stop(self) -> None:
        self.run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")


def owner(name: str) -> tuple[int, int]:
    import pwd

    found = pwd.getpwnam(name)
    return found.pw_uid, found.pw_gid


@pytest.fixture
def private_cluster() -> Iterator[PrivateCluster]:
    reason = None
    if POSTGRES_BIN is None:
        reason = "no pg_ctl under /usr/lib/postgresql/*/bin to start a cluster of the test's own"
    elif os.geteuid() == 0:
        try:
            owner("postgres")
        except KeyError:
            reason = "running as root with no postgres user to start a cluster as"
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    # A folder of its own under the system's temporary one, which the postgres user reaches
    # when the tests run as root (pytest's tmp_path is root's alone).
    top = Path(tempfile.mkdtemp(prefix="receiver-test-pg-"))
    os.chmod(top, 0o755)
    cluster = PrivateCluster(top / "pg")
    try:
        cluster.start()
        yield cluster
    finally:
        with contextlib.suppress(ClusterFailed):  # stopped already
            cluster.stop()
        shutil.rmtree(top, ignore_errors=True)


def status(url: str) -> int:
    return httpx.get(url, timeout=60).status_code


@pytest.mark.slow
def test_losing_the_database_gives_503s_then_recovery_without_a_restart(
    private_cluster: PrivateCluster, tmp_path: Path
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    server = ServerProcess(private_cluster.url, log_dir=logs).start()  # type: ignore[arg-type]
    hook = f"{server.url}/webhook?myid=1&EventType=dial-in&CallID=outage"
    try:
        assert status(f"{hook}&EventTime=1") == 200
        private_cluster.stop()
        assert status(f"{hook}&EventTime=2") == 503  # not stored, and said so
        assert status(f"{server.url}/readyz") == 503
        assert status(f"{server.url}/healthz") == 503
        assert status(f"{server.url}/api/events") == 503
        private_cluster.start()
        deadline = time.monotonic() + 60
        while status(f"{server.url}/readyz") != 200:
            assert time.monotonic() < deadline, "not ready again within 60 s of the restart"
            time.sleep(0.2)
        assert status(f"{server.url}/healthz") == 200
        assert status(f"{hook}&EventTime=3") == 200
        events = httpx.get(f"{server.url}/api/events", timeout=60).json()["events"]
        assert len(events) == 2  # the two answered 200; the one answered 503 was not kept
        assert server.process is not None and server.process.poll() is None  # no crash
    finally:
        _, log = server.stop()
    assert "event NOT stored, answering 503" in log
    assert "Traceback" not in log, log
