"""``scripts/bench.py idle``: nobody talks to the device. What does listening cost?

Two rooms: a silent one, and one where people talk, not to the device (speech at -35 dBFS
peak: webrtcvad hears it as speech, the fake agent's speech gate never does, so nobody
gets a reply). In each, ``pi-agent run`` with VAD capture and each session policy
(``on_demand``: no conversation until someone speaks; ``persistent``: one is always open
and the microphone streams into it; ``persistent quiet``: the same with
``session.quiet_keepalive = 10``, the microphone held back while nothing happens), and the
official SDK (which has no policy: its
conversation is open and streams all the time), one after the other, each measured for
the same time after it settled: CPU seconds per minute (by thread), wake-ups per second
(voluntary context switches of all its threads), peak RSS.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass, field

from .clients import Client
from .conversation import Bench
from .env import BenchError, check_sdk, log, workdir
from .procs import cpu_clock, proc_stat, stop_process, thread_cpu, thread_groups, wakeups
from .report import TARGETS, machine_line, now_text, print_table, settings_overrides, shown_args, table, write_section
from .signals import BACKGROUND_PEAK_DB, background_speech

ROOMS = ("silent", "speech")
CLIENTS = (("daemon", "on_demand"), ("daemon", "persistent"), ("daemon", "persistent quiet"), ("sdk", ""))
QUIET_KEEPALIVE = 10  # s: session.quiet_keepalive of "persistent quiet"
SETTLE = 5.0  # s after the client is ready before measuring


@dataclass
class IdleResult:
    room: str
    client: str
    index: int
    cpu_per_min: float = 0.0
    wakeups_per_s: float = 0.0
    threads: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: float = 0.0
    other_load: float = 0.0
    conversations: int = 0
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"{self.room} room, {self.client} run {self.index}: CPU {self.cpu_per_min:.2f} s/min ("
                + ", ".join(f"{k} {v:.2f}" for k, v in sorted(self.threads.items())) + f"), "
                f"{self.wakeups_per_s:.0f} wake-ups/s, peak RSS {self.peak_rss_mb:.1f} MB, "
                f"{self.conversations} conversation(s) opened, other load {100 * self.other_load:.0f}%"
                + (f"; problems: {'; '.join(self.problems)}" if self.problems else ""))


def _label(kind: str, policy: str) -> str:
    return f"pi-agent {policy}" if kind == "daemon" else "SDK"


def _daemon_settings(policy: str) -> dict[str, str]:
    """``persistent quiet``: the persistent policy with the microphone held back while nothing happens."""
    name, _, quiet = policy.partition(" ")
    settings = {"PI_AGENT_SESSION__POLICY": name}
    if quiet:
        settings["PI_AGENT_SESSION__QUIET_KEEPALIVE"] = str(QUIET_KEEPALIVE)
    return settings


def _wait_devices(client: Client, timeout: float = 30.0) -> None:
    """An on_demand daemon opens no conversation: ready once both devices are open."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not client.alive():
            raise BenchError(f"{client.kind} exited:\n{client.log_tail()}")
        text = client.log_path.read_text(errors="replace")
        if "microphone 'default' open" in text and "speaker 'default' open" in text:
            return
        time.sleep(0.1)
    raise BenchError(f"{client.kind}: its devices did not open within {timeout:g} s:\n{client.log_tail()}")


