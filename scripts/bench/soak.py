"""``scripts/bench.py soak``: the daemon in a long accelerated conversation; RSS and fds over time."""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import threading
import time

import numpy as np

from .conversation import Bench
from .env import BenchError, log, workdir
from .procs import proc_stat, stop_process
from .report import now_text, settings_overrides, shown_args, table, write_section
from .signals import MIC_RATE, speech_clips


def cmd_soak(args: argparse.Namespace) -> int:
    fake_args = ["--first-message", "--end-call-after", "1", "--reply-seconds", str(args.reply_seconds),
                 "--send-speed", "4", "--max-duration", "20", "--ping-interval", "1"]
    settings = {
        "PI_AGENT_SESSION__BACKOFF_INITIAL": "0.2", "PI_AGENT_SESSION__BACKOFF_MAX": "0.5",
        "PI_AGENT_SESSION__BACKOFF_RESET_AFTER": "0",
        "PI_AGENT_AUDIO__EARCONS": '["listening","done","error","offline"]',
    }
    duration = args.minutes * 60
    samples: list[dict[str, float]] = []
    with workdir(args.workdir) as wd, Bench(wd, [], fake_args,
                                            daemon_settings=settings_overrides(args.set)) as bench:
        assert bench.fake is not None
        client = bench.client("daemon", "soak", settings)
        clips = speech_clips(wd)
        gap = np.zeros(int(2.5 * MIC_RATE))
        loop = np.concatenate([np.concatenate([c, gap]) for c in clips])
        loop_pcm = np.clip(np.round(loop * 32767), -32768, 32767).astype("<i2").tobytes()
        stop = threading.Event()
        feeder = subprocess.Popen(
            ["pacat", "-p", "-d", "mic", "--raw", "--format=s16le", f"--rate={MIC_RATE}", "--channels=1",
             "--latency-msec=50"], env=bench.card.va.server.env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)

        def feed() -> None:
            assert feeder.stdin is not None
            with contextlib.suppress(OSError, ValueError):
                while not stop.is_set():
                    feeder.stdin.write(loop_pcm)
                    feeder.stdin.flush()

        thread = threading.Thread(target=feed, name="soak-mic", daemon=True)
        known = len(bench.fake.conversations())
        client.start()
        try:
            bench.wait_ready(client, known)
            thread.start()
            t0 = time.monotonic()
            log(f"soak: {args.minutes:g} min, a sample every {args.interval:g} s")
            print(f"{'t (s)':>7} {'RSS MB':>7} {'fds':>4} {'threads':>7} {'convs':>5} {'CPU s':>6}", flush=True)
            while True:
                now = time.monotonic() - t0
                if not client.alive():
                    raise BenchError(f"the daemon died during the soak:\n{client.log_tail()}")
                st = proc_stat(client.pid)
                st["t"] = now
                st["conversations"] = client.counters().get("conversations", float("nan"))
                samples.append(st)
                print(f"{now:7.0f} {st['VmRSS']:7.1f} {st['fds']:4.0f} {st['threads']:7.0f} "
                      f"{st['conversations']:5.0f} {st['cpu']:6.1f}", flush=True)
                if now >= duration - 0.5:
                    break
                time.sleep(min(args.interval, max(0.0, duration - now)))
            counters = client.counters()
        finally:
            stop.set()
            code = client.stop()
            stop_process(feeder)
        verdict = soak_verdict(samples, args.warmup)
        print()
        print(verdict)
        if code not in (0, None):
            print(f"(the daemon exited with {code})")
        if args.write:
            write_section(args.out, "soak", soak_section(samples, verdict, args, counters))
            log(f"wrote {args.out}")
        return 0 if "not flat" not in verdict else 1


def _flat(values: list[float], tolerance: float) -> tuple[bool, float, float]:
    q = max(1, len(values) // 4)
    first, last = statistics.median(values[:q]), statistics.median(values[-q:])
    return last - first <= tolerance, first, last


def soak_verdict(samples: list[dict[str, float]], warmup: float) -> str:
    kept = [s for s in samples if s["t"] >= warmup] or samples
    if len(kept) < 4:
        return "too few samples for a verdict (run longer)"
    rss = [s["VmRSS"] for s in kept]
    fds = [s["fds"] for s in kept]
    rss_ok, r0, r1 = _flat(rss, max(2.0, 0.03 * rss[0]))
    fd_ok, f0, f1 = _flat(fds, 0.5)
    convs = samples[-1].get("conversations", float("nan")) - samples[0].get("conversations", 0)
    span = (kept[-1]["t"] - kept[0]["t"]) / 60
    return (f"RSS {'flat' if rss_ok else 'not flat'}: median {r0:.1f} MB in the first quarter, {r1:.1f} MB in the "
            f"last (after a {warmup:g} s warm-up; tolerance max(2 MB, 3%)); "
            f"open fds {'flat' if fd_ok else 'not flat'}: {f0:.0f} -> {f1:.0f}; "
            f"{convs:.0f} conversations over {span:.1f} min measured.")


def soak_section(samples: list[dict[str, float]], verdict: str, args: argparse.Namespace,
                 counters: dict[str, float]) -> str:
    step = max(1, len(samples) // 16)
    rows = [[f"{s['t']:.0f}", f"{s['VmRSS']:.1f}", f"{s['fds']:.0f}", f"{s['threads']:.0f}",
             f"{s['conversations']:.0f}", f"{s['cpu']:.1f}"] for s in samples[::step]]
    if samples[-1] is not samples[::step][-1]:
        s = samples[-1]
        rows.append([f"{s['t']:.0f}", f"{s['VmRSS']:.1f}", f"{s['fds']:.0f}", f"{s['threads']:.0f}",
                     f"{s['conversations']:.0f}", f"{s['cpu']:.1f}"])
    return "\n".join([
        f"Soak of {now_text()}: `{shown_args(args.argv)}`. The daemon (persistent policy, full duplex, "
        "backoff 0.2-0.5 s) against the fake agent with a first message, replies cut to "
        f"{args.reply_seconds:g} s sent 4x real time, the call ended by the agent after its first whole turn "
        "(or 20 s); "
        "espeak-ng speech loops into the mic with 2.5 s gaps.",
        "",
        table(rows, ["t (s)", "RSS MB", "open fds", "threads", "conversations", "CPU s"]),
        "",
        f"Verdict: {verdict}",
        "",
        f"Daemon counters at the end: {', '.join(f'{k} {v:.0f}' for k, v in sorted(counters.items())) or 'n/a'}.",
    ])
