"""Settings: declared once, each a flag and a RECEIVER_* variable, each in the README."""

from __future__ import annotations

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