def idle_run(bench: Bench, kind: str, policy: str, room: str, index: int, seconds: float) -> IdleResult:
    assert bench.fake is not None
    result = IdleResult(room, _label(kind, policy), index)
    known = len(bench.fake.conversations())
    feeder = bench.card.play(bench.workdir / "room.raw") if room == "speech" else None
    client = bench.client(kind, f"idle-{room}-{kind}{policy and '-' + policy.replace(' ', '-')}-{index}",
                          _daemon_settings(policy) if kind == "daemon" else None)
    try:
        client.start()
        if kind == "daemon" and policy == "on_demand":
            _wait_devices(client)
        else:
            bench.wait_ready(client, known)
        time.sleep(SETTLE)
        extra = [feeder.pid] if feeder is not None else []
        before, threads0, woken0 = proc_stat(client.pid), thread_cpu(client.pid), wakeups(client.pid)
        helpers0, machine0, t0 = bench.helpers_cpu(extra), cpu_clock(), time.monotonic()
        deadline = t0 + seconds
        while time.monotonic() < deadline:
            if not client.alive():
                raise BenchError(f"{client.kind} died while idle:\n{client.log_tail()}")
            if feeder is not None and feeder.poll() is not None:
                raise BenchError("the room's speech ended before the measurement did")
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
        after, threads1, woken1 = proc_stat(client.pid), thread_cpu(client.pid), wakeups(client.pid)
        helpers1, machine1, t1 = bench.helpers_cpu(extra), cpu_clock(), time.monotonic()
        minutes = (t1 - t0) / 60
        result.cpu_per_min = (after["cpu"] - before["cpu"]) / minutes
        result.wakeups_per_s = (woken1 - woken0) / (t1 - t0)
        result.threads = thread_groups(client.pid, threads0, threads1, minutes)
        result.peak_rss_mb = after.get("VmHWM", 0.0)
        ours = (after["cpu"] - before["cpu"]) + (helpers1 - helpers0)
        result.other_load = max(0.0, (machine1[0] - machine0[0]) - ours) / max(machine1[1] - machine0[1], 1e-9)
        convs = bench.fake.conversations()[known:]
        result.conversations = len(convs)
        replies = sum(c.get("sent", {}).get("audio", 0) for c in convs)
        if replies:
            result.problems.append(f"the agent replied ({replies} audio chunks): not idle")
    finally:
        code = client.stop()
        stop_process(feeder)
    if code not in (0, None):
        result.problems.append(f"exit code {code}")
    return result


def cmd_idle(args: argparse.Namespace) -> int:
    if args.only != "daemon":
        check_sdk()
    seconds = args.seconds or (20.0 if args.quick else 60.0)
    runs_each = args.runs or (1 if args.quick else 2)
    rooms = [args.room] if args.room else list(ROOMS)
    clients = [c for c in CLIENTS if not args.only or c[0] == args.only]
    started = time.monotonic()
    results: list[IdleResult] = []
    failures: list[str] = []
    with workdir(args.workdir) as wd, Bench(wd, [], daemon_settings=settings_overrides(args.set)) as bench:
        if "speech" in rooms:
            background_speech(wd, SETTLE + seconds + 40).astype("<i2").tofile(wd / "room.raw")
        for room in rooms:
            for i in range(runs_each):
                for kind, policy in clients:
                    log(f"{room} room, run {i + 1}/{runs_each}: {_label(kind, policy)}")
                    try:
                        result = idle_run(bench, kind, policy, room, i + 1, seconds)
                    except BenchError as exc:
                        failures.append(f"{room} {_label(kind, policy)} run {i + 1}: {str(exc).splitlines()[0]}")
                        log(f"run failed: {exc}")
                        continue
                    log(result.summary())
                    results.append(result)
                    time.sleep(1.0)
    if not results:
        raise BenchError("every run failed: " + "; ".join(failures))
    rows, header = idle_rows(results)
    print()
    print_table(rows, header)
    for failure in failures:
        print(f"failed: {failure}")
    if args.write:
        write_section(args.out, "idle", idle_section(results, args, seconds, time.monotonic() - started, failures))
        log(f"wrote {args.out}")
    return 0


def _median(results: list[IdleResult], attr: str) -> float:
    return statistics.median(getattr(r, attr) for r in results)


