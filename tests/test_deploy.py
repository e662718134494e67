"""The deployment files: docker-compose.yml as Docker Compose reads it, and its nginx
configuration the same as the one docs/deploy.md shows (and tests/test_balanced.py runs)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from tests.balancer import documented_config
from tests.conftest import ROOT

SECRETS = {"POSTGRES_PASSWORD": "pw", "RECEIVER_TOKEN": "hook", "RECEIVER_API_TOKEN": "api"}


def compose_command() -> list[str]:
    """`docker compose`, or the older `docker-compose`; the test is skipped without either."""
    if shutil.which("docker"):
        plugin = subprocess.run(["docker", "compose", "version"], capture_output=True)
        if plugin.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.skip("no Docker Compose here (docker compose, or Debian's docker-compose)")


def compose_config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`docker compose config`: the file checked and resolved (no Docker daemon needed)."""
    clean = {k: v for k, v in os.environ.items() if k not in SECRETS}
    return subprocess.run([*compose_command(), "config"], cwd=ROOT, env={**clean, **env},
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def test_the_compose_file_is_valid_and_puts_the_receivers_on_postgresql() -> None:
    done = compose_config(SECRETS)
    assert done.returncode == 0, done.stderr
    assert "RECEIVER_DB: postgresql://receiver:pw@postgres:5432/receiver" in done.stdout
    assert "replicas: 3" in done.stdout
    assert "condition: service_healthy" in done.stdout  # the receivers wait for the database


def test_the_compose_file_refuses_to_start_without_its_secrets() -> None:
    done = compose_config({"POSTGRES_PASSWORD": "pw"})
    assert done.returncode != 0
    assert "RECEIVER_TOKEN" in done.stderr


def without_upstream(config: str) -> str:
    """A configuration without its comments and its upstream's servers, spaces evened out."""
    config = re.sub(r"#.*", "", config)
    config = re.sub(r"^\s*server \S+:\d+.*$", "", config, flags=re.M)
    return " ".join(config.split())


def test_the_compose_nginx_config_is_the_documented_one() -> None:
    compose = (ROOT / "deploy" / "nginx.conf").read_text()
    assert "server receiver:8000" in compose  # the compose service, one address a replica
    assert without_upstream(compose) == without_upstream(documented_config())
