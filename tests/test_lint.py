"""Lint is part of the test command: ruff (rules E, F, W, B, UP, SIM, RUF) on everything, and
``mypy --strict`` with the pydantic plugin on the package. Both read their settings from
pyproject.toml."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _tool(name: str) -> str:
    path = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: it comes with the test extra (pip install -e '.[test]')")
    return path


# ruff takes a tenth of a second: it stays in the quick tier. mypy --strict takes seconds
# (tens on a cold cache or a busy Pi) and is run by editors anyway: it is slow.
@pytest.mark.quick_subprocess
def test_ruff_is_clean() -> None:
    r = subprocess.run([_tool("ruff"), "check", "--no-cache", "."], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_mypy_strict_is_clean() -> None:
    r = subprocess.run([_tool("mypy")], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