def idle_rows(results: list[IdleResult]) -> tuple[list[list[str]], list[str]]:
    header = ["room", "client", "CPU s/min", "ratio to SDK", "target", "wake-ups/s", "main", "libpulse", "other",
              "peak RSS MB", "RSS ratio", "conversations", "other load"]
    rows = []
    for room in ROOMS:
        here = [r for r in results if r.room == room]
        sdk = [r for r in here if r.client == "SDK"]
        sdk_cpu = _median(sdk, "cpu_per_min") if sdk else None
        sdk_rss = max(r.peak_rss_mb for r in sdk) if sdk else None
        for label in [_label(kind, policy) for kind, policy in CLIENTS]:
            mine = [r for r in here if r.client == label]
            if not mine:
                continue
            cpu = _median(mine, "cpu_per_min")
            rss = max(r.peak_rss_mb for r in mine)
            ratio = f"{cpu / sdk_cpu:.2f}" if sdk_cpu and label != "SDK" else "-"
            verdict = ""
            if sdk_cpu and label != "SDK":
                verdict = "met" if cpu <= TARGETS["idle_cpu_ratio"] * sdk_cpu else "**missed**"
            rss_ratio = f"{rss / sdk_rss:.2f}" if sdk_rss and label != "SDK" else "-"
            if sdk_rss and label != "SDK":
                rss_ratio += " met" if rss <= TARGETS["rss_ratio"] * sdk_rss else " **missed**"

            def thread(kind: str, mine: list[IdleResult] = mine) -> str:
                return f"{statistics.median(r.threads.get(kind, 0.0) for r in mine):.2f}"

            rows.append([room, label, f"{cpu:.2f}", ratio, verdict, f"{_median(mine, 'wakeups_per_s'):.0f}",
                         thread("main"), thread("libpulse"), thread("other"), f"{rss:.1f}", rss_ratio,
                         str(max(r.conversations for r in mine)), f"{100 * max(r.other_load for r in mine):.0f}%"])
    return rows, header


def idle_section(results: list[IdleResult], args: argparse.Namespace, seconds: float, elapsed: float,
                 failures: list[str]) -> str:
    rows, header = idle_rows(results)
    runs_each = max(r.index for r in results)
    lines = [
        f"Run of {now_text()}: `{shown_args(args.argv)}`, {runs_each} run(s) of each client in each room, "
        f"{seconds:g} s measured each after it settled, {elapsed / 60:.1f} min in all.",
        "",
        machine_line(args),
        "",
        "pi-agent: `capture.mode = vad`, the session policy shown, full duplex, no earcons, everything else "
        f"default (*persistent quiet*: `session.quiet_keepalive = {QUIET_KEEPALIVE}`). "
        "Rooms: *silent*; *speech*: espeak-ng speech 1-3 s apart at "
        f"{BACKGROUND_PEAK_DB:g} dBFS peak, which webrtcvad takes for speech and the fake agent never answers. "
        "CPU is the median of runs (seconds per minute; main = the event loop, libpulse = the ALSA pulse "
        "plugin's threads, other = the microphone reader, the speaker's callback and switch, the SDK's threads); "
        "wake-ups are voluntary context switches of all threads per second; \"conversations\" were opened "
        f"meanwhile. Targets: CPU <= {TARGETS['idle_cpu_ratio']:g}x the SDK's, peak RSS <= "
        f"{TARGETS['rss_ratio']:g}x.",
        "",
        table(rows, header),
    ]
    problems = [f"{r.room} {r.client} {r.index}: {'; '.join(r.problems)}" for r in results if r.problems]
    if problems:
        lines += ["", "Problems: " + " | ".join(problems) + "."]
    busy = [r for r in results if r.other_load > 0.25]
    if busy:
        lines += ["", f"**Warning:** {len(busy)} of {len(results)} runs shared the machine with other work (other "
                  f"load up to {100 * max(r.other_load for r in busy):.0f}% of all CPUs): compare within this run."]
    if failures:
        lines += ["", "Failed runs (left out): " + "; ".join(failures) + "."]
    per_run = [[r.room, r.client, str(r.index), f"{r.cpu_per_min:.2f}", f"{r.wakeups_per_s:.0f}",
                f"{r.peak_rss_mb:.1f}", f"{100 * r.other_load:.0f}%"] for r in results]
    lines += ["", "Per run:", "", table(per_run, ["room", "client", "run", "CPU s/min", "wake-ups/s", "peak RSS MB",
                                                  "other load"])]
    return "\n".join(lines)

