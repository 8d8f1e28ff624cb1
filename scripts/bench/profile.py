"""``scripts/bench.py profile``: py-spy on one scripted conversation."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

from .clients import Client
from .conversation import Bench, RunResult
from .env import BenchError, check_sdk, log, workdir
from .report import now_text, settings_overrides, shown_args, write_section
from .signals import PLAN_FULL, PLAN_QUICK


def cmd_profile(args: argparse.Namespace) -> int:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        raise BenchError("py-spy is not installed: pip install -e '.[bench]' (or pip install py-spy)")
    if args.client == "sdk":
        check_sdk()
    with workdir(args.workdir) as wd, Bench(wd, PLAN_FULL if not args.quick else PLAN_QUICK,
                                            daemon_settings=settings_overrides(args.set)) as bench:
        raw = wd / f"profile-{args.client}.txt"
        spy_proc: list[subprocess.Popen[bytes]] = []

        def attach(client: Client, seconds: float) -> None:
            argv = [spy, "record", "--pid", str(client.pid), "--rate", str(args.rate), "--duration",
                    str(int(seconds)), "--format", "raw", "--output", str(raw), "--threads"]
            argv.append("--native" if args.native else "--nonblocking")  # native stacks need pauses
            spy_proc.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))

        result = bench.run(args.client, 1, during=attach)
        log(result.summary())
        for p in spy_proc:
            _, err = p.communicate(timeout=60)
            if p.returncode != 0:
                raise BenchError(f"py-spy failed: {err.decode(errors='replace')[-500:]}")
        report = profile_report(raw, args.client, result, args.rate, args.top)
        print(report)
        if args.out_profile:
            Path(args.out_profile).write_text(report + "\n")
            log(f"wrote {args.out_profile}")
        if args.write:
            write_section(args.out, "profile", f"Profile of {now_text()}: `{shown_args(args.argv)}` "
                          f"(other load {100 * result.other_load:.0f}%).\n\n```\n{report}\n```")
            log(f"wrote {args.out}")
    return 0


def profile_report(raw: Path, client: str, result: RunResult, rate: int, top: int) -> str:
    """Self and inclusive sample counts per function from py-spy's collapsed stacks."""
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        threads[frames[0]] += count
        names = [re.sub(r"\s*\((/[^)]*/)?([^/)]+)\)", r" (\2)", f) for f in frames[1:]]
        if names:
            own[names[-1]] += count
        for name in set(names):
            incl[name] += count
    secs = total / rate
    out = [f"py-spy, {client}, {rate} Hz, {total} samples of Python threads on CPU = {secs:.1f} s over "
           f"{result.conversation_s:.0f} s; /proc: {result.cpu_per_min:.2f} s CPU per minute in all ("
           + ", ".join(f"{k} {v:.2f}" for k, v in sorted(result.threads.items())) + ")", "",
           "by thread (py-spy sees only threads running Python):"]
    out += [f"  {100 * c / max(total, 1):5.1f}%  {t}" for t, c in threads.most_common(8)]
    out += ["", f"top {top} by own samples:"]
    out += [f"  {100 * c / max(total, 1):5.1f}%  {n}" for n, c in own.most_common(top)]
    out += ["", f"top {top} by inclusive samples:"]
    out += [f"  {100 * c / max(total, 1):5.1f}%  {n}" for n, c in incl.most_common(top)]
    return "\n".join(out)
