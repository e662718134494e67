"""The image's health check, run as Docker runs it (`/bin/sh -c`), against a real server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, free_port


def health_check() -> str:
    """The HEALTHCHECK's command, its continued lines joined."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    line = next(line for line in text.splitlines() if line.startswith("HEALTHCHECK "))
    return line.split(" CMD ", 1)[1].strip()


def check(port: int | None) -> int:
    python_first = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    env = {**os.environ, "PATH": python_first}
    env.pop("RECEIVER_PORT", None)
    if port is not None:
        env["RECEIVER_PORT"] = str(port)
    done = subprocess.run(["/bin/sh", "-c", health_check()], env=env, capture_output=True,
                          timeout=30)  # fmt: skip
    return done.returncode


def test_the_health_check_follows_receiver_port(server) -> None:  # type: ignore[no-untyped-def]
    running = server()
    assert running.port != 8000
    assert check(running.port) == 0
    assert check(free_port()) != 0  # nothing listens there: unhealthy
