"""``scripts/bench.py frame`` runs end to end: the daemon's hot path in-process against
``pi-agent fake-agent`` on loopback, every frame it hands over reaching the agent, and a
report with the per-frame and per-chunk figures and their breakdown. (Its figures are
not asserted: performance belongs to the bench, docs/benchmarks.md.)"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def test_a_short_frame_bench_reports_every_figure() -> None:
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "bench.py"), "--no-write", "--runs", "1", "frame",
                        "--frames", "100", "--pace", "10", "--turns", "1", "--send-speed", "8"],
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    out = r.stdout
    mic = re.search(r"^\| mic frame \| \*\*(\d+)\*\* \| \d+ \| (\d+) \|", out, re.M)
    chunk = re.search(r"^\| agent chunk \(200 ms\) \| \*\*(\d+)\*\* \|", out, re.M)
    assert mic and chunk, out
    assert int(mic.group(1)) > 0 and int(mic.group(2)) > 0 and int(chunk.group(1)) > 0
    for piece in ("VAD (webrtcvad)", "encode: base64", "framing (websockets", "socket write (send on loopback TCP)",
                  "JSON parse", "resample 16 -> 48 kHz", "a wake-up of the loop", "the rest: the same path cold"):
        assert f"| {piece}" in out, piece
    assert "100 mic frames handed over every 10 ms" in out


def test_a_what_if_run_measures_without_rewriting_the_docs(tmp_path: Path) -> None:
    """``--what-if reader-path``: every frame still reaches the agent (the run checks it), the
    report says it is not the daemon's design, and the results file is left alone."""
    out_file = tmp_path / "benchmarks.md"
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "bench.py"), "--out", str(out_file), "--runs", "1",
                        "frame", "--frames", "100", "--pace", "10", "--turns", "1", "--send-speed", "8",
                        "--what-if", "reader-path"], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert re.search(r"^\*\*What if\*\* the frame's path ran on the reader's thread", r.stdout, re.M), r.stdout
    assert re.search(r"^\| mic frame \| \*\*\d+\*\* \| \d+ \| [1-9]\d* \|", r.stdout, re.M), r.stdout
    assert not out_file.exists()
    assert "the docs are not rewritten" in r.stdout + r.stderr
