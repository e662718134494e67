"""The package layout: the product never imports the PBX emulator, tooling for tests and demos."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import receiver
from tests.conftest import ROOT


def test_no_receiver_module_imports_the_emulator() -> None:
    modules = [m.name for m in pkgutil.walk_packages(receiver.__path__, "receiver.")]
    assert "receiver.web.app" in modules and "receiver.cli.serve" in modules
    script = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    if name != 'receiver.__main__':\n"
        "        importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'pbx_emulator'))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
