"""Where things are, and the bench's one-line log and error."""

from __future__ import annotations

import contextlib
import importlib.metadata
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "docs" / "benchmarks.md"
if str(ROOT) not in sys.path:  # tests.support_*: the virtual card, the fake agent process, ports
    sys.path.insert(0, str(ROOT))


class BenchError(Exception):
    """A reason the benchmark cannot run or finish, said in one line."""


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


@contextlib.contextmanager
def workdir(keep: str | None) -> Iterator[Path]:
    """``keep`` (created if need be, left in place), else a temporary directory removed at the end."""
    if keep:
        path = Path(keep).resolve()
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    path = Path(tempfile.mkdtemp(prefix="pi-agent-bench-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def check_sdk() -> None:
    try:
        importlib.metadata.version("elevenlabs")
    except importlib.metadata.PackageNotFoundError:
        raise BenchError("the elevenlabs SDK is not installed: pip install -e '.[test]' "
                         "(or PROFILE=test ./scripts/test.sh --collect-only -q)") from None
