"""``python scripts/bench`` (or ``python -m bench`` from scripts/): the same as ``scripts/bench.py``."""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a directory: make the package importable by its name
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.cli import main  # the path is set above

sys.exit(main())
