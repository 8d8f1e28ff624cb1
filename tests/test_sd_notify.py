"""sd_notify against a real AF_UNIX datagram socket standing in for systemd's notify socket."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import statistics
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pi_agent.service.systemd import Notifier, watchdog_loop


class NotifySocket:
    """The receiving end: what systemd would read."""

    def __init__(self, sock: socket.socket, env_value: str) -> None:
        self.sock = sock
        self.env_value = env_value  # what NOTIFY_SOCKET would hold

    def messages(self, timeout: float = 2.0) -> list[str]:
        """Everything queued, waiting up to ``timeout`` for the first datagram."""
        out: list[str] = []
        self.sock.settimeout(timeout)
        try:
            out.append(self.sock.recv(4096).decode())
            self.sock.setblocking(False)
            while True:
                out.append(self.sock.recv(4096).decode())
        except (BlockingIOError, TimeoutError):
            return out

    def pending(self) -> list[str]:
        return self.messages(timeout=0.001)


def _bind(address: str | bytes) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    return sock


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[NotifySocket]:
    if request.param == "path":
        path = str(tmp_path / "notify")
        sock, value = _bind(path), path
    else:
        name = f"pi-agent-test-{uuid.uuid4().hex}"
        sock, value = _bind(b"\0" + name.encode()), "@" + name
    with sock:
        yield NotifySocket(sock, value)


def test_sends_ready_status_watchdog_stopping(notify_socket: NotifySocket) -> None:
    with Notifier.from_env({"NOTIFY_SOCKET": notify_socket.env_value}) as notifier:
        assert notifier.enabled
        assert notifier.ready()
        assert notifier.status("listening")
        assert notifier.watchdog()
        assert notifier.stopping()
        assert notifier.ready(status="idle")
    assert notify_socket.messages() == [
        "READY=1", "STATUS=listening", "WATCHDOG=1", "STOPPING=1", "READY=1\nSTATUS=idle",
    ]


def test_status_stays_one_assignment(notify_socket: NotifySocket) -> None:
    with Notifier(notify_socket.env_value) as notifier:
        notifier.status("error: device gone\nREADY=1")
    assert notify_socket.messages() == ["STATUS=error: device gone READY=1"]


def test_without_notify_socket_everything_is_a_quiet_no_op() -> None:
    notifier = Notifier.from_env({})
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    assert [notifier.ready(), notifier.status("x"), notifier.watchdog(), notifier.stopping()] == [False] * 4
    notifier.close()
    notifier.close()


@pytest.mark.parametrize("value", ["relative/path", "vsock:2:1234", ""])
def test_unusable_notify_socket_values_disable_it(value: str) -> None:
    assert not Notifier.from_env({"NOTIFY_SOCKET": value}).enabled


def test_vanished_socket_never_raises_and_logs_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="pi_agent.service.systemd")
    notifier = Notifier(str(tmp_path / "nobody-listens"))
    assert notifier.ready() is False
    assert notifier.watchdog() is False
    assert notifier.stopping() is False
    failures = [r for r in caplog.records if "sd_notify" in r.getMessage()]
    assert len(failures) == 1 and failures[0].levelno == logging.DEBUG
    notifier.close()


def test_a_full_socket_does_not_block(notify_socket: NotifySocket) -> None:
    """Nobody reads: sends must fail fast (non-blocking socket), not hang the event loop."""
    notifier = Notifier(notify_socket.env_value)
    results: list[bool] = []

    def flood() -> None:
        results.extend(notifier.status(f"state {i}") for i in range(5000))

    thread = threading.Thread(target=flood, daemon=True)
    thread.start()
    thread.join(timeout=20)
    assert not thread.is_alive(), "sd_notify blocked on a full socket"
    assert results[0] is True and False in results
    notifier.close()


def test_close_is_idempotent_and_final(notify_socket: NotifySocket) -> None:
    notifier = Notifier(notify_socket.env_value)
    assert notifier.ready()
    notifier.close()
    notifier.close()
    assert not notifier.enabled
    assert notifier.watchdog() is False
    assert notify_socket.messages() == ["READY=1"]


@pytest.mark.parametrize(
    ("env", "interval"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": str(os.getpid())}, 0.1),
        ({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),  # another process's
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec(env: dict[str, str], interval: float | None) -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": "@x", **env})
    assert notifier.watchdog_interval == (pytest.approx(interval) if interval else None)


async def _ping_times(notify: NotifySocket, duration: float, out: list[float]) -> None:
    """Arrival times of WATCHDOG=1 datagrams, read as they come."""
    loop = asyncio.get_running_loop()
    notify.sock.setblocking(False)
    end = loop.time() + duration
    while (left := end - loop.time()) > 0:
        try:
            data = await asyncio.wait_for(loop.sock_recv(notify.sock, 4096), left)
        except TimeoutError:
            break
        if data == b"WATCHDOG=1":
            out.append(time.monotonic())


@pytest.mark.slow
async def test_watchdog_loop_pings_at_the_requested_rate_while_healthy(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    with _bind(path) as sock:
        notify = NotifySocket(sock, path)
        # WatchdogSec=0.4s -> a ping every 0.2 s.
        notifier = Notifier.from_env({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"})
        healthy = True
        task = asyncio.create_task(watchdog_loop(notifier, lambda: healthy))
        try:
            times: list[float] = []
            await _ping_times(notify, 1.5, times)
            assert len(times) >= 4
            gap = statistics.median(b - a for a, b in itertools.pairwise(times))
            assert 0.15 <= gap <= 0.3, f"median gap {gap:.3f} s, expected 0.2 s"

            healthy = False  # a stuck state: pings must stop
            await asyncio.sleep(0.3)
            notify.pending()
            stopped: list[float] = []
            await _ping_times(notify, 0.8, stopped)
            assert stopped == []

            healthy = True  # recovered before systemd's deadline: pings resume
            resumed: list[float] = []
            await _ping_times(notify, 0.8, resumed)
            assert resumed
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            notifier.close()


async def test_watchdog_loop_treats_a_failing_health_check_as_unhealthy(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="pi_agent.service.systemd")
    path = str(tmp_path / "notify")
    with _bind(path) as sock:
        notify = NotifySocket(sock, path)
        notifier = Notifier(path, watchdog_usec=100_000)

        def broken() -> bool:
            raise RuntimeError("health check bug")

        task = asyncio.create_task(watchdog_loop(notifier, broken))
        try:
            pings: list[float] = []
            await _ping_times(notify, 0.5, pings)
            assert pings == []
            assert not task.done()
            warnings = [r for r in caplog.records if "unhealthy" in r.getMessage()]
            assert len(warnings) == 1, "logged once, not on every tick"
            assert warnings[0].exc_info and "health check bug" in str(warnings[0].exc_info[1])
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            notifier.close()


async def test_watchdog_loop_returns_at_once_without_a_watchdog(notify_socket: NotifySocket) -> None:
    notifier = Notifier(notify_socket.env_value)  # NOTIFY_SOCKET but no WATCHDOG_USEC
    await asyncio.wait_for(watchdog_loop(notifier, lambda: True), timeout=5)
    await asyncio.wait_for(watchdog_loop(Notifier(None, watchdog_usec=100_000), lambda: True), timeout=5)
    assert notify_socket.pending() == []
