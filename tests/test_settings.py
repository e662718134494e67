"""Settings: declared once, each a flag and a RECEIVER_* variable, each in the README."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from receiver.cli import main
from receiver.settings import Settings, describe, env_name, flag_name
from tests.conftest import ROOT


@pytest.mark.parametrize("name", [name for name, _, _ in describe()])
def test_every_setting_is_documented(name: str) -> None:
    readme = (ROOT / "README.md").read_text()
    assert flag_name(name) in readme
    assert env_name(name) in readme
    help_text = CliRunner().invoke(main, ["serve", "--help"]).output
    assert flag_name(name) in help_text
    assert env_name(name) in help_text


def test_malformed_tokens_setting_is_refused() -> None:
    with pytest.raises(ValueError, match="not 'myid=secret'"):
        Settings(tokens="175")
    result = CliRunner().invoke(main, ["serve", "--tokens", "175"])
    assert result.exit_code == 2
    assert "not 'myid=secret'" in result.output


@pytest.mark.parametrize("myid", [" 175 ", "a" * 65, "a/b"])
def test_a_default_myid_of_the_wrong_shape_is_refused_at_start(myid: str) -> None:
    with pytest.raises(ValueError, match="1 to 64 ASCII letters"):
        Settings(default_myid=myid)
    result = CliRunner().invoke(main, ["serve", "--default-myid", myid])
    assert result.exit_code == 2
    assert "--default-myid" in result.output
    assert "is not a valid myid" in result.output


def test_every_command_has_help() -> None:
    for command in main.commands:
        result = CliRunner().invoke(main, [command, "--help"])
        assert result.exit_code == 0
        assert "Usage:" in result.output


OUT_OF_RANGE = [
    ("port", "99999", "use 1 to 65535"),  # once listened on a random port, logging 99999
    ("port", "0", "use 1 to 65535"),
    ("max_body", "0", "use 1 to"),
    ("rejects_max", "-5", "use 1 to"),
    ("unknown_end_after", "0", "use 1 to"),
    ("unknown_end_after", str(2**63), "use 1 to"),  # would overflow SQLite's integers
]


@pytest.mark.parametrize(("name", "value", "expected"), OUT_OF_RANGE)
def test_a_number_out_of_range_is_refused(name: str, value: str, expected: str) -> None:
    with pytest.raises(ValueError, match=f"{flag_name(name)} {value} is out of range: {expected}"):
        Settings(**{name: int(value)})
    for args, env in [([flag_name(name), value], {}), ([], {env_name(name): value})]:
        result = CliRunner().invoke(main, ["serve", *args], env=env)
        assert result.exit_code == 2, result.output
        assert f"Invalid value for '{flag_name(name)}'" in result.output
        assert f"{value} is out of range: {expected}" in result.output
        assert "Traceback" not in result.output


def test_the_read_commands_check_the_range_too(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["calls", "--db", str(tmp_path / "x.db")], env={"RECEIVER_UNKNOWN_END_AFTER": "0"}
    )
    assert result.exit_code == 2
    assert "0 is out of range: use 1 to" in result.output


def test_a_port_out_of_range_from_the_environment_stops_a_real_server(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "receiver", "serve", "--db", str(tmp_path / "r.db")]
    env = {**os.environ, "RECEIVER_PORT": "99999"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "'--port' (env var: 'RECEIVER_PORT'): 99999 is out of range" in done.stderr
    assert not (tmp_path / "r.db").exists()  # refused before anything started


def test_a_log_level_that_is_not_one_is_refused() -> None:
    result = CliRunner().invoke(main, ["serve", "--log-level", "verbose"])
    assert result.exit_code == 2, result.output
    assert "'verbose' is not a level: use debug, info, warning, error" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "1e308"])
@pytest.mark.parametrize("name", ["header_timeout", "body_timeout"])
def test_a_timeout_out_of_range_is_refused(name: str, value: str) -> None:
    with pytest.raises(ValueError, match=r"is out of range: use 0\.1 to 86400"):
        Settings(**{name: float(value)})
    result = CliRunner().invoke(main, ["serve", flag_name(name), value])
    assert result.exit_code == 2, result.output
    assert "is out of range: use 0.1 to 86400" in result.output


def test_a_timezone_that_is_no_zone_is_refused_at_start() -> None:
    result = CliRunner().invoke(main, ["serve", "--timezone", "Mars/Olympus"])
    assert result.exit_code == 2
    assert "--timezone 'Mars/Olympus' is not a time zone" in result.output
