"""Run the real daemon process (``pi-agent run``) for tests, and talk to its event API."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from collections.abc import AsyncIterator, Iterator

from websockets.asyncio.client import connect, unix_connect

from .support_wait import wait_until

ASSETS = Path(__file__).resolve().parents[1] / "pi_agent" / "assets"
QUESTION_WAV = ASSETS / "question.wav"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DaemonProcess:
    """``python -m pi_agent.cli run`` with settings from the environment; stderr captured."""

    def __init__(self, env: dict[str, str], tmp: Path, args: tuple[str, ...] = ("run",)) -> None:
        self.api_port = int(env.get("PI_AGENT_API__PORT") or free_port())
        self.api_socket = Path(env.get("PI_AGENT_API__SOCKET") or tmp / f"api-{self.api_port}.sock")
        base = {k: v for k, v in os.environ.items() if not k.startswith("PI_AGENT_")}
        self.env = {**base, "PI_AGENT_API__PORT": str(self.api_port), "PI_AGENT_API__SOCKET": str(self.api_socket),
                    "PYTHONUNBUFFERED": "1", **env}
        self.log_path = tmp / f"daemon-{self.api_port}.log"
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> DaemonProcess:
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "pi_agent.cli", *self.args], env=self.env,
                                     stdout=self._log, stderr=subprocess.STDOUT)
        return self

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            if self.proc is not None:
                self._log.close()
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)
        finally:
            self._log.close()

    def http(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.api_port}{path}", timeout=3) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    async def wait_api(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.log}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.api_port), timeout=0.2):
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"event API did not come up:\n{self.log}")


class EventClient:
    """The daemon's event API: snapshot, then events; waits for a matching event.

    ``where``: the Unix socket's path (everything: commands, transcripts), or a TCP port
    (the view anyone local gets).
    """

    def __init__(self, where: Path | int) -> None:
        self.where = where
        self.events: list[dict[str, Any]] = []
        self.received_at: list[float] = []  # time.monotonic() at which each event arrived
        self.snapshot: dict[str, Any] | None = None
        self._ws: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    async def __aenter__(self) -> EventClient:
        if isinstance(self.where, Path):
            self._ws = await unix_connect(str(self.where), uri="ws://localhost/events", open_timeout=5)
        else:
            self._ws = await connect(f"ws://127.0.0.1:{self.where}/events", open_timeout=5)
        self.snapshot = json.loads(await self._ws.recv())
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._reader:
            self._reader.cancel()
        with contextlib.suppress(Exception):
            await self._ws.close()

    async def _read(self) -> None:
        with contextlib.suppress(Exception):
            async for message in self._ws:
                self.events.append(json.loads(message))
                self.received_at.append(time.monotonic())
                self._changed.set()

    async def send(self, command: dict[str, Any]) -> None:
        await self._ws.send(json.dumps(command))

    def states(self) -> list[str]:
        return [e["state"] for e in self.events if e.get("type") == "state"]

    async def wait_for(self, predicate: Any, timeout: float = 15.0, what: str = "event") -> dict[str, Any]:
        """The first event (since connecting) for which ``predicate(event)`` holds."""
        checked = 0

        def match() -> dict[str, Any] | None:
            nonlocal checked
            for event in self.events[checked:]:
                if predicate(event):
                    return event
            checked = len(self.events)
            return None

        return await wait_until(match, timeout, what, changed=self._changed, poll=0.2,
                                seen=lambda: f"events {self.events[-20:]}")

    async def wait_state(self, state: str, timeout: float = 15.0) -> dict[str, Any]:
        return await self.wait_for(lambda e: e.get("type") == "state" and e["state"] == state, timeout,
                                   f"state {state}")


@contextlib.asynccontextmanager
async def daemon_running(env: dict[str, str], tmp: Path) -> AsyncIterator[DaemonProcess]:
    d = DaemonProcess(env, tmp).start()
    try:
        await d.wait_api()
        yield d
    finally:
        d.stop()


@contextlib.contextmanager
def raise_open_files(needed: int) -> Iterator[None]:
    """Raise this process's soft RLIMIT_NOFILE up to its hard limit for a block (the daemon it
    starts inherits it; a normal user's soft limit is often 1024); skip if even the hard limit
    is below ``needed``. Restored afterwards."""
    import pytest

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"needs {needed} open files; the hard limit (ulimit -Hn) is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else needed, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
