#!/usr/bin/env python3
"""Benchmark pi-agent's daemon side by side with the official ElevenLabs SDK.

The command line of the ``scripts/bench/`` package (see its ``__init__.py`` for what it
measures and how, and ``scripts/bench.py --help``)::

    scripts/bench.py [--runs N] [--quick]       # the scripted conversation; writes docs/benchmarks.md
    scripts/bench.py idle [--seconds S]         # nobody talks to the device: a silent room, a room with
                                                # speech not addressed to it; CPU, wake-ups, memory
    scripts/bench.py soak [--minutes N]         # the daemon in a long accelerated conversation
    scripts/bench.py profile [--client daemon]  # py-spy on one scripted conversation

Needs what ``PROFILE=test ./scripts/test.sh`` installs (pulseaudio, pulseaudio-utils,
libasound2-plugins, espeak-ng, the ``test`` extra with the ``elevenlabs`` SDK); ``profile``
also needs py-spy (``pip install -e '.[test,bench]'``). It installs nothing itself.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

try:
    import numpy  # noqa: F401
    import pyaudio  # noqa: F401
    import soxr  # noqa: F401

    import pi_agent.config  # noqa: F401
except ImportError:  # started with the system python: use the project's virtualenv if there is one
    _venv = ROOT / ".venv" / "bin" / "python"
    if _venv.exists() and Path(sys.executable).absolute() != _venv.absolute():
        os.execv(str(_venv), [str(_venv), str(Path(__file__).resolve()), *sys.argv[1:]])
    sys.exit("bench: numpy and pi_agent are not importable; run ./scripts/test.sh once (it sets up .venv) "
             "or activate the virtualenv")

sys.path.insert(0, str(HERE))  # the bench package beside this file (a package wins over this module's name)
from bench.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
