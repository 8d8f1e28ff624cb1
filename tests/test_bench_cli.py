"""The benchmark's command line stays alive (the benchmark itself is run by hand: see
docs/benchmarks.md). Every command parses, and every module of the package imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "scripts" / "bench.py"


@pytest.mark.parametrize("command", [[], ["idle"], ["soak"], ["profile"], ["compare"], ["frame"]])
def test_every_command_has_help(command: list[str]) -> None:
    r = subprocess.run([sys.executable, str(BENCH), *command, "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "usage: scripts/bench.py" in r.stdout


def test_every_module_imports() -> None:
    modules = sorted(p.stem for p in (REPO / "scripts" / "bench").glob("*.py") if p.stem != "__main__")
    code = "import importlib, sys\n" + "".join(f"importlib.import_module('bench.{m}')\n" for m in modules)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env={"PYTHONPATH": f"{REPO / 'scripts'}:{REPO}", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr


def test_a_bad_argument_is_a_message_not_a_traceback() -> None:
    r = subprocess.run([sys.executable, str(BENCH), "idle", "--room", "kitchen"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and "invalid choice" in r.stderr and "Traceback" not in r.stderr


def test_frame_refuses_nonsense_in_one_line() -> None:
    r = subprocess.run([sys.executable, str(BENCH), "--no-write", "frame", "--frames", "3"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "frame needs --runs >= 1, --frames >= 50" in r.stderr and "Traceback" not in r.stderr
