"""``scripts/bench.py [compare]``: the scripted conversation, daemon and SDK alternating."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from .conversation import Bench, RunResult
from .env import BenchError, check_sdk, log, workdir
from .procs import stop_process
from .report import compare_section, figures, print_table, settings_overrides, write_section
from .signals import PLAN_FULL, PLAN_QUICK


@contextlib.contextmanager
def busy_loops(n: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    """``n`` processes that spin on a CPU each (load the machine on purpose: ``--busy``)."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield procs
    finally:
        for proc in procs:
            stop_process(proc, timeout=2)


def daemon_period(settings: dict[str, str]) -> int:
    from pi_agent.config import AudioSettings

    return int(settings.get("PI_AGENT_AUDIO__PERIOD_MS", AudioSettings.model_fields["period_ms"].default))


def cmd_compare(args: argparse.Namespace) -> int:
    if args.only != "daemon":
        check_sdk()
    runs_each = 1 if args.quick and args.runs is None else (args.runs or 3)
    plan = PLAN_QUICK if args.quick else PLAN_FULL
    started = time.monotonic()
    results: list[RunResult] = []
    failures: list[str] = []
    load = os.getloadavg()[0]
    if load > 0.5 * (os.cpu_count() or 1):
        log(f"warning: load average {load:.1f} on {os.cpu_count()} CPUs: other work will skew the figures")
    settings = settings_overrides(args.set)
    with workdir(args.workdir) as wd, Bench(wd, plan, keep=bool(args.workdir), daemon_settings=settings) as bench, \
            busy_loops(args.busy) as loops:
        assert bench.track is not None
        if loops:
            log(f"{len(loops)} busy loop(s) keep {len(loops)} CPU(s) busy during the runs")
        kinds = ("daemon", "sdk") if not args.only else (args.only,)
        for i in range(runs_each):
            for kind in kinds:
                log(f"run {i + 1}/{runs_each}: {'pi-agent run' if kind == 'daemon' else 'SDK Conversation'}")
                try:
                    result = bench.run(kind, i + 1, load_pids=lambda: [p.pid for p in loops])
                except BenchError as exc:  # one bad run is reported, the others still count
                    failures.append(f"{kind} run {i + 1}: {str(exc).splitlines()[0]}")
                    log(f"run failed: {exc}")
                    continue
                log(result.summary())
                results.append(result)
                time.sleep(1.0)
        floors: dict[str, dict[str, float]] = {}
        if not loops:
            try:
                period = daemon_period(settings)
                floors["daemon"] = {**bench.floor(10.0 if args.quick else 30.0, period), "period_ms": period}
                log(f"audio floor (the daemon's conversation streams): {floors['daemon']['cpu_per_min']:.2f} s CPU "
                    f"per minute, peak RSS {floors['daemon']['peak_rss_mb']:.1f} MB")
            except BenchError as exc:
                failures.append(f"floor: {str(exc).splitlines()[0]}")
        elapsed = time.monotonic() - started
        if not results:
            raise BenchError("every run failed: " + "; ".join(failures))
        print()
        print_table([f.cells() for f in figures(results)], ["figure", "pi-agent", "SDK", "ratio", "target", "verdict"])
        for failure in failures:
            print(f"failed: {failure}")
        print()
        load_text = f", with {len(loops)} busy loop(s) of the bench's own keeping CPUs busy" if loops else ""
        if args.write:
            write_section(args.out, "compare-busy" if loops else "compare",
                          compare_section(results, bench.track, args, elapsed, failures, floors, load_text))
            log(f"wrote {args.out}")
        if args.json:
            Path(args.json).write_text(json.dumps([r.__dict__ for r in results], indent=1))
    return 0
