"""Helpers the benchmarks share: free ports, servers as subprocesses, memory readings."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(command: list[str], ready_url: str) -> subprocess.Popen[bytes]:
    """Start a server process and wait until `ready_url` answers."""
    process = subprocess.Popen(command, cwd=ROOT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(ready_url, timeout=1)
            return process
        except OSError as error:  # refused while starting, or an HTTP error (still an answer)
            if getattr(error, "code", None):
                return process
            time.sleep(0.1)
    process.kill()
    raise SystemExit(f"{command[:4]} did not start")


def rss_mb(pid: int) -> float:
    """Resident memory of a process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def children(pid: int) -> list[int]:
    """The child processes of a process (the receiver's writer process, say)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()] if path.exists() else []


def python() -> str:
    return sys.executable
