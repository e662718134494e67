"""Schemathesis finds nothing: /openapi.json tells the exact truth about a real running server.

Schemathesis reads the description, sends what it allows and what it forbids, and checks every
answer against it (status codes, schemas, content types, authentication). It runs against a
real `receiver serve` holding the sample scenarios, without and with tokens, seeded so that a
failure can be replayed.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx2 as httpx
import pytest

from tests.conftest import ROOT, ServerProcess

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
EXAMPLES = "40"  # per operation and phase: about 15 s a run on two cores


def load_samples(server: ServerProcess, token: str | None) -> int:
    """Deliver every sample scenario; how many were stored."""
    stored = 0
    secret = f"&token={token}" if token else ""
    with httpx.Client(base_url=server.url) as client:
        for path in sorted((ROOT / "sample_payloads").glob("*.txt")):
            for line in path.read_text().splitlines():
                if line and not line.startswith("#"):
                    answer = client.get(f"/webhook?myid=175{secret}&{line}")
                    stored += answer.status_code == 200
    return stored


@pytest.mark.slow
@pytest.mark.parametrize(
    ("options", "headers", "seed"),
    [([], [], "1"), (["--api-token", "reader", "--token", "hook"], ["Authorization: Bearer reader"],
                     "2")],
    ids=["open", "tokens"],
)  # fmt: skip
def test_schemathesis_finds_nothing(
    tmp_path: Path, options: list[str], headers: list[str], seed: str
) -> None:
    server = ServerProcess(tmp_path / "fuzz.db", *options).start()
    try:
        assert load_samples(server, "hook" if options else None) > 40
        command = [str(SCHEMATHESIS), "run", f"{server.url}/openapi.json", "--checks", "all",
                   "--seed", seed, "--max-examples", EXAMPLES, "--generation-database", "none",
                   "--no-color", *(f"--header={header}" for header in headers),
                   # an endless stream has no end to check: tests/test_stream.py holds it
                   "--exclude-path", "/api/stream"]  # fmt: skip
        run = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=tmp_path)
        assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
        generated = re.search(r"(\d+) generated", run.stdout)
        assert generated and int(generated[1]) >= 500, run.stdout[-2000:]  # it really ran
    finally:
        _, log = server.stop()
    assert "Traceback" not in log, log
