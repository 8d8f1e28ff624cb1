"""Shared pytest set-up. Support modules live beside the tests as ``support_*.py``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))

# gpiozero must never look for real pins in the test run.
os.environ.setdefault("GPIOZERO_PIN_FACTORY", "mock")
