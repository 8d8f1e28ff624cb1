"""/proc readings, the processes the bench starts, and the fake agent it talks to."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

from tests.support_daemon import free_port
from tests.support_faults import FakeAgentProcess

from .env import BenchError

__all__ = ["FakeAgent", "cpu_clock", "free_port", "http_json", "http_text", "proc_stat", "stop_process",
           "thread_cpu", "thread_groups", "wakeups"]


def proc_stat(pid: int) -> dict[str, float]:
    """CPU seconds (user + system, all threads), RSS and peak RSS (MB), threads, open fds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {"cpu": (int(fields[11]) + int(fields[12])) / ticks}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) / 1024.0
            elif key == "Threads":
                out["threads"] = int(value)
    out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return out


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """CPU seconds of every thread of ``pid``: tid -> (name, user + system)."""
    ticks = os.sysconf("SC_CLK_TCK")
    out: dict[int, tuple[str, float]] = {}
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                with open(f"/proc/{pid}/task/{tid}/comm") as f:
                    name = f.read().strip()
                with open(f"/proc/{pid}/task/{tid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                out[int(tid)] = (name, (int(fields[11]) + int(fields[12])) / ticks)
    return out


def thread_groups(pid: int, before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]],
                  minutes: float) -> dict[str, float]:
    """CPU seconds per minute by kind of thread: the main thread, libpulse's, the rest."""
    groups: dict[str, float] = {}
    for tid, (name, cpu) in after.items():
        used = cpu - before.get(tid, (name, 0.0))[1]
        kind = "main" if tid == pid else "libpulse" if name == "threaded-ml" else "other"
        groups[kind] = groups.get(kind, 0.0) + used / minutes
    return groups


def wakeups(pid: int) -> int:
    """Times the threads of ``pid`` went to sleep and were woken since they started (voluntary
    context switches, all threads): what "a sleeping process" keeps low."""
    total = 0
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError, ValueError), open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches:"):
                        total += int(line.split()[1])
    return total


def cpu_clock() -> tuple[float, float]:
    """Busy and total CPU seconds of the whole machine so far (all CPUs, from /proc/stat)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    ticks = os.sysconf("SC_CLK_TCK")
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values) - idle) / ticks, sum(values) / ticks


def http_json(url: str, timeout: float = 10.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def http_text(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return str(r.read().decode())


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 8.0) -> int | None:
    """SIGTERM, then SIGKILL after ``timeout``: our own child, by its pid."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(30)
    return proc.returncode


class FakeAgent:
    """``pi-agent fake-agent`` as its own process (the tests' :class:`FakeAgentProcess`), and
    what it recorded, read over its HTTP test API."""

    def __init__(self, workdir: Path, args: list[str]) -> None:
        self.agent = FakeAgentProcess(workdir, *args)
        try:
            self.agent.start(timeout=20)
        except AssertionError as exc:
            raise BenchError(str(exc)) from None
        self.url = self.agent.http_url

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        return self.agent.proc

    def conversations(self) -> list[dict[str, Any]]:
        return self.agent.conversations()

    def received(self, cid: str) -> dict[str, Any]:
        return dict(http_json(f"{self.url}/_fake/received?conversation={cid}", timeout=60))

    def sent(self, cid: str) -> dict[str, Any]:
        return dict(http_json(f"{self.url}/_fake/sent?conversation={cid}", timeout=60))

    def stop(self) -> None:
        self.agent.stop()
