"""A real nginx in front of several `receiver serve` processes, with the configuration that
docs/deploy.md gives (so the one shown there is the one tested).

nginx runs as a process of the test: a config of its own in a temporary folder, a free port,
nothing under /etc or /var.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx2 as httpx
import pytest

from tests.conftest import ROOT, free_port

DEPLOY_DOC = ROOT / "docs" / "deploy.md"
# Where nginx is when it is not on PATH (Debian puts it in /usr/sbin, often not on a user's).
NGINX_PLACES = ("/usr/sbin/nginx", "/usr/local/sbin/nginx")


def nginx_binary() -> str:
    """nginx's path; the test is skipped without it (Debian: apt-get install nginx-light)."""
    found = shutil.which("nginx") or next((p for p in NGINX_PLACES if os.access(p, os.X_OK)), None)
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("nginx is missing: .ci/run installs it (apt-get install nginx-light)")
        pytest.skip("nginx is missing: apt-get install nginx-light")
    return found


def documented_config() -> str:
    """The nginx configuration of 'Several instances on PostgreSQL' in docs/deploy.md."""
    text = DEPLOY_DOC.read_text()
    section = text.split("## Several instances on PostgreSQL", 1)[1]
    found = re.search(r"```nginx\n(.*?)```", section, re.S)
    assert found, "docs/deploy.md: no nginx block under 'Several instances on PostgreSQL'"
    return found[1]


def config_for(ports: list[int], listen: int) -> str:
    """The documented configuration with these upstream ports and this listening port."""
    config = documented_config()
    servers = re.findall(r"^( *)server 127\.0\.0\.1:\d+(.*)$", config, re.M)
    assert len(servers) >= 2, "the documented upstream lists its servers as 127.0.0.1:<port>"
    indent, rest = servers[0]
    lines = "\n".join(f"{indent}server 127.0.0.1:{port}{rest}" for port in ports)
    config = re.sub(r"(?:^ *server 127\.0\.0\.1:\d+.*\n)+", lines + "\n", config, flags=re.M)
    config, listens = re.subn(r"listen \d+;", f"listen 127.0.0.1:{listen};", config)
    assert listens == 1, "the documented server block has one `listen <port>;`"
    return config


class Nginx:
    """nginx as a subprocess balancing `ports`, on a free port of its own."""

    def __init__(self, folder: Path, ports: list[int]) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ports = ports
        self.process: subprocess.Popen[bytes] | None = None

    def main_config(self) -> str:
        folder = self.folder
        # As root, nginx's workers would run as `nobody`, who cannot enter a test's folder.
        user = "user root root;\n" if os.geteuid() == 0 else ""
        temp = "".join(
            f"    {kind}_temp_path {folder}/{kind}_temp;\n"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        return (
            f"{user}worker_processes 1;\npid {folder}/nginx.pid;\n"
            f"error_log {folder}/error.log warn;\n"
            "events { worker_connections 1024; }\n"
            "http {\n"
            "    log_format upstream '$request_method $status $upstream_addr $upstream_status';\n"
            f"    access_log {folder}/access.log upstream;\n{temp}"
            f"{config_for(self.ports, self.port)}"
            "}\n"
        )

    def command(self) -> list[str]:
        """nginx in the foreground on a config written into the folder."""
        config = self.folder / "nginx.conf"
        config.write_text(self.main_config())
        return [nginx_binary(), "-p", str(self.folder), "-e", str(self.folder / "error.log"),
                "-c", str(config), "-g", "daemon off;"]  # fmt: skip

    def check(self) -> subprocess.CompletedProcess[str]:
        """`nginx -t` on the config: what nginx says of it."""
        return subprocess.run([*self.command(), "-t"], capture_output=True, text=True)

    def start(self) -> Nginx:
        checked = self.check()
        assert checked.returncode == 0, f"nginx refused its config: {checked.stderr}"
        self.process = subprocess.Popen(self.command(), stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.errors()
            try:
                httpx.get(f"{self.url}/healthz", timeout=1)
                return self
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError(f"nginx did not answer within 10 s: {self.errors()}")

    def errors(self) -> str:
        log = self.folder / "error.log"
        return log.read_text() if log.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
